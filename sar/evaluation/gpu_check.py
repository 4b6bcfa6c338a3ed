"""The GPU check's machinery, for either mmseg generation: time limits,
steps run as subprocesses, their records and the report.

tools/gpu_check.py runs the check of the installed generation
(:mod:`sar.mmseg0x.gpu_check`, :mod:`sar.mmseg1x.gpu_check`): each runs the
project's own tools from the checkout this package lies in, in a subprocess
with a time limit, as a user types them, and records checks that can fail.
What is the same for both lives here: the budget, running a step and
stopping it, reading a training log's rows into a summary, a start with the
semantic anchors set, the report files. The report is rewritten after every
step, so a check cut short still says what it did.

Time: each step has its own limit. A step that ends early leaves its
remaining seconds to the later ones. A step skipped because the budget was
spent fails the check: an incomplete check proves nothing about the skipped
path.
"""
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
PROBE_PLUGINS = osp.join(ROOT, 'tests', 'plugins')


# Sizes of each generation's GPU run and CPU rehearsal, here so that
# tools/gpu_check.py reads them without importing a glue (mmcv).
# mmseg 0.30:
# limits: seconds per step of each kind (four steps are train steps).
# threads: OpenMP threads of each of the 2 ranks (16 cores on the GPU
# machine; on the CPU more than one oversubscribes the cores).
# workers: data loader processes per rank. From the first GPU run (H200,
# 40 iterations, 30 timed overhead steps): env 11-15 s, SAR training
# 56-58 s (with 2 s pauses at every epoch end of 4 images, since removed),
# test over 40 s, two ranks (20 iterations) 83-88 s, overhead 84 s. Halved
# since, so that the 1.x steps fit the same command.
GPU0 = dict(size=512, images=16, val_images=4, iters=20, batch=4,
            dist_iters=10, dist_batch=2, log_interval=5, threads=4,
            workers=4, overhead_steps=20,
            limits=dict(env=30, train=50, test=50, dist=75, overhead=90))
CPU0 = dict(size=64, images=4, val_images=2, iters=2, batch=2, dist_iters=2,
            dist_batch=2, log_interval=1, threads=1, workers=2,
            limits=dict(env=120, train=300, test=200, dist=300, overhead=400))

# mmseg 1.x: the same kinds, and resume (resume_iters: the iterations the
# resumed run adds).
GPU1 = dict(size=512, images=16, val_images=4, iters=20, batch=4,
            resume_iters=5, dist_iters=10, dist_batch=2, log_interval=5,
            threads=4, workers=4, overhead_steps=20,
            limits=dict(env=30, train=50, resume=40, test=50, dist=75,
                        overhead=90))
CPU1 = dict(size=64, images=4, val_images=2, iters=2, batch=2, resume_iters=1,
            dist_iters=2, dist_batch=2, log_interval=1, threads=1, workers=2,
            limits=dict(env=120, train=300, resume=300, test=200, dist=300,
                        overhead=400))
SIZES = dict(mmseg0x=dict(gpu=GPU0, cpu=CPU0, train_steps=4),
             mmseg1x=dict(gpu=GPU1, cpu=CPU1, train_steps=4))


def default_budget(sizes, train_steps):
    """The sum of the steps' limits: every step can use all of its own."""
    limits = sizes['limits']
    return sum(limits.values()) + (train_steps - 1) * limits['train']


# --- running steps ---------------------------------------------------------

class Budget:
    """Seconds left: of ``seconds`` from now, and never past ``deadline``
    (wall-clock seconds since the epoch), which one check shares with the
    other generation's when tools/gpu_check.py runs both."""

    def __init__(self, seconds, deadline=None):
        self.deadline = time.monotonic() + seconds
        if deadline is not None:
            self.deadline = min(self.deadline,
                                time.monotonic() + deadline - time.time())

    def left(self):
        return self.deadline - time.monotonic()


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return str(s.getsockname()[1])


# Seconds a step's processes get to end on TERM before the KILL: torchrun
# (the dist steps) ends its workers within its own 30 s; a tool in one
# process ends at once. A step's limit leaves its grace and FINISH_S (the
# report and the logs' archive) within the budget, so that a check stopped
# at its deadline still ends by it.
STOP_GRACE_S = dict(dist=40)
DEFAULT_GRACE_S = 10
FINISH_S = 5


