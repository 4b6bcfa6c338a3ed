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
    the plain layout (:func:`sar.export.sar_to_plain_state_dict`) as it is
    loaded. A model with SARHead takes both layouts already (SARHead's own
    load hook). Returns the model.
    """
    from .export import is_sar_state_dict, sar_to_plain_state_dict
    from .models import SARHead
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
