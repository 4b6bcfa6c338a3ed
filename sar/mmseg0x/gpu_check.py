"""The GPU check's steps, results and report (tools/gpu_check.py runs it).

Each step runs the project's own tools from the checkout this package lies
in (``tools/train.py``, ``tools/test.py``, ``tools/dist_train.sh``,
``tools/benchmark_overhead.py``) in a subprocess with a time limit, as a
user types them, and records checks that can fail; see tools/gpu_check.py
for the steps. The report is rewritten after every step, so a check cut
short still says what it did.

Time: each step has its own limit, and the budget is the sum of the limits
(590 s on the GPU, within the device's 10 minutes a command with the wheels'
install), so that no step's share is promised twice. A step that ends early
leaves its remaining seconds to the later ones. A step skipped because the
budget was spent fails the check: an incomplete check proves nothing about
the skipped path.
"""
import glob
import json
import math
import os
import os.path as osp
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time

from ..data.ade_like import make_ade_like

# The checkout: tools/ and configs/ lie beside the package.
ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
PAPER_SAR = 'configs/sar/sar_fcn_hr48_4xb4-160k_ade20k-512x512.py'
PAPER_BASELINE = 'configs/baseline/fcn_hr48_4xb4-160k_ade20k-512x512.py'
PROBE_PLUGINS = osp.join(ROOT, 'tests', 'plugins')

# Sizes of the GPU run and of the CPU rehearsal.
# limits: seconds per step of each kind (four steps are train steps).
# threads: OpenMP threads of each of the 2 ranks (16 cores on the GPU
# machine; on the CPU more than one oversubscribes the cores).
# workers: data loader processes per rank. Limits from the first GPU run
# (H200): env 11-15 s, SAR training 56-58 s (with 2 s pauses at every epoch
# end of 4 images, since removed), test over 40 s, two ranks 83-88 s,
# overhead 84 s with 30 timed steps.
GPU = dict(size=512, images=16, val_images=4, iters=40, batch=4,
           dist_iters=20, dist_batch=2, log_interval=10, threads=4,
           workers=4,
           limits=dict(env=30, train=65, test=60, dist=90, overhead=150))
CPU = dict(size=64, images=4, val_images=2, iters=2, batch=2, dist_iters=2,
           dist_batch=2, log_interval=1, threads=1, workers=2,
           limits=dict(env=120, train=300, test=200, dist=300, overhead=400))
TRAIN_STEPS = 4


def default_budget(sizes):
    """The sum of the steps' limits: every step can use all of its own."""
    limits = sizes['limits']
    return sum(limits.values()) + (TRAIN_STEPS - 1) * limits['train']


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
    if probe:
        cfg.custom_imports = dict(imports=['sar', 'sar_rank_probe'],
                                  allow_failed_imports=False)
        cfg.custom_hooks = [dict(type='SARRankProbeHook')]
    if gloo:
        cfg.dist_params = dict(backend='gloo')
    if load_from:
        # From a checkpoint whose semantic anchors are set (pulling_start):
        # the pull runs in every step, not only once all anchors classify.
        cfg.load_from = load_from
        cfg.model.decode_head.sar_loss.pull_mode = 'after_init'
    cfg.dump(dst)
    return dst


# --- running steps ---------------------------------------------------------

class Budget:

    def __init__(self, seconds):
        self.deadline = time.monotonic() + seconds

    def left(self):
        return self.deadline - time.monotonic()


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return str(s.getsockname()[1])


