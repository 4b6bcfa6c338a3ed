"""The GPU check's steps under mmseg 1.x (tools/gpu_check.py runs them).

The 0.30 check's steps (:mod:`sar.mmseg0x.gpu_check`) on configs/mmseg1x,
through the project's ``tools/train.py``, ``tools/test.py`` and
``tools/dist_train.sh`` (mmseg 1.x's own tools after ``import sar``) and
``tools/benchmark_overhead.py``; mixed precision as mmengine does it, with
``AmpOptimWrapper``: fp16 with a dynamic loss scale, which a resumed run
must take from the checkpoint, and bf16. See tools/gpu_check.py for the
steps and :mod:`sar.evaluation.gpu_check` for the budget, the records and
the report.

Run after the 0.30 check in one command (``tools/gpu_check.sh``), these
steps get the budget that the 0.30 ones leave.
"""
import glob
import json
import math
import os
import os.path as osp
import shutil

from ..evaluation.gpu_check import (PROBE_PLUGINS, ROOT, SIZES,  # noqa: F401
                                    CheckBase, format_report, free_port,
                                    judge_ranks, pulling_start, read_probes,
                                    set_probe_and_start, summarize_training,
                                    tail)
from .runs import train_log

PAPER_SAR = 'configs/mmseg1x/sar/sar_fcn_hr48_4xb4-160k_ade20k-512x512.py'
PAPER_BASELINE = ('configs/mmseg1x/baseline/'
                  'fcn_hr48_4xb4-160k_ade20k-512x512.py')
PROBE = 'sar_rank_probe_1x'  # tests/plugins: what each rank holds
# The initial loss scale of the resumed fp16 run's config: the scale it
# then trains with must be the one the checkpoint saved, not this.
RESUME_INIT_SCALE = 8.0

# Sizes of the GPU run and of the CPU rehearsal (sar.evaluation.gpu_check).
GPU, CPU = SIZES['mmseg1x']['gpu'], SIZES['mmseg1x']['cpu']
TRAIN_STEPS = SIZES['mmseg1x']['train_steps']
# mmengine's AmpOptimWrapper refuses a machine without a GPU with this.
AMP_REFUSAL = 'only available training on gpu'


def derive_config(src, dst, data_root, sizes, iters, batch, amp=None,
                  probe=False, gloo=False, load_from=None, init_scale=None):
    """Write ``dst``: config ``src`` shortened to this check's data and sizes.

    Everything else (model, SAR settings, optimizer, schedule policy) is the
    config's own. No pretrained backbone: the machine reaches no network.
    ``amp``: None, 'float16' (dynamic loss scale, from ``init_scale`` if
    given) or 'bfloat16': mmengine's ``AmpOptimWrapper`` around the
    config's optimizer, as its users write it.
    """
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(ROOT, src))
    cfg.model.pretrained = None
    size = sizes['size']
    cfg.model.data_preprocessor.size = (size, size)
    loaders = [cfg.train_dataloader, cfg.test_dataloader]
    for loader in loaders:
        loader.dataset.data_root = data_root
        loader.num_workers = sizes['workers']
        loader.persistent_workers = False
        for step in loader.dataset.pipeline:
            if step['type'] in ('RandomResize', 'Resize'):
                step['scale'] = (4 * size, size)
            if step['type'] == 'RandomCrop':
                step['crop_size'] = (size, size)
    cfg.train_dataloader.batch_size = batch
    # Trained without validation (mmseg 0.30's --no-validate); tested by
    # test.py with the test loader.
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters)
    cfg.param_scheduler[0].end = iters
    cfg.default_hooks.checkpoint.interval = iters
    cfg.default_hooks.logger.interval = sizes['log_interval']
    if amp:
        wrapper = dict(type='AmpOptimWrapper', dtype=amp,
                       optimizer=cfg.optim_wrapper.optimizer,
                       clip_grad=cfg.optim_wrapper.get('clip_grad'))
        if amp == 'float16':
            wrapper['loss_scale'] = 'dynamic' if init_scale is None else \
                dict(init_scale=init_scale)
        cfg.optim_wrapper = wrapper
    if gloo:
        cfg.env_cfg.dist_cfg = dict(backend='gloo')
        cfg.randomness.diff_rank_seed = True
    set_probe_and_start(cfg, probe and PROBE, load_from)
    cfg.dump(dst)
    return dst


def loss_scale(ckpt):
    """The dynamic loss scale an fp16 run saved (``AmpOptimWrapper``'s
    state in the checkpoint's optimizer entry), or None."""
    if not osp.isfile(ckpt):
        return None
    import torch
    state = torch.load(ckpt, map_location='cpu', weights_only=False)
    scaler = (state.get('optimizer') or {}).get('loss_scaler') or {}
    return scaler.get('scale')


