"""SAR against its baseline on DigitScenes-LT, outside OpenMMLab, on the CPU.

``make demo-transformers``: a small SegFormer trained by transformers'
``Trainer`` (sar.transformers.demo); ``make demo-smp``: an smp FPN trained
by a plain loop (sar.smp.demo). Each trains the baseline and its SAR twin
(same seed, data and schedule) side by side, one thread each on two cores
(``--jobs 1``: one after the other), on the DigitScenes-LT data set of
``make demo`` (written once), then scores both on its balanced val split
and prints the per-class IoU side by side with head and tail means. The
last line is, for scripts, ``mIoU baseline B SAR S (gain +G)``.

    python tools/demo_hf_smp.py transformers
    python tools/demo_hf_smp.py smp --steps 20 --data-dir data/ds-small \
        --num-train 64 --num-val 20                 # a smoke run

IoU is computed from the predictions at full resolution, as mmseg
evaluates (sar.evaluation.iou).
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
NAMES = dict(transformers='SegFormer, transformers Trainer (AdamW)',
             smp='smp FPN (timm resnet10t), plain loop')
OPTIMIZER_NAMES = dict(sgd='SGD', adam='Adam')
METHODS = ('baseline', 'SAR')
# About 8 minutes each on two cores (docs/results.md): the small SegFormer
# runs 0.05 s a step there, the FPN 0.13 s.
STEPS = dict(transformers=9000, smp=3000)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('framework', choices=sorted(NAMES))
    parser.add_argument('--steps', type=int,
                        help='optimizer steps of each training (default: '
                        '9000 for transformers, 3000 for smp)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--optimizer', choices=['sgd', 'adam'],
                        help='smp only: the optimizer of the plain loop '
                        '(sar.smp.demo.build_optimizer; default sgd)')
    parser.add_argument('--data-dir', default='data/digitscenes-lt',
                        help='DigitScenes-LT, written there once (default: '
                        'the data of `make demo`)')
    parser.add_argument('--num-train', type=int,
                        help='training scenes of a new data set (default: '
                        'make_digitscenes\')')
    parser.add_argument('--num-val', type=int,
                        help='val scenes of a new data set')
    parser.add_argument('--work-dir',
                        help='default: work_dirs/demo-<framework>')
    parser.add_argument('--jobs', type=int, default=2,
                        help='trainings at a time, each with cores/jobs '
                        'threads (1: one after the other)')
    parser.add_argument('--method', choices=METHODS,
                        help='train this one only, in this process (what '
                        'the demo starts for each)')
    args = parser.parse_args(argv)
    if args.optimizer and args.framework != 'smp':
        parser.error('--optimizer is for smp; the transformers demo uses '
                     "Trainer's own (AdamW)")
    args.optimizer = args.optimizer or 'sgd'
    if (args.num_train or args.num_val) and \
            args.data_dir == parser.get_default('data_dir'):
        parser.error('--num-train / --num-val would rewrite the data of '
                     '`make demo`: give another --data-dir')
    if args.steps is None:
        args.steps = STEPS[args.framework]
    if args.work_dir is None:
        args.work_dir = osp.join('work_dirs', f'demo-{args.framework}')
    return args


def describe(args):
    if args.framework == 'smp':
        return f'{NAMES["smp"]} ({OPTIMIZER_NAMES[args.optimizer]})'
    return NAMES[args.framework]


def train_one(args):
    """Train ``args.method``; write its predictions and log to its folder."""
    import numpy as np
    import torch

    from sar.data.arrays import read_split
    from sar.data.digitscenes import DIGITSCENES_CLASSES
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '1')))
    out = osp.join(ROOT, args.work_dir, args.method)
    os.makedirs(out, exist_ok=True)
    train = read_split(osp.join(ROOT, args.data_dir), 'train')
    val_images, _ = read_split(osp.join(ROOT, args.data_dir), 'val')
    k, use_sar = len(DIGITSCENES_CLASSES), args.method == 'SAR'
    if args.framework == 'transformers':
        from sar.transformers.demo import train_segformer
        pred, log = train_segformer(train, val_images, k, use_sar,
                                    args.steps, osp.join(out, 'trainer'),
                                    seed=args.seed)
    else:
        from sar.smp.demo import train_fpn
        pred, log = train_fpn(train, val_images, k, use_sar, args.steps,
                              seed=args.seed, optimizer=args.optimizer)
    np.save(osp.join(out, 'pred.npy'), pred.astype(np.uint8))
    with open(osp.join(out, 'log.json'), 'w') as f:
        json.dump(log, f)


def train_all(args, start):
    """Each method in its own process, ``args.jobs`` at a time; if one
    fails, the others are stopped."""
    running = {}
    try:
        _train_all(args, start, running)
    finally:
        for proc, _ in running.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait()


def _train_all(args, start, running):
    threads = max(1, len(os.sched_getaffinity(0)) // args.jobs)
    pending = list(METHODS)
    while pending or running:
        while pending and len(running) < args.jobs:
            method = pending.pop(0)
            folder = osp.join(ROOT, args.work_dir, method)
            os.makedirs(folder, exist_ok=True)
            for old in ('pred.npy', 'log.json'):
                if osp.exists(osp.join(folder, old)):
                    os.remove(osp.join(folder, old))
            cmd = [sys.executable, osp.abspath(__file__), args.framework,
                   '--steps', str(args.steps), '--seed', str(args.seed),
                   '--data-dir', args.data_dir, '--work-dir', args.work_dir,
                   '--method', method]
            if args.framework == 'smp':
                cmd += ['--optimizer', args.optimizer]
            out = osp.join(args.work_dir, method, 'train.out')
            print('+', ' '.join(cmd[1:]), '>', out,
                  f'(OMP_NUM_THREADS={threads})', flush=True)
            with open(osp.join(ROOT, out), 'w') as f:
                running[method] = (subprocess.Popen(
                    cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                    env=dict(os.environ, OMP_NUM_THREADS=str(threads))), out)
        time.sleep(1)
        for method, (proc, out) in list(running.items()):
            if proc.poll() is None:
                continue
            if proc.returncode != 0:
                with open(osp.join(ROOT, out)) as f:
                    print(f.read()[-3000:])
                sys.exit(f'[demo] {method} failed, see {out}')
            del running[method]
            print(f'[demo] {time.time() - start:.0f} s: {method} trained',
                  flush=True)


def main(argv=None):
    args = parse_args(argv)
    if args.method:
        return train_one(args)
    start = time.time()
    import numpy as np

    from sar.data import DIGITSCENES_CLASSES, head_tail_classes
    from sar.data.arrays import read_split
    from sar.data.digitscenes import make_digitscenes
    from sar.evaluation.iou import iou_metrics
    from sar.evaluation.report import (comparison_table, gate_summary,
                                       summary_line)
    print(f'[demo] DigitScenes-LT in {args.data_dir} (written once)',
          flush=True)
    sizes = {k: v for k, v in (('num_train', args.num_train),
                               ('num_val', args.num_val)) if v is not None}
    meta = make_digitscenes(osp.join(ROOT, args.data_dir), **sizes)
    print(f'[demo] training {describe(args)}, baseline and SAR, '
          f'{args.steps} steps, {args.jobs} at a time; logs in '
          f'{args.work_dir}/*/', flush=True)
    train_all(args, start)

    _, val_labels = read_split(osp.join(ROOT, args.data_dir), 'val')
    folders = {m: osp.join(ROOT, args.work_dir, m) for m in METHODS}
    metrics = {m: iou_metrics(np.load(osp.join(f, 'pred.npy')), val_labels,
                              DIGITSCENES_CLASSES)
               for m, f in folders.items()}
    head, tail = head_tail_classes(meta['train']['instances'])
    table, rows = comparison_table(metrics, DIGITSCENES_CLASSES, head, tail)
    with open(osp.join(folders['SAR'], 'log.json')) as f:
        gate = gate_summary(json.load(f), prefix='')
    print(f'\nDigitScenes-LT val (balanced, {meta["val"]["num_scenes"]} '
          f'scenes), IoU in %; {describe(args)}, {args.steps} steps, '
          f'one seed ({args.seed}) for both; head/tail: the more/less '
          'frequent half of the digits in training.')
    print(table)
    if gate['first_open_iter'] is None:
        print('SAR: the anchor gate never opened (no pull toward semantic '
              f'anchors); see sar.anchor_acc in {args.work_dir}/SAR/log.json')
    else:
        print(f'SAR: anchor gate first open by step '
              f'{gate["first_open_iter"]} (logged every 50); last anchor '
              f'accuracy {gate["last_anchor_acc"]:.2f}, last pull loss '
              f'{gate["last_pull"]:.4f}')
    print(f'Total time {time.time() - start:.0f} s')
    print(summary_line(rows['baseline']['mIoU'], rows['SAR']['mIoU']))


if __name__ == '__main__':
    main()