def stop(proc):
    """End a step's process group: TERM first, since torchrun starts its
    workers in sessions of their own and ends them on TERM (within its own
    30 s), which a KILL of the group would leave running."""
    for sig, wait in ((signal.SIGTERM, 40), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break  # ended by itself meanwhile
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


def run_logged(args, log_path, limit, env=None):
    """Run ``args`` in ROOT, all output to ``log_path``; kill the whole
    process group after ``limit`` seconds. Returns (returncode or None on
    timeout, seconds)."""
    full_env = dict(os.environ, PYTHONUNBUFFERED='1', **(env or {}))
    start = time.monotonic()
    with open(log_path, 'w') as log:
        log.write('$ ' + ' '.join(args) + '\n')
        log.flush()
        proc = subprocess.Popen(args, cwd=ROOT, env=full_env, stdout=log,
                                stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=max(limit, 1))
        except subprocess.TimeoutExpired:
            stop(proc)
            rc = None
            log.write(f'\n[gpu_check] stopped after {limit:.0f} s\n')
        except BaseException:  # the check itself is stopped: so is the step
            stop(proc)
            raise
    return rc, round(time.monotonic() - start, 1)


def tail(path, lines=25):
    try:
        with open(path, errors='replace') as f:
            return ''.join(f.readlines()[-lines:])
    except OSError:
        return ''


def train_log(work_dir):
    """The train lines of mmcv's json log in ``work_dir``."""
    rows = []
    for path in glob.glob(osp.join(work_dir, '*.log.json')):
        with open(path) as f:
            rows += [json.loads(line) for line in f
                     if '"mode": "train"' in line]
    return rows


def pulling_start(ckpt, dst, seed=0):
    """Write ``dst``: checkpoint ``ckpt`` with its semantic anchors set.

    The gate opens only once every one of the 150 anchors is classified as
    its own class, which a short run from scratch never reaches. Here S is
    set (seeded, the same on every rank) and marked initialised, so that a
    run from ``dst`` with ``pull_mode='after_init'`` pulls in every step.
    Every other key of SAR's state stays as ``ckpt`` holds it: SAR loads its
    state as one unit or not at all (a missing initial anchor A0 would leave
    S unset and the pull at 0).
    """
    import torch
    ckpt = torch.load(ckpt, map_location='cpu', weights_only=False)
    state = ckpt['state_dict']
    prefix = 'decode_head.sar_loss.'
    anchors = state[prefix + 'semantic_anchors']
    gen = torch.Generator().manual_seed(seed)
    state[prefix + 'semantic_anchors'] = torch.randn(
        anchors.shape, generator=gen, dtype=anchors.dtype)
    state[prefix + 'initialised'] = torch.tensor(True)
    state[prefix + 'iters_since_init'] = torch.tensor(0)
    torch.save(dict(state_dict=state, meta={}), dst)
    return dst


def loss_scale(ckpt):
    """The dynamic loss scale an fp16 run saved, or None."""
    if not osp.isfile(ckpt):
        return None
    import torch
    meta = torch.load(ckpt, map_location='cpu', weights_only=False)['meta']
    scaler = (meta.get('fp16') or {}).get('loss_scaler') or {}
    return scaler.get('scale')


def summarize_training(rows, sar):
    keys = sorted(set().union(*(r.keys() for r in rows))) if rows else []
    losses = [v for r in rows for k, v in r.items()
              if 'loss' in k and isinstance(v, (int, float))]
    last = rows[-1] if rows else {}
    # The first logged interval holds cudnn's benchmarking: time per
    # iteration is reported over the later ones.
    times = [r['time'] for r in rows[1:] if 'time' in r] or \
        [r['time'] for r in rows if 'time' in r]
    summary = dict(
        logged_iters=[r.get('iter') for r in rows],
        sar_keys=[k for k in keys if 'sar' in k],
        last_sar=({k: v for k, v in last.items() if 'sar' in k}
                  if sar else {}),
        last_loss=last.get('loss'),
        time_per_iter_s=(round(sum(times) / len(times), 4)
                         if times else None),
        max_memory_mb=max((r.get('memory', 0) for r in rows), default=None))
    checks = dict(logged=bool(rows),
                  losses_finite=bool(losses) and all(
                      math.isfinite(v) for v in losses))
    if sar:
        checks['sar_keys_logged'] = all(
            any(k.endswith(name) for k in keys)
            for name in ('loss_sar_pull', 'loss_sar_anchor_ce',
                         'sar.gate_open', 'sar.anchor_max_cos'))
    return summary, checks


class Check:
    """The steps, their results and the report files."""

    def __init__(self, args):
        self.args = args
        self.sizes = CPU if args.cpu else GPU
        self.budget = Budget(args.budget or default_budget(self.sizes))
        self.out = osp.abspath(args.out)
        os.makedirs(self.out, exist_ok=True)
        self.own_work = args.work_dir is None
        self.work = osp.abspath(args.work_dir or tempfile.mkdtemp(
            prefix='sar_gpu_check_'))
        self.logs = osp.join(self.work, 'logs')
        os.makedirs(self.logs, exist_ok=True)
        self.started = time.time()
        self.report = dict(mode='cpu-rehearsal' if args.cpu else 'gpu',
                           started=time.strftime('%Y-%m-%d %H:%M:%S %Z'),
                           command=' '.join(sys.argv), sizes=self.sizes,
                           env={}, steps={})
        self.py = sys.executable

    # Each step records dict(ok, seconds, checks, results, log_tail).
    def record(self, name, **entry):
        entry.setdefault('checks', {})
        if 'ok' not in entry:
            entry['ok'] = bool(entry['checks']) and all(
                entry['checks'].values())
        self.report['steps'][name] = entry
        self.write()

    def wanted(self, name):
        only = self.args.only
        return not only or any(name.startswith(o) for o in only)

    def limit(self, kind):
        """Seconds for the next step, or None when the budget is spent."""
        left = self.budget.left()
        if left < 10:
            return None
        return min(self.sizes['limits'][kind], left)

    def tool(self, name, args, kind, env=None):
        """Run a tool step; returns (rc, seconds, log path) or None if the
        budget was spent (recorded as skipped)."""
        limit = self.limit(kind)
        if limit is None:
            self.record(name, ok=False, skipped='the time budget was spent')
            return None
        log = osp.join(self.logs, f'{name}.log')
        rc, seconds = run_logged(args, log, limit, env)
        return rc, seconds, log

    # --- steps --------------------------------------------------------------

    def step_env(self):
        code = r'''
import json, os, platform, torch
import mmcv, mmseg, sar
from mmcv.ops import get_compiler_version, get_compiling_cuda_version
info = dict(python=platform.python_version(), torch=torch.__version__,
            torch_cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            cuda_available=torch.cuda.is_available(), mmcv=mmcv.__version__,
            mmcv_ops_cuda=get_compiling_cuda_version(),
            mmcv_ops_compiler=get_compiler_version(), mmseg=mmseg.__version__,
            sar=sar.__version__, sar_path=os.path.dirname(sar.__file__),
            cpus=os.cpu_count())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1),
                capability='%d.%d' % (p.major, p.minor),
                gpu_count=torch.cuda.device_count())
print('ENV ' + json.dumps(info))
'''
        ran = self.tool('env', [self.py, '-c', code], 'env')
        if ran is None:
            return False
        rc, seconds, log = ran
        info = {}
        with open(log) as f:
            for line in f:
                if line.startswith('ENV '):
                    info = json.loads(line[4:])
        info['platform'] = platform.platform()
        smi = shutil.which('nvidia-smi')
        if smi:
            proc = subprocess.run(
                [smi, '--query-gpu=name,driver_version,memory.total',
                 '--format=csv,noheader'], capture_output=True, text=True)
            info['nvidia_smi'] = proc.stdout.strip()
        self.report['env'] = info
        checks = dict(imports=rc == 0)
        if not self.args.cpu:
            checks['cuda_available'] = bool(info.get('cuda_available'))
        self.record('env', seconds=seconds, checks=checks,
                    log_tail=tail(log) if rc else '')
        # Without imports, or without the GPU the check is for, every
        # later step would only spend the budget.
        return all(checks.values())

    def step_data(self):
        start = time.monotonic()
        self.data = make_ade_like(osp.join(self.work, 'ade_like'),
                                  self.sizes['images'],
                                  self.sizes['val_images'],
                                  self.sizes['size'])
        self.record('data', seconds=round(time.monotonic() - start, 1),
                    checks=dict(written=True), results=self.data)

    def fresh(self, name):
        """An empty folder for a step (a reused --work-dir holds old logs)."""
        path = osp.join(self.work, name)
        shutil.rmtree(path, ignore_errors=True)
        return path

    def config(self, name, src, **kwargs):
        return derive_config(src, osp.join(self.work, f'{name}.py'),
                             self.data['root'], self.sizes, **kwargs)

    def step_train(self, name, src, sar, fp16):
        if not self.wanted(name):
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
        if not self.wanted('test'):
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
        if not self.wanted('dist'):
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
        import torch
        probes = []
        for r in range(2):
            f = osp.join(work, f'rank{r}.pth')
            probes.append(torch.load(f, map_location='cpu')
                          if osp.isfile(f) else None)
        checks = dict(exit_0=rc == 0, both_ranks_wrote=all(probes))
        results = {}
        if all(probes):
            r0, r1 = probes
            state = r0['sar_state']
            # On the CPU SyncBN is reverted to BN and mmseg's DDP does not
            # broadcast buffers: the projector's running statistics are per
            # rank there. On the GPU, SyncBN: everything must agree.
            shared = [k for k in state if not (
                self.args.cpu and 'projector.norm' in k)]
            differ = [k for k in shared
                      if not torch.equal(state[k], r1['sar_state'][k])]
            pulls = [[step['decode.loss_sar_pull'] for step in r['losses']]
                     for r in probes]
            checks.update(
                two_ranks=(r0['world'], r1['world']) == (2, 2),
                same_log_keys=r0['keys'] == r1['keys'],
                sar_state_bit_identical=bool(shared) and not differ)
            if start:
                # The counter is per rank (and compared above); the logged
                # losses are means over the ranks.
                checks['pull_ran_on_both_ranks'] = all(
                    int(r['sar_state']['0.iters_since_init']) == iters
                    for r in probes) and all(p > 0 for p in pulls[0])
            results = dict(
                compared=shared, differing=differ,
                started_from=start and 'train_sar_fp32 with S set',
                pull_losses=pulls,
                gate_opened=bool(state.get('0.initialised', False)),
                iters_since_init=int(state.get('0.iters_since_init', 0)),
                rank_seeds=[r0['seed'], r1['seed']],
                backend='gloo (CUDA tensors)' if not self.args.cpu
                else 'gloo (CPU)')
        self.record('dist', seconds=seconds, checks=checks, results=results,
                    log_tail='' if all(checks.values()) else tail(log))

    def step_overhead(self):
        if not self.wanted('overhead'):
            return
        out = osp.join(self.work, 'overhead.json')
        args = [self.py, 'tools/benchmark_overhead.py', '--json', out,
                '--device', 'cpu' if self.args.cpu else 'cuda']
        if self.args.cpu:
            args += ['--size', str(self.sizes['size']), '--batch', '2',
                     '--steps', '2', '--warmup', '1', '--memory-steps', '1']
        ran = self.tool('overhead', args, 'overhead')
        if ran is None:
            return
        rc, seconds, log = ran
        res = {}
        if osp.isfile(out):
            with open(out) as f:
                res = json.load(f)
            shutil.copy(out, osp.join(self.out, 'overhead.json'))
        checks = dict(exit_0=rc == 0, measured=bool(res.get('ratios')))
        if res.get('checks'):
            checks['inference_logits_equal'] = bool(
                res['checks'].get('inference_logits_equal'))
        results = {k: res.get(k) for k in (
            'device_name', 'size', 'batch', 'steps', 'warmup', 'ratios',
            'targets', 'peak_memory_bytes', 'noise', 'checks')}
        self.record('overhead', seconds=seconds, checks=checks,
                    results=results,
                    log_tail='' if all(checks.values()) else tail(log))

    def run(self):
        try:
            self.steps()
        except BaseException:
            self.report['interrupted'] = True
            raise
        finally:
            code = self.finish()
        return code

    def steps(self):
        if not self.guarded('env', self.step_env):
            return
        if self.guarded('data', self.step_data) is False:
            return
        for name, step in (
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
                    'train_baseline_fp16', PAPER_BASELINE, False, True))):
            self.guarded(name, step)

    def guarded(self, name, step):
        """Run one step; an exception in the check's own code fails that
        step, with its traceback, and the next steps still run."""
        try:
            return step()
        except Exception:  # noqa: BLE001  (reported, not swallowed)
            import traceback
            self.record(name, ok=False, error=traceback.format_exc())
            return False

    # --- report -------------------------------------------------------------

    def finish(self):
        self.report['elapsed_s'] = round(time.time() - self.started, 1)
        steps = self.report['steps']
        self.report['passed'] = bool(steps) and all(
            s['ok'] for s in steps.values()) and not self.report.get(
                'interrupted')
        self.write()
        with tarfile.open(osp.join(self.out, 'logs.tar.gz'), 'w:gz') as tar:
            tar.add(self.logs, arcname='logs')
        if self.own_work:
            shutil.rmtree(self.work, ignore_errors=True)
        return 0 if self.report['passed'] else 1

    def write(self):
        with open(osp.join(self.out, 'gpu_check.json'), 'w') as f:
            json.dump(self.report, f, indent=1, default=str)
        with open(osp.join(self.out, 'gpu_check.txt'), 'w') as f:
            f.write(format_report(self.report))


