"""Map SAR checkpoints to plain mmseg ones (plain torch, no mmseg import).

Needs torch (and numpy for checkpoints with numpy values) only, so the
export tools run where mmseg is missing or of another major version.

A SAR segmentor stores the wrapped head under ``decode_head.head.`` (or
``decode_head.<i>.head.`` for the last head of a cascade) and the SAR state
under ``decode_head[.<i>].sar_loss.``. Removing the ``head.`` level and the
SAR entries gives the state dict of the same model without SAR.
"""
import os
import re
from collections import OrderedDict

import torch

from .safe_load import load_weights_only

_HEAD = re.compile(r'^(decode_head(?:\.\d+)?)\.head\.(.+)$')
_SAR = re.compile(r'^decode_head(?:\.\d+)?\.sar_loss\.')
# The same, for module names (torch's state-dict ``_metadata``).
_HEAD_MODULE = re.compile(r'^(decode_head(?:\.\d+)?)\.head(\..+)?$')
_SAR_MODULE = re.compile(r'^decode_head(?:\.\d+)?\.sar_loss(\..+)?$')


def is_sar_state_dict(state_dict):
    """Whether a segmentor state dict holds SAR entries."""
    return any(_SAR.match(k) for k in state_dict)


def sar_to_plain_state_dict(state_dict):
    """Drop the SAR branch and unwrap the head: the baseline twin's keys.

    Args:
        state_dict (Mapping[str, Tensor]): a SAR segmentor's state dict.

    Returns:
        OrderedDict: the plain segmentor's state dict (same tensors); the
        module versions torch keeps in ``_metadata``, if any, moved along
        (the wrapped head's replace the wrapper's).
    """
    if not is_sar_state_dict(state_dict):
        raise ValueError('not a SAR state dict: no decode_head[.i].sar_loss.* '
                         'entries')
    plain = OrderedDict()
    for key, value in state_dict.items():
        if _SAR.match(key):
            continue
        match = _HEAD.match(key)
        plain[f'{match[1]}.{match[2]}' if match else key] = value
    metadata = getattr(state_dict, '_metadata', None)
    if metadata is not None:
        plain._metadata = OrderedDict()
        for name, value in metadata.items():
            if _SAR_MODULE.match(name):
                continue
            match = _HEAD_MODULE.match(name)
            plain._metadata[match[1] + (match[2] or '') if match else
                            name] = value
    return plain


# The authors' release keeps SAR's state on the segmentor itself.
_OFFICIAL_BUFFERS = {
    'random_center': 'init_anchors',
    'momentum_center_feat': 'semantic_anchors',
    'update_flag': 'initialised',
}
# Release buffers with nothing to carry over: ``center_lbl`` is arange(C)
# (checked), ``local_iter`` the run's iteration count (the runner's meta
# has it; the SAR state does not depend on it).
_OFFICIAL_DROPPED = ('center_lbl', 'local_iter')


def _module_params(state_dict, prefix):
    """Group ``prefix.<module>.<param>`` keys by module, in module order."""
    groups = OrderedDict()
    for key in state_dict:
        if key.startswith(prefix + '.'):
            module, _, param = key[len(prefix) + 1:].rpartition('.')
            groups.setdefault(module, {})[param] = key

    def order(name):
        return [int(p) if p.isdigit() else p for p in name.split('.')]

    return [groups[m] for m in sorted(groups, key=order)]


