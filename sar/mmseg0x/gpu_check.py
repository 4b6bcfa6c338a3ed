"""The GPU check's steps under mmseg 0.30 (tools/gpu_check.py runs them).

Each step runs the project's own tools from the checkout this package lies
in (``tools/train.py``, ``tools/test.py``, ``tools/dist_train.sh``,
``tools/benchmark_overhead.py``) in a subprocess with a time limit, as a
user types them, and records checks that can fail; see tools/gpu_check.py
for the steps, :mod:`sar.evaluation.gpu_check` for the budget, the records
and the report.

Sizes: each step has its own limit, and a check of this generation alone
has the sum of the limits as its budget. Run with the mmseg 1.x check in
one command (``tools/gpu_check.sh``), both share one budget: the 1.x steps
get what these leave.
"""
import glob
import json
import math
import os
import os.path as osp

from ..evaluation.gpu_check import (PROBE_PLUGINS, ROOT, SIZES,  # noqa: F401
                                    Budget, CheckBase, default_budget,
                                    format_report, free_port, judge_ranks,
                                    pulling_start, read_probes, run_logged,
                                    set_probe_and_start, summarize_training,
                                    tail)

PAPER_SAR = 'configs/sar/sar_fcn_hr48_4xb4-160k_ade20k-512x512.py'
PAPER_BASELINE = 'configs/baseline/fcn_hr48_4xb4-160k_ade20k-512x512.py'

# Sizes of the GPU run and of the CPU rehearsal (sar.evaluation.gpu_check,
# where tools/gpu_check.py reads them without mmcv).
GPU, CPU = SIZES['mmseg0x']['gpu'], SIZES['mmseg0x']['cpu']
TRAIN_STEPS = SIZES['mmseg0x']['train_steps']


def derive_config(src, dst, data_root, sizes, iters, batch, fp16=False,
                  probe=False, gloo=False, load_from=None):
    """Write ``dst``: config ``src`` shortened to this check's data and sizes.

    Everything else (model, SAR settings, optimizer, schedule policy) is the
    config's own. No pretrained backbone: the machine reaches no network.
    """
    from mmcv.utils import Config
    cfg = Config.fromfile(osp.join(ROOT, src))
    cfg.model.pretrained = None
    size = sizes['size']
    for split in ('train', 'val', 'test'):
        cfg.data[split].data_root = data_root
    for step in cfg.data.train.pipeline:
        if step['type'] == 'Resize':
            step['img_scale'] = (4 * size, size)
        if step['type'] in ('RandomCrop', 'Pad'):
            step['crop_size' if step['type'] == 'RandomCrop' else 'size'] = \
                (size, size)
    for split in ('val', 'test'):
        for step in cfg.data[split].pipeline:
            if step['type'] == 'MultiScaleFlipAug':
                step['img_scale'] = (4 * size, size)
    cfg.data.samples_per_gpu = batch
    cfg.data.workers_per_gpu = sizes['workers']
    # mmcv's IterLoader sleeps 2 s at every epoch end, each 4 iterations of
    # the 16 images: the first GPU run spent 0.5 s of a 0.7 s iteration
    # there. Repeated, an epoch outlasts the run.
    cfg.data.train = dict(type='RepeatDataset', times=100,
                          dataset=cfg.data.train)
    cfg.runner.max_iters = iters
    cfg.checkpoint_config.interval = iters
    cfg.evaluation.interval = iters
    cfg.log_config = dict(interval=sizes['log_interval'], hooks=[
        dict(type='TextLoggerHook', by_epoch=False)])
    if fp16:
        # As users of mixed precision write it; tools/train.py turns it into
        # mmseg 0.30's Fp16OptimizerHook (sar.mmseg0x.runtime.resolve_fp16).
        cfg.fp16 = dict(loss_scale='dynamic')
    if gloo:
        cfg.dist_params = dict(backend='gloo')
    set_probe_and_start(cfg, probe and 'sar_rank_probe', load_from)
    cfg.dump(dst)
    return dst


def train_log(work_dir):
    """The train lines of mmcv's json log in ``work_dir``."""
    rows = []
    for path in glob.glob(osp.join(work_dir, '*.log.json')):
        with open(path) as f:
            rows += [json.loads(line) for line in f
                     if '"mode": "train"' in line]
    return rows



def loss_scale(ckpt):
    """The dynamic loss scale an fp16 run saved, or None."""
    if not osp.isfile(ckpt):
        return None
    import torch
    meta = torch.load(ckpt, map_location='cpu', weights_only=False)['meta']
    scaler = (meta.get('fp16') or {}).get('loss_scaler') or {}
    return scaler.get('scale')




