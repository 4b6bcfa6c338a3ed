"""Plumbing shared by tools/train.py and tools/test.py.

The flags both tools share with mmseg 0.30 (config overrides, launcher),
and the config adjustments that let a GPU config run on the machine at hand.
"""
import os

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


def load_config(args):
    """The config of ``args.config`` with ``--cfg-options`` applied."""
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    adapt_cfg_to_machine(cfg)
    if cfg.get('cudnn_benchmark', False):
        torch.backends.cudnn.benchmark = True
    return cfg