def judge_resume(probe, start, more, fp16=False, saved_scale=None):
    """(checks, results) of a resumed run from its rank probe: it began at
    iteration ``start`` of its checkpoint and ran ``more``; with ``fp16``,
    it trained with the loss scale its checkpoint saved (``saved_scale``),
    not with its config's initial one (RESUME_INIT_SCALE)."""
    checks = dict(probe_written=probe is not None)
    if probe is None:
        return checks, {}
    results = dict(iter_at_start=probe['iter_at_start'],
                   iterations_run=len(probe['keys']))
    checks['continued_from_the_checkpoint'] = (
        probe['iter_at_start'] == start and len(probe['keys']) == more)
    if fp16:
        at_start = probe['loss_scale_at_start']
        results.update(saved_loss_scale=saved_scale,
                       config_init_scale=RESUME_INIT_SCALE,
                       loss_scale_at_start=at_start)
        checks['loss_scale_restored'] = (
            saved_scale is not None and saved_scale != RESUME_INIT_SCALE
            and at_start == saved_scale)
    return checks, results


def tool_env(extra=None):
    """A step's environment: the test-only plugins importable."""
    path = os.pathsep.join(
        p for p in (PROBE_PLUGINS, os.environ.get('PYTHONPATH')) if p)
    return dict(PYTHONPATH=path, **(extra or {}))


