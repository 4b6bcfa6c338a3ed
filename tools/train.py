"""Train a segmentor: mmseg 0.30's train.py interface, SAR configs included.

Under mmseg 1.x, the same command runs mmseg 1.x's own train.py (its
arguments, configs/mmseg1x) after ``import sar``: see ``_venv.py``.

Runs on GPUs (single or distributed, as mmseg), on CPU in one process, and
on CPU in N gloo processes (``tools/dist_train.sh CONFIG N`` without GPUs).
"""
import _venv  # noqa: F401  (first: re-runs under .venv if needed; under
#               mmseg 1.x, imports sar and runs mmseg's own tool instead)
import argparse
import copy
import os.path as osp
import sys
import time

import mmcv
from mmcv.cnn.utils import revert_sync_batchnorm
from mmcv.runner import get_dist_info, init_dist
from mmcv.utils import get_git_hash

import sar  # noqa: F401  registers SAR and applies the torch 2.x shims
from sar.mmseg0x.runtime import (accept_sar_checkpoints, add_common_args,
                                 load_config, parse_common_args, resolve_fp16)


def parse_args():
    parser = argparse.ArgumentParser(description='Train a segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--load-from', help='checkpoint to initialise from')
    parser.add_argument('--resume-from', help='checkpoint to resume from')
    parser.add_argument('--no-validate', action='store_true',
                        help='do not evaluate checkpoints during training')
    group = parser.add_mutually_exclusive_group()
    group.add_argument('--gpus', type=int,
                       help='(deprecated) number of gpus, non-distributed')
    group.add_argument('--gpu-ids', type=int, nargs='+',
                       help='(deprecated) ids of gpus, non-distributed')
    group.add_argument('--gpu-id', type=int, default=0,
                       help='id of gpu to use, non-distributed')
    parser.add_argument('--seed', type=int, help='random seed')
    parser.add_argument('--diff_seed', action='store_true',
                        help='a different seed on each rank')
    parser.add_argument('--deterministic', action='store_true',
                        help='deterministic options for CUDNN')
    parser.add_argument('--auto-resume', action='store_true',
                        help='resume from the latest checkpoint of work-dir')
    add_common_args(parser)
    args = parse_common_args(parser)
    return args


def main():
    from mmseg import __version__ as mmseg_version
    from mmseg.apis import init_random_seed, set_random_seed, train_segmentor
    from mmseg.datasets import build_dataset
    from mmseg.models import build_segmentor
    from mmseg.utils import (collect_env, get_device, get_root_logger,
                             setup_multi_processes)

    args = parse_args()
    cfg = load_config(args)
    try:
        fp16_note = resolve_fp16(cfg)
    except ValueError as err:
        sys.exit(f'{args.config}: {err}')
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join(
        './work_dirs', osp.splitext(osp.basename(args.config))[0])
    if args.load_from is not None:
        cfg.load_from = args.load_from
    if args.resume_from is not None:
        cfg.resume_from = args.resume_from
    cfg.auto_resume = args.auto_resume
    if args.gpus is not None:
        cfg.gpu_ids = range(1)
    elif args.gpu_ids is not None:
        cfg.gpu_ids = args.gpu_ids[:1]
    else:
        cfg.gpu_ids = [args.gpu_id]

    distributed = args.launcher != 'none'
    if distributed:
        init_dist(args.launcher, **cfg.get('dist_params', {}))
        _, world_size = get_dist_info()
        cfg.gpu_ids = range(world_size)

    mmcv.mkdir_or_exist(osp.abspath(cfg.work_dir))
    cfg.dump(osp.join(cfg.work_dir, osp.basename(args.config)))
    timestamp = time.strftime('%Y%m%d_%H%M%S', time.localtime())
    logger = get_root_logger(
        log_file=osp.join(cfg.work_dir, f'{timestamp}.log'),
        log_level=cfg.log_level)
    # mp_start_method, opencv_num_threads, omp/mkl threads from the config.
    setup_multi_processes(cfg)
    env_info = '\n'.join(f'{k}: {v}' for k, v in collect_env().items())
    logger.info('Environment info:\n' + env_info)
    logger.info(f'Distributed training: {distributed}')
    if fp16_note:
        logger.info(fp16_note)
    logger.info(f'Config:\n{cfg.pretty_text}')

    cfg.device = get_device()
    # --seed wins; else the config's `seed` (the paper configs set one);
    # else a random seed shared by all ranks, as in mmseg.
    seed = init_random_seed(
        args.seed if args.seed is not None else cfg.get('seed'),
        device=cfg.device)
    if args.diff_seed:
        seed += get_dist_info()[0]
    logger.info(f'Set random seed to {seed}, '
                f'deterministic: {args.deterministic}')
    set_random_seed(seed, deterministic=args.deterministic)
    cfg.seed = seed
    meta = dict(env_info=env_info, seed=seed,
                exp_name=osp.basename(args.config))

    model = accept_sar_checkpoints(build_segmentor(
        cfg.model, train_cfg=cfg.get('train_cfg'),
        test_cfg=cfg.get('test_cfg')))
    model.init_weights()
    if not distributed:
        # SyncBN needs a process group: plain BN in a single process.
        model = revert_sync_batchnorm(model)
    logger.info(model)

    datasets = [build_dataset(cfg.data.train)]
    if len(cfg.workflow) == 2:
        val = copy.deepcopy(cfg.data.val)
        train = cfg.data.train
        val.pipeline = train.get('dataset', train).pipeline
        datasets.append(build_dataset(val))
    if cfg.checkpoint_config is not None:
        cfg.checkpoint_config.meta = dict(
            mmseg_version=f'{mmseg_version}+{get_git_hash()[:7]}',
            sar_version=sar.__version__,
            config=cfg.pretty_text,
            CLASSES=datasets[0].CLASSES,
            PALETTE=datasets[0].PALETTE)
        meta.update(cfg.checkpoint_config.meta)
    model.CLASSES = datasets[0].CLASSES
    train_segmentor(model, datasets, cfg, distributed=distributed,
                    validate=not args.no_validate, timestamp=timestamp,
                    meta=meta)


if __name__ == '__main__':
    main()