def official_to_sar_state_dict(state_dict, sar_prefix='decode_head'):
    """The authors' released segmentor state dict -> this project's layout.

    Their ``SAR`` segmentor stores ``random_center`` (A0), ``center_lbl``
    (the class of each anchor), ``local_iter`` (its iteration counter),
    ``update_flag`` (whether S was set), ``momentum_center_feat`` (S), the
    projector as ``projecter_linear.*`` (two Linear + norm pairs) and
    ``projecter.*`` (1x1 conv + norm), and the head (``FCNHeadWFeat``) under
    ``decode_head.*``. Layers are matched by kind and order (Linear: 2-d
    weight; conv: 4-d weight; norm: has ``running_mean``), not by their
    submodule names. ``center_lbl`` must be ``arange(C)`` (anchor i is class
    i, as in our layout); ``local_iter`` counts all training iterations,
    which this layout does not keep, and is dropped. Every other source key
    must be used, or a ValueError lists the ones that were not.

    Args:
        state_dict (Mapping[str, Tensor]): the released ``state_dict``.
        sar_prefix (str): where the SARHead sits in our segmentor.

    Shape:
        random_center, momentum_center_feat (C, D); center_lbl (C,);
        local_iter (1,); update_flag () or (1,).

    Returns:
        OrderedDict: a state dict for the matching SAR config.

    Raises:
        ValueError: unknown keys, a projector of another shape, or anchors
            labelled in another order than ``arange(C)``.
    """
    out = OrderedDict()
    used = set(_OFFICIAL_DROPPED) & set(state_dict)
    sar = f'{sar_prefix}.sar_loss'
    if 'center_lbl' in state_dict:
        labels = state_dict['center_lbl']
        anchors = state_dict.get('random_center')
        num = labels.numel() if anchors is None else anchors.shape[0]
        expected = torch.arange(num)
        if labels.shape != expected.shape or not torch.equal(
                labels.long(), expected):
            raise ValueError(
                f'center_lbl is {labels.tolist()}, not arange(C): the '
                'anchors are not stored in class order, which this '
                'conversion assumes')
    for src, dst in _OFFICIAL_BUFFERS.items():
        if src in state_dict:
            value = state_dict[src]
            if dst == 'initialised':
                value = value.bool().reshape(())
            out[f'{sar}.{dst}'] = value
            used.add(src)

    linears, norms = [], []
    for prefix in ('projecter_linear', 'projecter'):
        for params in _module_params(state_dict, prefix):
            if 'running_mean' in params:
                norms.append(params)
            elif 'weight' in params:
                linears.append(params)
            used.update(params.values())
    if len(linears) != 3 or len(norms) != 3:
        raise ValueError(
            f'expected 3 linear/conv layers and 3 norm layers in '
            f'projecter_linear.* and projecter.*, found {len(linears)} and '
            f'{len(norms)}')
    for name, params in zip(('fc1', 'fc2', 'proj'), linears):
        for param, key in params.items():
            value = state_dict[key]
            if param == 'weight' and value.dim() == 4:  # 1x1 conv
                value = value.flatten(1)
            out[f'{sar}.projector.{name}.{param}'] = value
    for i, params in enumerate(norms, 1):
        for param, key in params.items():
            out[f'{sar}.projector.norm{i}.{param}'] = state_dict[key]

    for key, value in state_dict.items():
        if key.startswith('decode_head.'):
            out[f'{sar_prefix}.head.{key[len("decode_head."):]}'] = value
            used.add(key)
        elif key.startswith(('backbone.', 'auxiliary_head.', 'neck.')):
            out[key] = value
            used.add(key)
    unused = [k for k in state_dict if k not in used]
    if unused:
        raise ValueError(f'keys not understood: {unused[:10]}'
                         + (' ...' if len(unused) > 10 else ''))
    # The release does not count iterations since the anchors were set: 0 if
    # they were, -1 if not.
    started = bool(out.get(f'{sar}.initialised', False))
    out[f'{sar}.iters_since_init'] = torch.tensor(0 if started else -1)
    return out


def read_checkpoint(path, trust=False):
    """A checkpoint file, read without running code it may carry.

    Tensors, plain data and numpy values (mmseg's ``meta`` holds some) are
    accepted; anything else needs ``trust``, which unpickles the whole file.

    Args:
        path (str): the checkpoint.
        trust (bool): unpickle everything; only for files you trust.

    Returns:
        dict: the checkpoint (``state_dict``, ``meta``, ... or a bare state
        dict), tensors on the CPU.

    Raises:
        pickle.UnpicklingError: the file holds more, and not ``trust``.
    """
    if trust:
        return torch.load(path, map_location='cpu', weights_only=False)
    return load_weights_only(path, map_location='cpu')


def save_new_checkpoint(checkpoint, out, source, force=False):
    """``torch.save`` to ``out`` without ever harming an existing file.

    Refuses to write over ``source`` and, unless ``force``, over any existing
    file; writes to ``out + '.tmp'`` first and renames, so an interrupted run
    leaves no half-written checkpoint under the final name.

    Raises:
        FileExistsError: ``out`` is ``source``, or exists and not ``force``.
    """
    if os.path.abspath(out) == os.path.abspath(source):
        raise FileExistsError(f'{out} is the input checkpoint; choose '
                              'another output path')
    if os.path.exists(out) and not force:
        raise FileExistsError(f'{out} exists; pass --force to replace it')
    tmp = f'{out}.tmp'
    torch.save(checkpoint, tmp)
    os.replace(tmp, out)
