"""The GPU check: train, test, distribute and time SAR on one GPU, in one go.

Started by ``bash tools/gpu_check.sh OUT`` on a GPU machine, which installs
the carried wheels of both mmseg generations first and runs both checks in
one budget; or directly for the installed generation once torch, mmcv, mmseg
and sar import: ``python tools/gpu_check.py OUT [--cpu]``. Every step runs
the project's own tools, as a user types them, in a subprocess with a time
limit:

1. ``env``: torch, CUDA, the card, mmcv, (mmengine,) mmseg, sar.
2. ``data``: a generated data set in ADE20K's layout (150 classes, block
   label maps; 512 px images, or 64 px with ``--cpu``).
3. ``train_*``: ``tools/train.py`` on the paper's HRNetV2-W48 FCN SAR config
   and its baseline twin (configs/ under mmseg 0.30, configs/mmseg1x under
   1.x), single process (SyncBN reverted to BN): the SAR log keys, the last
   SAR diagnostics, time per iteration, CUDA memory, finite losses. Under
   0.30 in fp32 and with ``fp16 = dict(loss_scale='dynamic')``; under 1.x
   in fp32, with mmengine's ``AmpOptimWrapper`` in fp16 (dynamic loss
   scale) and in bf16.
4. ``resume_sar`` (1.x): ``tools/train.py --resume`` continues the fp16 run
   (the fp32 one with ``--cpu``) from its checkpoint: from its iteration,
   with the dynamic loss scale it saved (not the config's initial one).
5. ``test``: ``tools/test.py`` on the fp32 SAR checkpoint (mIoU).
6. ``dist``: 2 ranks of ``tools/dist_train.sh`` on the one GPU over gloo
   (NCCL refuses two ranks on one device); each rank writes the SAR state
   it holds (tests/plugins/sar_rank_probe*.py), compared bit for bit.
7. ``overhead``: ``tools/benchmark_overhead.py`` on the paper model (step
   time, peak memory and inference ratios, SAR vs baseline).

The report is written after every step, so a run cut short still says what
it did: ``OUT/gpu_check.json``, ``OUT/gpu_check.txt`` and the step logs in
``OUT/logs.tar.gz`` (with ``--stack``, one such folder per generation,
``OUT/mmseg0x`` and ``OUT/mmseg1x``). The exit status is 0 only when every
step ran and passed. Each step has a time limit; a generation checked alone
has their sum as its budget, and ``--budget`` caps it. The steps are
:mod:`sar.mmseg0x.gpu_check`'s and :mod:`sar.mmseg1x.gpu_check`'s.

``--stack NAME PYTHON [SITE]`` (given once per generation, by
tools/gpu_check.sh) runs the check of each named stack in turn, each with
its interpreter and its folder of wheels first on the path, all within one
budget counted from gpu_check.sh's start: ``--budget``, or by default 560 s
on the GPU (the device's 10 minutes a command, with room for the wheels'
install and a step stopped at the deadline) and the sum of the CPU limits
with ``--cpu``. A later generation gets what the earlier ones leave. Each
check makes sure its interpreter holds the generation it is named for.

``--cpu`` rehearses the same steps on the CPU in seconds-long sizes (64 px,
2 iterations); fp16 and bf16 are then checked to be refused with a clear
message, as mmcv's fp16 and mmengine's ``AmpOptimWrapper`` need a GPU.
"""
import _venv  # noqa: F401  (first: re-runs under .venv if needed)
import argparse
import os
import os.path as osp
import signal
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
STACKS = ('mmseg0x', 'mmseg1x')
# The budget of a --stack run on the GPU: within the device's 600 s a
# command, with the two wheel sets' install (seconds) before it.
GPU_BUDGET = 560


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('out', help='folder for the report (made if absent)')
    parser.add_argument('--cpu', action='store_true',
                        help='rehearse on the CPU at tiny sizes')
    parser.add_argument('--work-dir', help='data, configs, checkpoints '
                        '(default: a temporary folder, removed at the end)')
    parser.add_argument('--budget', type=float, help='seconds for all '
                        'steps (default: the sum of their limits; with '
                        f'--stack on the GPU {GPU_BUDGET})')
    parser.add_argument('--only', nargs='+', help='run only these steps '
                        '(env and data always run)')
    parser.add_argument('--stack', nargs='+', action='append',
                        metavar=('NAME PYTHON', 'SITE'),
                        help=f'check the stack NAME ({", ".join(STACKS)}) '
                        'with interpreter PYTHON and SITE first on its '
                        'path; once per stack, in the order given')
    # Internal: with --stack, where the budget starts (wall clock;
    # gpu_check.sh's start, before the wheels' install); for a check run by
    # --stack, the end of the shared budget and the stack it is to find.
    parser.add_argument('--since', type=float, help=argparse.SUPPRESS)
    parser.add_argument('--deadline', type=float, help=argparse.SUPPRESS)
    parser.add_argument('--expect-stack', choices=STACKS,
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for stack in args.stack or ():
        if len(stack) not in (2, 3) or stack[0] not in STACKS:
            parser.error(f'--stack takes NAME PYTHON [SITE], NAME one of '
                         f'{", ".join(STACKS)}; got {" ".join(stack)}')
    names = [s[0] for s in args.stack or ()]
    if len(set(names)) != len(names):
        parser.error('--stack names a stack twice')
    return args


def glue(expect=None):
    """The check of the installed mmseg generation; ``expect``: the stack
    it must be (``--stack`` names the interpreter's stack)."""
    import sar
    generation = sar.mmseg_generation()
    name = {0: 'mmseg0x', 1: 'mmseg1x'}.get(generation)
    if expect and name != expect:
        found = f'mmseg {generation}.x' if generation is not None \
            else 'no mmseg'
        sys.exit(f'gpu_check: --stack {expect} runs an interpreter with '
                 f'{found} installed: give each stack its own interpreter '
                 'or wheel folder')
    if generation == 1:
        from sar.mmseg1x import gpu_check
    else:
        from sar.mmseg0x import gpu_check
    return gpu_check


def stack_budget(args):
    """Seconds for all stacks: ``--budget``, else on the GPU GPU_BUDGET and
    with ``--cpu`` the sum of their checks' own budgets."""
    if args.budget:
        return args.budget
    if not args.cpu:
        return GPU_BUDGET
    sys.path.insert(0, ROOT)
    from sar.evaluation.gpu_check import SIZES, default_budget
    return sum(default_budget(SIZES[name]['cpu'], SIZES[name]['train_steps'])
               for name, *_ in args.stack)


def drive(args):
    """Each --stack's check in turn, as a child process, one deadline.

    A TERM (the runner's limit) is passed to the running check, which
    stops its step and writes its report; no later check starts, and the
    exit status is 143."""
    deadline = (args.since or time.time()) + stack_budget(args)
    codes, state = {}, dict(child=None, terminated=False)

    def on_term(*_):
        if not state['terminated']:
            state['terminated'] = True
            if state['child'] is not None:
                state['child'].terminate()

    signal.signal(signal.SIGTERM, on_term)
    for name, python, *site in args.stack:
        if state['terminated']:
            break
        out = osp.join(args.out, name)
        cmd = [python, osp.join(ROOT, 'tools', 'gpu_check.py'), out,
               '--deadline', str(deadline), '--expect-stack', name]
        cmd += ['--cpu'] if args.cpu else []
        if args.work_dir:
            cmd += ['--work-dir', osp.join(args.work_dir, name)]
        if args.only:
            cmd += ['--only', *args.only]
        path = [*site, ROOT, os.environ.get('PYTHONPATH', '')]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path
                                                          if p))
        print(f'[gpu_check] {name}: {deadline - time.time():.0f} s left '
              'of the budget', flush=True)
        state['child'] = subprocess.Popen(cmd, env=env)
        if state['terminated']:  # a TERM before the child existed
            state['child'].terminate()
        codes[name] = state['child'].wait()
        state['child'] = None
        if codes[name] in (143, -signal.SIGTERM):
            state['terminated'] = True
    if state['terminated']:
        print('[gpu_check] terminated', flush=True)
        return 143
    print('[gpu_check] ' + ', '.join(
        f'{name} {"passed" if code == 0 else "FAILED"}'
        for name, code in codes.items()))
    return 0 if all(code == 0 for code in codes.values()) else 1


def on_term_exit(*_):
    """A check's TERM: ends it through its finally (the running step
    stopped, the report written); a second TERM, as a whole process group
    gets, is ignored rather than breaking into that stop."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(143)


def main(argv=None):
    args = parse_args(argv)
    if args.stack:
        sys.exit(drive(args))
    # A TERM (a runner's time limit) ends the check through its finally:
    # the running step is stopped and the report and logs are written.
    signal.signal(signal.SIGTERM, on_term_exit)
    gpu_check = glue(args.expect_stack)
    check = gpu_check.Check(args)
    code = check.run()
    print(gpu_check.format_report(check.report), end='')
    sys.exit(code)


if __name__ == '__main__':
    main()