def format_report(report):
    env = report.get('env', {})
    lines = [f"SAR GPU check ({report['mode']}), {report['started']}",
             f"  {env.get('gpu', 'no GPU')} {env.get('nvidia_smi', '')}",
             f"  python {env.get('python')} torch {env.get('torch')} "
             f"(CUDA {env.get('torch_cuda')}) mmcv-full {env.get('mmcv')} "
             f"(ops: {env.get('mmcv_ops_cuda')}) mmseg {env.get('mmseg')} "
             f"sar {env.get('sar')}", '']
    for name, step in report['steps'].items():
        mark = 'PASS' if step['ok'] else 'FAIL'
        why = f" ({step['skipped']})" if step.get('skipped') else ''
        if step.get('error'):
            why = ' (the check itself raised: see below)'
        lines.append(f"{mark} {name} {step.get('seconds', '-')} s{why}")
        for key, value in step.get('checks', {}).items():
            lines.append(f"    {'ok ' if value else 'NO '} {key}")
        results = step.get('results') or {}
        if name.startswith('train'):
            lines.append(
                f"    time/iter {results.get('time_per_iter_s')} s, memory "
                f"{results.get('max_memory_mb')} MB, last loss "
                f"{results.get('last_loss')}")
            if results.get('loss_scale') is not None:
                lines.append(f"    fp16 loss scale {results['loss_scale']}")
            if results.get('last_sar'):
                lines.append(f"    last SAR values {results['last_sar']}")
        elif name == 'test':
            lines.append(f"    mIoU {results.get('mIoU')} "
                         f"({results.get('note')})")
        elif name == 'dist':
            lines.append(f"    {results.get('backend')}, pull losses "
                         f"{results.get('pull_losses')}, differing: "
                         f"{results.get('differing')}")
        elif name == 'overhead' and results.get('ratios'):
            for variant, ratios in results['ratios'].items():
                lines.append(f"    {variant}: " + ', '.join(
                    f'{k} {v:.3f}' for k, v in ratios.items()
                    if isinstance(v, float)))
            lines.append(f"    targets {results.get('targets')}")
        for text in (step.get('error'), step.get('log_tail')):
            if text:
                lines += ['    | ' + t for t in text.splitlines()]
    lines += ['', f"{'PASSED' if report.get('passed') else 'FAILED'} in "
              f"{report.get('elapsed_s')} s"
              + (' (interrupted)' if report.get('interrupted') else '')]
    return '\n'.join(lines) + '\n'