class Check(CheckBase):
    """The mmseg 0.30 steps."""

    GPU, CPU, TRAIN_STEPS = GPU, CPU, TRAIN_STEPS
    derive_config = staticmethod(derive_config)

    def step_train(self, name, src, sar, fp16):
        if not self.wanted(name) or self.spent(name, 'train'):
            return
        cfg = self.config(name, src, iters=self.sizes['iters'],
                          batch=self.sizes['batch'], fp16=fp16)
        work = self.fresh(name)
        ran = self.tool(name, [self.py, 'tools/train.py', cfg, '--work-dir',
                               work, '--no-validate'], 'train')
        if ran is None:
            return
        rc, seconds, log = ran
        if fp16 and self.args.cpu:
            # mmcv's fp16 casts the images to half and relies on CUDA
            # autocast: on the CPU the tool must refuse, naming the fix.
            text = tail(log, 60)
            self.record(name, seconds=seconds, checks=dict(
                refused_on_cpu=rc not in (0, None)
                and 'fp16 training needs a CUDA device' in text),
                log_tail=text if rc in (0, None) else '')
            return
        summary, checks = summarize_training(train_log(work), sar)
        ckpt = osp.join(work, f'iter_{self.sizes["iters"]}.pth')
        checks = dict(exit_0=rc == 0, **checks,
                      checkpoint_written=osp.isfile(ckpt))
        if fp16:
            # Fp16OptimizerHook keeps its GradScaler's state in the
            # checkpoint's meta: there only if fp16 really trained.
            scale = loss_scale(ckpt)
            summary['loss_scale'] = scale
            checks['fp16_loss_scale_in_checkpoint'] = (
                scale is not None and math.isfinite(scale))
        self.record(name, seconds=seconds, checks=checks, results=summary,
                    log_tail='' if all(checks.values()) else tail(log))
        if name == 'train_sar_fp32' and checks['checkpoint_written']:
            self.sar_checkpoint = (cfg, ckpt)

    def step_test(self):
        if not self.wanted('test') or self.spent('test', 'test'):
            return
        if not getattr(self, 'sar_checkpoint', None):
            self.record('test', ok=False,
                        skipped='no checkpoint from train_sar_fp32')
            return
        cfg, ckpt = self.sar_checkpoint
        work = self.fresh('test')
        ran = self.tool('test', [self.py, 'tools/test.py', cfg, ckpt,
                                 '--eval', 'mIoU', '--work-dir', work],
                        'test')
        if ran is None:
            return
        rc, seconds, log = ran
        metric = {}
        for path in glob.glob(osp.join(work, 'eval_*.json')):
            with open(path) as f:
                metric = json.load(f)['metric']
        miou = metric.get('mIoU')
        checks = dict(exit_0=rc == 0, miou_in_range=miou is not None
                      and 0.0 <= miou <= 1.0)
        self.record('test', seconds=seconds, checks=checks,
                    results=dict(mIoU=miou, aAcc=metric.get('aAcc'),
                                 note='a plumbing check on generated data '
                                 f'after {self.sizes["iters"]} iterations, '
                                 'not an accuracy result'),
                    log_tail='' if all(checks.values()) else tail(log))

    def step_dist(self):
        if not self.wanted('dist') or self.spent('dist', 'dist'):
            return
        iters = self.sizes['dist_iters']
        start = None
        if getattr(self, 'sar_checkpoint', None):
            start = pulling_start(self.sar_checkpoint[1],
                                  osp.join(self.work, 'dist_start.pth'))
        cfg = self.config('dist_sar', PAPER_SAR, iters=iters,
                          batch=self.sizes['dist_batch'], probe=True,
                          gloo=True, load_from=start)
        work = self.fresh('dist_sar')
        path = os.pathsep.join(
            p for p in (PROBE_PLUGINS, os.environ.get('PYTHONPATH')) if p)
        ran = self.tool('dist', ['bash', 'tools/dist_train.sh', cfg, '2',
                                 '--work-dir', work, '--no-validate',
                                 '--diff_seed'], 'dist',
                        env=dict(PYTHON=self.py, PORT=free_port(),
                                 PYTHONPATH=path,
                                 OMP_NUM_THREADS=str(self.sizes['threads'])))
        if ran is None:
            return
        rc, seconds, log = ran
        probes = read_probes(work)
        checks = dict(exit_0=rc == 0, both_ranks_wrote=all(probes))
        results = {}
        if all(probes):
            # On the CPU SyncBN is reverted to BN and mmseg's DDP does not
            # broadcast buffers: the projector's running statistics are per
            # rank there. On the GPU, SyncBN: everything must agree. Each
            # rank's logged losses are means over the ranks, the same on
            # both: that rank 1 pulled shows in its own counter.
            judged, results = judge_ranks(
                probes, iters, pulled=bool(start),
                per_rank=('projector.norm', ) if self.args.cpu else ())
            checks.update(judged)
            results.update(
                started_from=start and 'train_sar_fp32 with S set',
                backend='gloo (CUDA tensors)' if not self.args.cpu
                else 'gloo (CPU)')
        self.record('dist', seconds=seconds, checks=checks, results=results,
                    log_tail='' if all(checks.values()) else tail(log))

    def glue_steps(self):
        return (
            ('train_sar_fp32', lambda: self.step_train(
                'train_sar_fp32', PAPER_SAR, True, False)),
            ('train_sar_fp16', lambda: self.step_train(
                'train_sar_fp16', PAPER_SAR, True, True)),
            ('test', self.step_test),
            ('dist', self.step_dist),
            ('overhead', self.step_overhead),
            ('train_baseline_fp32', lambda: self.step_train(
                'train_baseline_fp32', PAPER_BASELINE, False, False)),
            ('train_baseline_fp16', lambda: self.step_train(
                'train_baseline_fp16', PAPER_BASELINE, False, True)))
