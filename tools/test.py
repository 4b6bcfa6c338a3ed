"""Test (and evaluate) a segmentor: mmseg 0.30's test.py interface.

Under mmseg 1.x, the same command runs mmseg 1.x's own test.py (its
arguments, configs/mmseg1x) after ``import sar``: see ``_venv.py``.

Takes SAR checkpoints and plain ones. Runs on GPUs as mmseg does, on CPU in
one process, and on CPU in N gloo processes via ``tools/dist_test.sh``.
"""
import _venv  # noqa: F401  (first: re-runs under .venv if needed; under
#               mmseg 1.x, imports sar and runs mmseg's own tool instead)
import argparse
import os
import os.path as osp
import shutil
import sys
import time
import warnings

import mmcv
import torch
from mmcv.cnn.utils import revert_sync_batchnorm
from mmcv.runner import (get_dist_info, init_dist, load_checkpoint,
                         wrap_fp16_model)
from mmcv.utils import DictAction

import sar  # noqa: F401  registers SAR and applies the torch 2.x shims
from sar.mmseg0x.runtime import (accept_sar_checkpoints, add_common_args,
                                 load_config, parse_common_args)

AUG_TEST_RATIOS = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]


def parse_args():
    parser = argparse.ArgumentParser(description='Test (and eval) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='where the metric json goes')
    parser.add_argument('--aug-test', action='store_true',
                        help='multi-scale + flip test time augmentation')
    parser.add_argument('--out', help='output result file in pickle format')
    parser.add_argument('--format-only', action='store_true',
                        help='format the results without evaluating them')
    parser.add_argument('--eval', type=str, nargs='+',
                        help='metrics, e.g. "mIoU" "mDice" "mFscore"')
    parser.add_argument('--show', action='store_true', help='show results')
    parser.add_argument('--show-dir', help='directory for painted images')
    parser.add_argument('--gpu-collect', action='store_true',
                        help='collect results on GPU (distributed)')
    parser.add_argument('--gpu-id', type=int, default=0,
                        help='id of gpu to use, non-distributed')
    parser.add_argument('--tmpdir', help='tmp dir for collecting results')
    parser.add_argument('--eval-options', nargs='+', action=DictAction,
                        help='custom options for evaluation')
    parser.add_argument('--opacity', type=float, default=0.5,
                        help='opacity of painted segmentation maps, (0, 1]')
    add_common_args(parser)
    args = parse_common_args(parser)
    if not (args.out or args.eval or args.format_only or args.show
            or args.show_dir):
        parser.error('say what to do with the results: --out, --eval, '
                     '--format-only, --show or --show-dir')
    if args.eval and args.format_only:
        parser.error('--eval and --format-only cannot both be given')
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        parser.error('--out must be a .pkl file')
    if args.eval and 'cityscapes' in args.eval and len(args.eval) != 1:
        parser.error('--eval cityscapes evaluates formatted results and '
                     'cannot be combined with other metrics')
    return args


def prepare_format_dir(args, eval_kwargs):
    """The folder that formatted results go to, and whether to remove it.

    ``--format-only`` and ``--eval cityscapes`` write one file per image to
    ``imgfile_prefix`` (``--eval-options``; ``.format_cityscapes`` if not
    given, as in mmseg). A folder that holds anything is refused: results
    are never mixed with older files, and nothing a user keeps there is
    deleted. The folder is removed after evaluating only if this run made
    it for ``--eval cityscapes`` without being given one; a named folder,
    and the output of ``--format-only``, are kept.

    Args:
        args (argparse.Namespace): the parsed flags.
        eval_kwargs (dict): ``--eval-options``; ``imgfile_prefix`` is set.

    Returns:
        tuple[str | None, bool]: the folder (None when nothing is
        formatted) and whether it is this run's temporary folder.
    """
    eval_on_format_results = bool(args.eval) and 'cityscapes' in args.eval
    if not (args.format_only or eval_on_format_results):
        return None, False
    named = 'imgfile_prefix' in eval_kwargs
    folder = eval_kwargs.setdefault('imgfile_prefix', '.format_cityscapes')
    if osp.exists(folder) and not (osp.isdir(folder)
                                   and not os.listdir(folder)):
        origin = 'from --eval-options' if named else "mmseg's default"
        state = 'is not empty' if osp.isdir(folder) else 'is a file'
        sys.exit(f'tools/test.py: imgfile_prefix {folder!r} ({origin}) '
                 f'{state}. Formatted results go to an empty or new folder '
                 'and this tool deletes nothing it did not create: move its '
                 'contents away, or name another folder with --eval-options '
                 'imgfile_prefix=DIR.')
    # Decided before any process of this run can have made the folder;
    # rank 0 makes it after the process group is up (see main).
    temporary = eval_on_format_results and not named and not osp.exists(
        folder)
    return folder, temporary


def main():
    from mmseg.apis import multi_gpu_test, single_gpu_test
    from mmseg.datasets import build_dataloader, build_dataset
    from mmseg.models import build_segmentor
    from mmseg.utils import (build_ddp, build_dp, get_device,
                             setup_multi_processes)

    args = parse_args()
    cfg = load_config(args)
    # mp_start_method, opencv_num_threads, omp/mkl threads from the config.
    setup_multi_processes(cfg)
    eval_kwargs = dict(args.eval_options or {})
    # Before anything runs: a folder that is in the way stops us here.
    format_dir, temporary_format_dir = prepare_format_dir(args, eval_kwargs)
    if args.aug_test:
        flip_aug = cfg.data.test.pipeline[1]
        flip_aug.img_ratios = AUG_TEST_RATIOS
        flip_aug.flip = True
    cfg.model.pretrained = None
    cfg.data.test.test_mode = True
    cfg.gpu_ids = [args.gpu_id]

    distributed = args.launcher != 'none'
    if distributed:
        init_dist(args.launcher, **cfg.get('dist_params', {}))
    rank, world_size = get_dist_info()
    if format_dir is not None:
        if rank == 0:
            mmcv.mkdir_or_exist(format_dir)
        if distributed:
            torch.distributed.barrier()  # every rank writes into it

    # mmseg's names and place: work_dirs/<config name>/ by default.
    work_dir = args.work_dir or osp.join(
        'work_dirs', osp.splitext(osp.basename(args.config))[0])
    if rank == 0:
        mmcv.mkdir_or_exist(osp.abspath(work_dir))
        stamp = time.strftime('%Y%m%d_%H%M%S', time.localtime())
        scale = 'multi' if args.aug_test else 'single'
        json_file = osp.join(work_dir, f'eval_{scale}_scale_{stamp}.json')

    dataset = build_dataset(cfg.data.test)
    loader_cfg = dict(
        num_gpus=len(cfg.gpu_ids), dist=distributed, shuffle=False,
        samples_per_gpu=1, workers_per_gpu=cfg.data.get('workers_per_gpu', 2))
    loader_cfg.update({
        k: v for k, v in cfg.data.items()
        if k not in ('train', 'val', 'test', 'train_dataloader',
                     'val_dataloader', 'test_dataloader', 'samples_per_gpu',
                     'workers_per_gpu')})
    loader_cfg.update(cfg.data.get('test_dataloader', {}))
    data_loader = build_dataloader(dataset, **loader_cfg)

    cfg.model.train_cfg = None
    model = accept_sar_checkpoints(
        build_segmentor(cfg.model, test_cfg=cfg.get('test_cfg')))
    if cfg.get('fp16', None) is not None:
        if torch.cuda.is_available():
            wrap_fp16_model(model)
        else:
            # mmcv's fp16 casts the images to half, which convolutions on
            # the CPU refuse: evaluate in fp32 here.
            warnings.warn('fp16 is set but there is no CUDA device: '
                          'testing in fp32')
    checkpoint = load_checkpoint(model, args.checkpoint, map_location='cpu')
    meta = checkpoint.get('meta', {})
    model.CLASSES = meta.get('CLASSES', dataset.CLASSES)
    model.PALETTE = meta.get('PALETTE', dataset.PALETTE)

    format_only = format_dir is not None
    pre_eval = args.eval is not None and not format_only

    cfg.device = get_device()
    if not distributed:
        model = build_dp(revert_sync_batchnorm(model), cfg.device,
                         device_ids=cfg.gpu_ids)
        results = single_gpu_test(
            model, data_loader, args.show, args.show_dir, False, args.opacity,
            pre_eval=pre_eval, format_only=format_only,
            format_args=eval_kwargs)
    else:
        tmpdir = args.tmpdir
        own_tmpdir = (tmpdir is None and not args.gpu_collect
                      and cfg.device == 'cpu')
        if own_tmpdir:
            # mmcv makes and broadcasts a temporary directory through a CUDA
            # tensor when none is given; give one on CPU. Under the work
            # dir, as mmcv's is under the working directory: every node of
            # a multi-node run must reach it (a node-local temp folder
            # hides the other nodes' parts from rank 0).
            tmpdir = osp.join(work_dir,
                              f'.dist_test_{os.environ["MASTER_PORT"]}')
        model = build_ddp(
            model, cfg.device,
            device_ids=[int(os.environ['LOCAL_RANK'])],
            broadcast_buffers=False)
        results = multi_gpu_test(
            model, data_loader, tmpdir, args.gpu_collect, False,
            pre_eval=pre_eval, format_only=format_only,
            format_args=eval_kwargs)
        if own_tmpdir and rank == 0:
            # mmcv removes it after collecting; a run it failed in may not.
            shutil.rmtree(tmpdir, ignore_errors=True)

    if rank == 0:
        if args.out:
            if pre_eval:
                warnings.warn('--out holds pre-evaluated results (per-image '
                              'intersections and unions) when --eval is '
                              'given, as in mmseg 0.30')
            print(f'\nwriting results to {args.out}')
            mmcv.dump(results, args.out)
        if args.eval:
            eval_kwargs.update(metric=args.eval)
            metric = dataset.evaluate(results, **eval_kwargs)
            mmcv.dump(dict(config=args.config, metric=metric), json_file,
                      indent=4)
        if temporary_format_dir:
            shutil.rmtree(format_dir)
        elif args.format_only:
            print(f'\nformatted results in {format_dir}')


if __name__ == '__main__':
    main()
