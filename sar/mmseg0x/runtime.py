"""Plumbing shared by tools/train.py and tools/test.py.

The flags both tools share with mmseg 0.30 (config overrides, launcher),
and the config adjustments that let a GPU config run on the machine at hand.
"""
import os
import warnings

import torch
from mmcv.utils import Config, DictAction


def add_common_args(parser):
    """--options/--cfg-options, --launcher and --local_rank, as in mmseg."""
    parser.add_argument('--options', nargs='+', action=DictAction,
                        help='(deprecated) use --cfg-options')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    parser.add_argument('--launcher', default='none',
                        choices=['none', 'pytorch', 'slurm', 'mpi'])
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse_common_args(parser):
    """Parse, merge --options into --cfg-options, export LOCAL_RANK."""
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    if args.options and args.cfg_options:
        parser.error('--options and --cfg-options cannot both be given')
    args.cfg_options = args.cfg_options or args.options
    return args


def adapt_cfg_to_machine(cfg):
    """Make a GPU config runnable on the machine at hand, in place.

    - ``persistent_workers`` needs worker processes: off when
      ``workers_per_gpu`` is 0 (torch refuses the combination).
    - Without CUDA, distributed runs use gloo instead of NCCL.
    """
    data = cfg.get('data')
    if data is not None and data.get('workers_per_gpu', 2) == 0:
        data['persistent_workers'] = False
    if not torch.cuda.is_available():
        dist_params = cfg.get('dist_params') or {}
        if dist_params.get('backend', 'nccl') != 'gloo':
            dist_params['backend'] = 'gloo'
        cfg.dist_params = dist_params
    return cfg


FP16_HOOKS = {'OptimizerHook': 'Fp16OptimizerHook',
              'GradientCumulativeOptimizerHook':
              'GradientCumulativeFp16OptimizerHook'}


def _float_scale(settings):
    # mmcv's fp16 hooks take 'dynamic', a dict or a float, not an int.
    if isinstance(settings.get('loss_scale'), int):
        settings['loss_scale'] = float(settings['loss_scale'])
    return settings


def resolve_fp16(cfg):
    """Make ``fp16 = dict(loss_scale=...)`` train in fp16, in place.

    mmseg 0.30 trains in mixed precision only through
    ``optimizer_config = dict(type='Fp16OptimizerHook', ...)``; the
    ``fp16 = dict(loss_scale='dynamic')`` of mmdet and mmcls configs is
    ignored there, silently in fp32. Here a non-empty ``fp16`` turns the
    optimizer hook into its fp16 twin, ``fp16``'s settings added (an empty
    ``fp16 = dict()`` is mmseg's own placeholder and changes nothing).
    mmcv's fp16 casts the images to half and relies on CUDA autocast, so
    without CUDA it is refused before anything is built.

    Returns:
        str | None: what was changed, for the log.
    """
    fp16 = _float_scale(dict(cfg.get('fp16') or {}))
    if fp16 and cfg.get('optimizer_config') is None:
        raise ValueError(
            f'fp16 = {fp16} is set but there is no optimizer_config, so no '
            'optimizer hook steps the model: set optimizer_config = dict() '
            '(mmseg\'s default) or drop fp16.')
    opt = _float_scale(dict(cfg.get('optimizer_config') or {}))
    kind = opt.get('type', 'OptimizerHook')
    kind = kind if isinstance(kind, str) else getattr(kind, '__name__', '')
    note = None
    if fp16 and 'Fp16' not in kind:
        if kind not in FP16_HOOKS:
            raise ValueError(
                f'fp16 = {fp16} is set, but optimizer_config is a {kind}, '
                'which has no fp16 twin: set optimizer_config to an fp16 '
                "hook yourself (e.g. type='Fp16OptimizerHook') or drop fp16.")
        # The fp16 hooks do not take OptimizerHook's anomaly detection.
        opt.pop('detect_anomalous_params', None)
        opt.update(fp16, type=FP16_HOOKS[kind])
        kind = opt['type']
        note = (f'fp16 = {fp16}: optimizer_config is now {opt} (mmseg 0.30 '
                'trains in fp16 through the optimizer hook only)')
    elif fp16:
        if any(k in opt and opt[k] != v for k, v in fp16.items()):
            raise ValueError(
                f'fp16 = {fp16} contradicts optimizer_config = {opt}: keep '
                'the loss scale in one of them.')
        if any(k not in opt for k in fp16):
            opt = dict(fp16, **opt)
            note = f'fp16 = {fp16}: optimizer_config is now {opt}'
    if cfg.get('optimizer_config') is not None:
        cfg.optimizer_config = opt
    if 'Fp16' in kind and not torch.cuda.is_available():
        where = ('drop fp16 and keep optimizer_config a plain OptimizerHook'
                 if fp16 else f"set optimizer_config's type to "
                 f"'{kind.replace('Fp16', '')}'")
        raise ValueError(
            f'fp16 training needs a CUDA device: mmcv\'s {kind} casts the '
            'images to half, which convolutions on the CPU do not take. '
            f'Train in fp32 here: {where}.')
    return note


