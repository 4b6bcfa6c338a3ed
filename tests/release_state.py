"""A state dict in the exact layout of the authors' released SAR segmentor,
synthesised from a plain model's weights (plain torch; both suites use it).

The release keeps FCNHead's submodules under ``decode_head.*``, so a plain
mmseg FCN model's keys are its backbone and head keys; SAR's state sits at
the top level (``random_center``, ``momentum_center_feat``, ...) with the
projector as ``projecter_linear`` (Linear-SyncBN-ReLU x2) and ``projecter``
(ConvModule: bias-free 1x1 conv, SyncBN, ReLU).
"""
from collections import OrderedDict

import torch


def release_projector_state(C, D, g):
    """The projector's keys, with running statistics that differ from the
    defaults."""
    def r(*shape):
        return torch.randn(*shape, generator=g)

    def bn(prefix):
        return {f'{prefix}.weight': 1 + 0.1 * r(D),
                f'{prefix}.bias': 0.1 * r(D),
                f'{prefix}.running_mean': 0.1 * r(D),
                f'{prefix}.running_var': 0.5 + torch.rand(D, generator=g),
                f'{prefix}.num_batches_tracked': torch.tensor(80000)}

    sd = OrderedDict()
    sd['projecter_linear.0.weight'] = r(D, D) / D**0.5
    sd['projecter_linear.0.bias'] = 0.1 * r(D)
    sd.update(bn('projecter_linear.1'))
    sd['projecter_linear.3.weight'] = r(D, D) / D**0.5
    sd['projecter_linear.3.bias'] = 0.1 * r(D)
    sd.update(bn('projecter_linear.4'))
    sd['projecter.conv.weight'] = r(D, D, 1, 1) / D**0.5
    sd.update(bn('projecter.bn'))
    return sd


def release_from_plain(plain, C, D, seed=1):
    """A release state dict whose segmentor weights are ``plain``'s, each
    perturbed so that no two layers hold equal tensors (fresh BN layers all
    do, which would hide a mix-up); ``plain`` is loaded with them.

    Args:
        plain (nn.Module): the plain FCN segmentor of the same config.
        C, D (int): classes, the head's channels.
    """
    g = torch.Generator().manual_seed(seed)
    release = OrderedDict()
    for key, value in plain.state_dict().items():
        if not value.is_floating_point():
            release[key] = value.clone()
        elif key.endswith('running_var'):
            release[key] = 0.5 + torch.rand(value.shape, generator=g)
        else:
            release[key] = value + 0.05 * torch.randn(value.shape,
                                                      generator=g)
    plain.load_state_dict(release, strict=True)
    release['random_center'] = torch.randn(C, D, generator=g)
    release['center_lbl'] = torch.arange(C)
    release['local_iter'] = torch.tensor([80000])
    release['update_flag'] = torch.tensor(1)
    release['momentum_center_feat'] = torch.rand(C, D, generator=g)
    release.update(release_projector_state(C, D, g))
    return release
