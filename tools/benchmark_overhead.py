"""What SAR costs: train-step time, peak memory and inference time vs baseline.

Builds the baseline config and its SAR twin with the same weights (the
baseline's state dict loaded into the SAR model, whose head sits under
``decode_head.head.``), then measures, in one run, on one fixed random batch:

- **train-step time**: forward, backward and optimizer step (mmseg 0.30's
  ``train_step``, then ``zero_grad``/``backward``/``step`` as mmcv's
  OptimizerHook does; under mmseg 1.x the model's ``train_step`` with the
  config's optimizer wrapper, as mmengine's runner calls it), the models
  taking turns in every step so that machine load hits all alike; the
  median over steps of SAR time / baseline time.
  Wall clock everywhere; on the CPU also process CPU time, which does not
  count the time other processes held the cores (shared machines).
- **peak memory**: each model in its own child process, one after the other.
  On CUDA, ``torch.cuda.max_memory_allocated`` over the training steps
  (weights, gradients, optimizer state and activations). On the CPU, the
  growth of the process's peak RSS (``ru_maxrss``) over the training steps
  beyond its value after building the model: gradients, optimizer state,
  activations and allocator slack, not the weights nor the libraries. The
  children run with a fixed glibc mmap threshold, so that freed tensors
  leave RSS and repeated runs agree to a fraction of a percent.
- **inference time**: test-mode ``simple_test`` (1.x: ``test_step``; the
  config's test_cfg),
  which for SAR must be the wrapped head alone; checked by equal logits of
  ``encode_decode`` before training.

SAR is measured in two states: ``sar_gate_closed`` (fresh anchors and the
gate kept shut by ``update_conf`` = 1 - 1e-6, as in early training: the
projector, anchor CE, gate and EMA run; the pull is skipped and its loss is
a constant zero)
and ``sar_pull_active`` (``pull_mode='after_init'`` by config override and
the semantic anchors forced set, so the pull loss acts in every step: the
expensive case).

Either generation: the installed mmseg picks the configs' folder
(configs/ for 0.30, configs/mmseg1x/ for 1.x) and how a model is built and
stepped (sar.mmseg0x.overhead, sar.mmseg1x.overhead); the measurement is
sar.evaluation.overhead's.

Defaults: the paper's HRNetV2-W48 FCN ADE20K pair (C=150, D=720); input
crop 512 on CUDA, 256 on the CPU (--size); batch 4 on CUDA, 2 on the CPU.
``--smoke`` runs a tiny demo pair at 32 px for 2 steps (for tests).

JSON (--json OUT): ``baseline``, ``sar`` (config paths), ``device``,
``device_name``, ``threads``, ``batch``, ``size``, ``steps``, ``warmup``,
``memory_steps``, ``num_classes``, ``channels``, ``memory_measure`` (what the
memory numbers are), ``targets`` {step_time_ratio, peak_memory_ratio,
inference_time_ratio}, ``ratios`` {sar_gate_closed, sar_pull_active: each
{step_time_ratio, peak_memory_ratio, inference_time_ratio, and on the CPU
step_cpu_time_ratio, inference_cpu_time_ratio}}, ``step_time_s``,
``inference_time_s``, ``step_cpu_time_s``, ``inference_cpu_time_s`` (the last
two null on CUDA) {variant: [seconds per timed step]}, ``peak_memory_bytes``
{variant: bytes}, ``checks`` {inference_logits_equal, gate_stayed_closed,
pull_loss_last {variant: value}}, ``noise`` {baseline_step_spread,
baseline_inference_spread} (interquartile range / median).
"""
import argparse
import json
import os
import os.path as osp
import sys

import torch

import sar  # registers SAR and applies the shims of mmseg's generation
from sar.evaluation.overhead import VARIANTS, child_main, report, run

if sar.mmseg_generation() == 1:
    from sar.mmseg1x import overhead as GLUE
else:
    from sar.mmseg0x import overhead as GLUE
PAPER, ROOT, SMOKE = GLUE.PAPER, GLUE.ROOT, GLUE.SMOKE


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--baseline', help=f'baseline config ({PAPER[0]})')
    parser.add_argument('--sar', help=f'SAR config ({PAPER[1]})')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available()
                        else 'cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--size', type=int,
                        help='square input crop (512 on cuda, 256 on cpu)')
    parser.add_argument('--batch', type=int,
                        help='images per step (4 on cuda, 2 on cpu)')
    parser.add_argument('--steps', type=int, help='timed steps per model '
                        '(60 on cuda, 10 on cpu)')
    parser.add_argument('--warmup', type=int, help='untimed steps first '
                        '(10 on cuda, 2 on cpu)')
    parser.add_argument('--memory-steps', type=int,
                        help='train steps of each memory child process (3)')
    parser.add_argument('--threads', type=int,
                        help='torch CPU threads (default: torch\'s)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--json', help='write the results here')
    parser.add_argument('--smoke', action='store_true', help='tiny demo '
                        'configs, 32 px, 2 steps: checks that it runs')
    # Internal: run one memory measurement and write it to --child-out.
    parser.add_argument('--child', choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument('--child-out', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cuda = args.device == 'cuda'
    if cuda and not torch.cuda.is_available():
        parser.error('--device cuda but torch sees no GPU')
    if args.smoke:
        defaults = dict(baseline=SMOKE[0], sar=SMOKE[1], size=32, batch=2,
                        steps=2, warmup=1, memory_steps=1)
    else:
        defaults = dict(baseline=PAPER[0], sar=PAPER[1],
                        size=512 if cuda else 256, batch=4 if cuda else 2,
                        steps=60 if cuda else 10, warmup=10 if cuda else 2,
                        memory_steps=3)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.baseline = osp.join(ROOT, args.baseline) \
        if not osp.isabs(args.baseline) else args.baseline
    args.sar = osp.join(ROOT, args.sar) if not osp.isabs(args.sar) \
        else args.sar
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        child_main(args, GLUE)
        return
    res = run(args, [sys.executable, osp.abspath(__file__)], GLUE)
    print(report(res))
    if args.json:
        os.makedirs(osp.dirname(osp.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(res, f, indent=2)
        print(f'wrote {args.json}')


if __name__ == '__main__':
    main()