SAR_TYPES = ('SARHead', 'SemanticAnchorLoss')


def _names_sar(node):
    if isinstance(node, dict):
        return node.get('type') in SAR_TYPES or any(
            _names_sar(v) for v in node.values())
    if isinstance(node, (list, tuple)):
        return any(_names_sar(v) for v in node)
    return False


def check_custom_imports(cfg, path='the config'):
    """Warn when a config uses SAR without importing it itself.

    These tools import ``sar`` anyway, so such a config trains here, but
    mmseg's own tools and users' scripts build the model before anything
    imports ``sar`` and stop with "KeyError: 'SARHead is not in the models
    registry'". Returns the warning text, or None.
    """
    if not _names_sar(cfg.get('model')):
        return None
    imports = (cfg.get('custom_imports') or {}).get('imports', [])
    if isinstance(imports, str):
        imports = [imports]
    if any(name == 'sar' or name.startswith('sar.') for name in imports):
        return None
    text = (f'{path} uses SARHead/SemanticAnchorLoss without '
            "custom_imports = dict(imports=['sar'], "
            'allow_failed_imports=False): SAR\'s tools import sar anyway, but '
            "mmseg's tools and your own scripts will stop with KeyError "
            "'SARHead is not in the models registry'. Add that line to the "
            'config.')
    warnings.warn(text)
    return text


def load_config(args):
    """The config of ``args.config`` with ``--cfg-options`` applied."""
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    check_custom_imports(cfg, args.config)
    adapt_cfg_to_machine(cfg)
    if cfg.get('cudnn_benchmark', False):
        torch.backends.cudnn.benchmark = True
    return cfg


def accept_sar_checkpoints(model):
    """Let a model without SAR load SAR checkpoints fully.

    A SAR checkpoint keeps the decode head under ``decode_head.head.``;
    mmcv loads non-strictly and would leave a plain model's head random with
    only a warning (``tools/test.py`` with a baseline config, ``load_from``
    in one). For a model without SARHead, such a state dict is mapped to
    the plain layout (:func:`sar.checkpoints.sar_to_plain_state_dict`) as it is
    loaded. A model with SARHead takes both layouts already (SARHead's own
    load hook). Returns the model.
    """
    from ..checkpoints.convert import (is_sar_state_dict,
                                       sar_to_plain_state_dict)
    from .sar_head import SARHead
    if any(isinstance(m, SARHead) for m in model.modules()):
        return model

    def to_plain(state_dict, prefix, *args):
        if prefix or not is_sar_state_dict(state_dict):
            return
        plain = sar_to_plain_state_dict(state_dict)
        state_dict.clear()
        state_dict.update(plain)
        warnings.warn('loading a SAR checkpoint into a model without SAR: '
                      'the anchor branch is dropped, the decode head taken '
                      '(as tools/export_plain.py does)')

    model._register_load_state_dict_pre_hook(to_plain)
    return model
