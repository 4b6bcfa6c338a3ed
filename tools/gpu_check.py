"""The GPU check: train, test, distribute and time SAR on one GPU, in one go.

Started by ``bash tools/gpu_check.sh OUT`` on a GPU machine (which installs
the carried wheels first), or directly once torch, mmcv-full, mmseg and sar
import: ``python tools/gpu_check.py OUT [--cpu]``. Every step runs the
project's own tools, as a user types them, in a subprocess with a time limit:

1. ``env``: torch, CUDA, the card, mmcv-full, mmseg, sar.
2. ``data``: a generated data set in ADE20K's layout (150 classes, block
   label maps; 512 px images, or 64 px with ``--cpu``).
3. ``train_*``: ``tools/train.py`` on the paper's HRNetV2-W48 FCN SAR config
   and its baseline twin, in fp32 and with ``fp16 = dict(loss_scale=
   'dynamic')``, single process (SyncBN reverted to BN): the SAR log keys,
   the last SAR diagnostics, time per iteration, CUDA memory, finite losses.
4. ``test``: ``tools/test.py --eval mIoU`` on the fp32 SAR checkpoint.
5. ``dist``: 2 ranks of ``tools/dist_train.sh`` on the one GPU over gloo
   (NCCL refuses two ranks on one device); each rank writes the SAR state
   it holds (tests/plugins/sar_rank_probe.py), compared bit for bit.
6. ``overhead``: ``tools/benchmark_overhead.py`` on the paper model (step
   time, peak memory and inference ratios, SAR vs baseline).

The report is written after every step, so a run cut short still says what
it did: ``OUT/gpu_check.json``, ``OUT/gpu_check.txt`` and the step logs in
``OUT/logs.tar.gz``. The exit status is 0 only when every step ran and
passed. Each step has a time limit; the budget is their sum (590 s on the
GPU) and ``--budget`` caps it. The steps and the report are
:mod:`sar.mmseg0x.gpu_check`'s.

``--cpu`` rehearses the same steps on the CPU in seconds-long sizes (64 px,
2 iterations); fp16 is then checked to be refused with a clear message, as
mmcv's fp16 casts images to half, which has no CPU path.
"""
import _venv  # noqa: F401  (first: re-runs under .venv if needed)
import argparse
import signal
import sys

from sar.mmseg0x.gpu_check import Check, format_report


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('out', help='folder for the report (made if absent)')
    parser.add_argument('--cpu', action='store_true',
                        help='rehearse on the CPU at tiny sizes')
    parser.add_argument('--work-dir', help='data, configs, checkpoints '
                        '(default: a temporary folder, removed at the end)')
    parser.add_argument('--budget', type=float, help='seconds for all '
                        'steps (default: the sum of their limits, 590 on '
                        'the GPU)')
    parser.add_argument('--only', nargs='+', help='run only these steps '
                        '(env and data always run)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # A TERM (a runner's time limit) ends the check through its finally:
    # the running step is stopped and the report and logs are written.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    check = Check(args)
    code = check.run()
    print(format_report(check.report), end='')
    sys.exit(code)


if __name__ == '__main__':
    main()