def stop(proc, grace=DEFAULT_GRACE_S):
    """End a step's process group: TERM first, since torchrun starts its
    workers in sessions of their own and ends them on TERM (within its own
    30 s), which a KILL of the group would leave running; KILL after
    ``grace`` seconds. A TERM to the check meanwhile waits until the step
    is gone (it would otherwise end this wait and skip the KILL)."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break  # ended by itself meanwhile
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def grace(kind):
    return STOP_GRACE_S.get(kind, DEFAULT_GRACE_S)


def run_logged(args, log_path, limit, env=None, grace=DEFAULT_GRACE_S):
    """Run ``args`` in the checkout (ROOT), all output to ``log_path``; stop
    the whole process group after ``limit`` seconds (:func:`stop`, with
    ``grace``). Returns (returncode or None on timeout, seconds)."""
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
            stop(proc, grace)
            rc = None
            log.write(f'\n[gpu_check] stopped after {limit:.0f} s\n')
        except BaseException:  # the check itself is stopped: so is the step
            stop(proc, grace)
            raise
    return rc, round(time.monotonic() - start, 1)


def tail(path, lines=25):
    try:
        with open(path, errors='replace') as f:
            return ''.join(f.readlines()[-lines:])
    except OSError:
        return ''



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


def read_probes(work, ranks=2):
    """What each rank's probe (tests/plugins/sar_rank_probe*.py) wrote in
    ``work``, None for a rank that wrote nothing."""
    import torch
    return [torch.load(path, map_location='cpu', weights_only=False)
            if osp.isfile(path) else None
            for path in (osp.join(work, f'rank{r}.pth')
                         for r in range(ranks))]


def judge_ranks(probes, iters, pulled, per_rank=()):
    """(checks, results) of a two-rank run from its ranks' probes.

    The SAR state both ranks hold must be the same keys, bit for bit, but
    for those matching ``per_rank`` (statistics kept per rank). With
    ``pulled`` (a start with S set), every rank pulled in each of its
    ``iters`` iterations: its counter, and a positive pull loss in every
    iteration of its log.
    """
    import torch
    r0, r1 = probes
    state, other = r0['sar_state'], r1['sar_state']
    shared = [k for k in state if not any(p in k for p in per_rank)]
    differ = [k for k in shared
              if k in other and not torch.equal(state[k], other[k])]
    pulls = [[step['decode.loss_sar_pull'] for step in r['losses']]
             for r in probes]
    checks = dict(
        two_ranks=(r0['world'], r1['world']) == (2, 2),
        same_log_keys=r0['keys'] == r1['keys'],
        sar_state_bit_identical=bool(shared) and not differ
        and set(state) == set(other))
    if pulled:
        checks['pull_ran_on_both_ranks'] = all(
            int(r['sar_state']['0.iters_since_init']) == iters
            and len(p) == iters and all(v > 0 for v in p)
            for r, p in zip(probes, pulls))
    results = dict(
        compared=shared, differing=differ, pull_losses=pulls,
        gate_opened=bool(state.get('0.initialised', False)),
        iters_since_init=int(state.get('0.iters_since_init', 0)),
        rank_seeds=[r0['seed'], r1['seed']])
    return checks, results


def set_probe_and_start(cfg, probe=None, load_from=None):
    """In a derived config of either generation (mmcv's or mmengine's
    ``Config``): the rank probe module ``probe`` (tests/plugins) imported
    with sar and its hook added, and a start from ``load_from``, a
    checkpoint whose semantic anchors are set (:func:`pulling_start`), where
    the pull runs in every step, not only once all anchors classify."""
    if probe:
        cfg.custom_imports = dict(imports=['sar', probe],
                                  allow_failed_imports=False)
        cfg.custom_hooks = [dict(type='SARRankProbeHook')]
    if load_from:
        cfg.load_from = load_from
        cfg.model.decode_head.sar_loss.pull_mode = 'after_init'


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




class CheckBase:
    """The steps, their results and the report files; a glue's ``Check``
    adds the steps (``steps``) and its sizes."""

    GPU = CPU = None  # sizes: dict(size, images, ..., limits)
    TRAIN_STEPS = 0

    def __init__(self, args):
        self.args = args
        self.sizes = self.CPU if args.cpu else self.GPU
        # Checked alone: the sum of its limits, or --budget. Run by
        # --stack: until the deadline that the stacks share.
        deadline = getattr(args, 'deadline', None)
        self.budget = Budget(
            args.budget or (math.inf if deadline is not None else
                            default_budget(self.sizes, self.TRAIN_STEPS)),
            deadline)
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
                           budget_s=round(self.budget.left(), 1),
                           deadline=getattr(args, 'deadline', None),
                           env={}, steps={})
        self.py = sys.executable

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
        """Seconds for the next step, or None when the budget is spent: what
        is left of it less the step's stop grace and the report's time."""
        left = self.budget.left() - grace(kind) - FINISH_S
        if left < 10:
            return None
        return min(self.sizes['limits'][kind], left)

    def spent(self, name, kind):
        """Whether the budget is spent for a step of ``kind``; if so, the
        step is recorded as skipped (before any of its own work)."""
        if self.limit(kind) is None:
            self.record(name, ok=False, skipped='the time budget was spent')
            return True
        return False

    def tool(self, name, args, kind, env=None):
        """Run a tool step; returns (rc, seconds, log path) or None if the
        budget was spent (recorded as skipped)."""
        limit = self.limit(kind)
        if limit is None:
            self.record(name, ok=False, skipped='the time budget was spent')
            return None
        log = osp.join(self.logs, f'{name}.log')
        rc, seconds = run_logged(args, log, limit, env, grace(kind))
        return rc, seconds, log

    # --- steps --------------------------------------------------------------

    # The env step's probe, run by the check's interpreter: prints
    # ``ENV {json}`` with the versions of the glue's stack (mmengine's
    # under mmseg 1.x).
    ENV_CODE = r'''
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
if sar.mmseg_generation() == 1:
    import mmengine
    info['mmengine'] = mmengine.__version__
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1),
                capability='%d.%d' % (p.major, p.minor),
                gpu_count=torch.cuda.device_count(),
                bf16_supported=torch.cuda.is_bf16_supported())
print('ENV ' + json.dumps(info))
'''

    def step_env(self):
        ran = self.tool('env', [self.py, '-c', self.ENV_CODE], 'env')
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
                 '--format=csv,noheader'], capture_output=True, text=True,
                timeout=30)
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
        """The glue's ``derive_config`` of ``src``, as ``work/name.py``."""
        return self.derive_config(src, osp.join(self.work, f'{name}.py'),
                                  self.data['root'], self.sizes, **kwargs)

    def step_overhead(self):
        if not self.wanted('overhead') or self.spent('overhead', 'overhead'):
            return
        out = osp.join(self.work, 'overhead.json')
        args = [self.py, 'tools/benchmark_overhead.py', '--json', out,
                '--device', 'cpu' if self.args.cpu else 'cuda']
        if self.args.cpu:
            args += ['--size', str(self.sizes['size']), '--batch', '2',
                     '--steps', '2', '--warmup', '1', '--memory-steps', '1']
        else:
            args += ['--steps', str(self.sizes['overhead_steps']),
                     '--warmup', '5']
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

    def steps(self):
        """env (without its imports or GPU nothing else runs), data, then
        the glue's steps in order, each guarded."""
        if not self.guarded('env', self.step_env):
            return
        if self.guarded('data', self.step_data) is False:
            return
        for name, step in self.glue_steps():
            self.guarded(name, step)

    def glue_steps(self):
        """(name, callable) of the glue's steps, in order."""
        raise NotImplementedError

    def run(self):
        try:
            self.steps()
        except BaseException:
            self.report['interrupted'] = True
            raise
        finally:
            code = self.finish()
        return code

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
             f"(CUDA {env.get('torch_cuda')}) mmcv {env.get('mmcv')} "
             f"(ops: {env.get('mmcv_ops_cuda')})"
             + (f" mmengine {env['mmengine']}" if env.get('mmengine')
                else '')
             + f" mmseg {env.get('mmseg')} sar {env.get('sar')}", '']
    for name, step in report['steps'].items():
        mark = 'PASS' if step['ok'] else 'FAIL'
        why = f" ({step['skipped']})" if step.get('skipped') else ''
        if step.get('error'):
            why = ' (the check itself raised: see below)'
        lines.append(f"{mark} {name} {step.get('seconds', '-')} s{why}")
        for key, value in step.get('checks', {}).items():
            lines.append(f"    {'ok ' if value else 'NO '} {key}")
        results = step.get('results') or {}
        if name.startswith('train') and results:
            lines.append(
                f"    time/iter {results.get('time_per_iter_s')} s, memory "
                f"{results.get('max_memory_mb')} MB, last loss "
                f"{results.get('last_loss')}")
            if results.get('loss_scale') is not None:
                lines.append(f"    fp16 loss scale {results['loss_scale']}")
            if results.get('last_sar'):
                lines.append(f"    last SAR values {results['last_sar']}")
        elif name == 'resume_sar':
            lines.append(
                f"    from iteration {results.get('iter_at_start')}, "
                f"{results.get('iterations_run')} more"
                + (f", loss scale {results['loss_scale_at_start']} (saved "
                   f"{results.get('saved_loss_scale')}, config's initial "
                   f"{results.get('config_init_scale')})"
                   if 'loss_scale_at_start' in results else ''))
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