class Check(CheckBase):
    """The mmseg 1.x steps."""

    GPU, CPU, TRAIN_STEPS = GPU, CPU, TRAIN_STEPS
    derive_config = staticmethod(derive_config)

    def step_train(self, name, src, sar, amp=None):
        if not self.wanted(name) or self.spent(name, 'train'):
            return
        cfg = self.config(name, src, iters=self.sizes['iters'],
                          batch=self.sizes['batch'], amp=amp)
        work = self.fresh(name)
        ran = self.tool(name, [self.py, 'tools/train.py', cfg, '--work-dir',
                               work], 'train')
        if ran is None:
            return
        rc, seconds, log = ran
        if amp and self.args.cpu:
            # mmengine's AmpOptimWrapper needs a GPU: on the CPU the tool
            # must refuse with its message.
            text = tail(log, 60)
            self.record(name, seconds=seconds, checks=dict(
                refused_on_cpu=rc not in (0, None) and AMP_REFUSAL in text),
                log_tail=text if rc in (0, None) else '')
            return
        summary, checks = summarize_training(train_log(work), sar)
        ckpt = osp.join(work, f'iter_{self.sizes["iters"]}.pth')
        checks = dict(exit_0=rc == 0, **checks,
                      checkpoint_written=osp.isfile(ckpt))
        if amp == 'float16':
            # AmpOptimWrapper keeps its GradScaler's state beside the
            # optimizer's: there only if fp16 really trained.
            scale = loss_scale(ckpt)
            summary['loss_scale'] = scale
            checks['fp16_loss_scale_in_checkpoint'] = (
                scale is not None and math.isfinite(scale))
        self.record(name, seconds=seconds, checks=checks, results=summary,
                    log_tail='' if all(checks.values()) else tail(log))
        if sar and checks['checkpoint_written'] and \
                amp in (None, 'float16'):
            self.trained[amp or 'float32'] = (cfg, work, ckpt)

    def step_resume(self):
        """Continue a run with ``--resume``, in a copy of its folder: the
        fp16 run on the GPU (its loss scale restored), the fp32 one on the
        CPU (no AMP there)."""
        if not self.wanted('resume_sar') or self.spent('resume_sar',
                                                       'resume'):
            return
        amp = None if self.args.cpu else 'float16'
        if (amp or 'float32') not in self.trained:
            self.record('resume_sar', ok=False, skipped='no checkpoint from '
                        f'train_sar_{"fp32" if self.args.cpu else "fp16"}')
            return
        _, src_work, ckpt = self.trained[amp or 'float32']
        start, more = self.sizes['iters'], self.sizes['resume_iters']
        cfg = self.config('resume_sar', PAPER_SAR, iters=start + more,
                          batch=self.sizes['batch'], amp=amp, probe=True,
                          init_scale=RESUME_INIT_SCALE if amp else None)
        work = self.fresh('resume_sar')
        shutil.copytree(src_work, work)
        ran = self.tool('resume_sar', [self.py, 'tools/train.py', cfg,
                                       '--work-dir', work, '--resume'],
                        'resume', env=tool_env())
        if ran is None:
            return
        rc, seconds, log = ran
        probe = read_probes(work, ranks=1)[0]
        checks, results = judge_resume(
            probe, start, more, fp16=bool(amp),
            saved_scale=loss_scale(ckpt) if amp else None)
        checks = dict(exit_0=rc == 0, **checks, checkpoint_written=osp.isfile(
            osp.join(work, f'iter_{start + more}.pth')))
        self.record('resume_sar', seconds=seconds, checks=checks,
                    results=results,
                    log_tail='' if all(checks.values()) else tail(log))

    def step_test(self):
        if not self.wanted('test') or self.spent('test', 'test'):
            return
        if 'float32' not in self.trained:
            self.record('test', ok=False,
                        skipped='no checkpoint from train_sar_fp32')
            return
        cfg, _, ckpt = self.trained['float32']
        work = self.fresh('test')
        ran = self.tool('test', [self.py, 'tools/test.py', cfg, ckpt,
                                 '--work-dir', work], 'test')
        if ran is None:
            return
        rc, seconds, log = ran
        metric = {}
        # mmseg 1.x's test.py saves the metrics (percent) in a timestamped
        # folder, beside its log.
        saved = glob.glob(osp.join(work, '*', '*.json'))
        if len(saved) == 1:
            with open(saved[0]) as f:
                metric = json.load(f)
        miou, acc = metric.get('mIoU'), metric.get('aAcc')
        checks = dict(exit_0=rc == 0, one_result_saved=len(saved) == 1,
                      miou_in_range=miou is not None
                      and 0.0 <= miou <= 100.0,
                      accuracy_saved=acc is not None and 0.0 <= acc <= 100)
        self.record('test', seconds=seconds, checks=checks,
                    results=dict(mIoU=miou, aAcc=acc,
                                 note='percent; a plumbing check on '
                                 'generated data after '
                                 f'{self.sizes["iters"]} iterations, not an '
                                 'accuracy result'),
                    log_tail='' if all(checks.values()) else tail(log))

    def step_dist(self):
        if not self.wanted('dist') or self.spent('dist', 'dist'):
            return
        iters = self.sizes['dist_iters']
        start = None
        if 'float32' in self.trained:
            start = pulling_start(self.trained['float32'][2],
                                  osp.join(self.work, 'dist_start.pth'))
        cfg = self.config('dist_sar', PAPER_SAR, iters=iters,
                          batch=self.sizes['dist_batch'], probe=True,
                          gloo=True, load_from=start)
        work = self.fresh('dist_sar')
        ran = self.tool('dist', ['bash', 'tools/dist_train.sh', cfg, '2',
                                 '--work-dir', work], 'dist',
                        env=tool_env(dict(
                            PYTHON=self.py, PORT=free_port(),
                            OMP_NUM_THREADS=str(self.sizes['threads']))))
        if ran is None:
            return
        rc, seconds, log = ran
        probes = read_probes(work)
        checks = dict(exit_0=rc == 0, both_ranks_wrote=all(probes))
        results = {}
        if all(probes):
            # Everything SAR holds must agree, the projector's (Sync)BN
            # statistics included: mmengine's wrapper does not broadcast
            # buffers, but the projector's batch, the anchors, is the same
            # on every rank. Each rank logs its own losses (mmengine does
            # not average them).
            judged, results = judge_ranks(probes, iters, pulled=bool(start))
            checks.update(judged)
            results.update(
                started_from=start and 'train_sar_fp32 with S set',
                wrapper=probes[0]['wrapper'], norms=probes[0]['norms'],
                backend='gloo (CUDA tensors)' if not self.args.cpu
                else 'gloo (CPU)')
        self.record('dist', seconds=seconds, checks=checks, results=results,
                    log_tail='' if all(checks.values()) else tail(log))

    def glue_steps(self):
        self.trained = {}
        return (
            ('train_sar_fp32', lambda: self.step_train(
                'train_sar_fp32', PAPER_SAR, True)),
            ('train_sar_fp16', lambda: self.step_train(
                'train_sar_fp16', PAPER_SAR, True, 'float16')),
            ('resume_sar', self.step_resume),
            ('train_sar_bf16', lambda: self.step_train(
                'train_sar_bf16', PAPER_SAR, True, 'bfloat16')),
            ('test', self.step_test),
            ('dist', self.step_dist),
            ('overhead', self.step_overhead),
            ('train_baseline_fp32', lambda: self.step_train(
                'train_baseline_fp32', PAPER_BASELINE, False)))
