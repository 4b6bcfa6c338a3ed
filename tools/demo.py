"""`make demo`: SAR against its baseline on DigitScenes-LT, on the CPU.

Writes the DigitScenes-LT data set once (tools/prepare_digitscenes.py's
defaults: long-tailed training digits, balanced validation), trains the
baseline and its SAR twin (same seed and schedule) side by side (one thread
each on two cores; --jobs 1 for one after the other), tests each with the
test tool as soon as its training ends, and prints mmseg's per-class IoU
side by side with head and tail means, then a picture of validation scenes
with tail digits. The last line is, for scripts,
``mIoU baseline B SAR S (gain +G)``.

Runs through the installed mmseg generation's own commands: this project's
tools/train.py and tools/test.py under mmseg 0.30 (``make demo``, configs/
demo), mmseg's shipped tools under mmseg 1.x (``make demo-mmseg1``,
configs/mmseg1x/demo); see sar.mmseg0x.runs and sar.mmseg1x.runs.
"""
import argparse
import os
import os.path as osp
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DATA = 'data/digitscenes-lt'  # the configs' data_root, relative to ROOT


def _runs():
    """The installed mmseg generation's commands and result files."""
    import sar
    if sar.mmseg_generation() == 1:
        from sar.mmseg1x import runs
    else:
        from sar.mmseg0x import runs
    return runs


RUNS = _runs()
CONFIGS = RUNS.DEMO_CONFIGS
DEFAULT_WORK_DIR = RUNS.DEMO_WORK_DIR


def start_tool(cmd, out, threads):
    """A tool of tools/ in the background, one ``threads`` each, its output
    in ``out`` (relative to ROOT)."""
    print('+', ' '.join(cmd), '>', out, f'(OMP_NUM_THREADS={threads})',
          flush=True)
    with open(osp.join(ROOT, out), 'w') as f:
        return subprocess.Popen(
            [sys.executable, *cmd], cwd=ROOT, stdout=f,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, OMP_NUM_THREADS=str(threads)))


def train_command(config, work_dir, args):
    return RUNS.train_command(config, work_dir, args.seed, args.iters)


def test_command(config, work_dir):
    return RUNS.test_command(config, work_dir)


def logged_iter(work_dir):
    """The last iteration mmseg's training log of ``work_dir`` has reached."""
    entries = RUNS.train_log(osp.join(ROOT, work_dir))
    return entries[-1]['iter'] if entries else 0


def train_and_test_all(work_dirs, args, start):
    """Train then test every config, ``args.jobs`` methods at a time.

    Each method's tools/test.py starts as soon as its own training ends, in
    the slot the training leaves, so a baseline that finishes first is
    tested while SAR still trains. Every tool gets cores/jobs threads (set
    through OMP_NUM_THREADS): two single-threaded processes side by side
    use two cores better than one two-threaded one after the other (small
    convolutions scale poorly over threads), and, unlike OpenMP threads
    that wait on each other at every operation, do not collapse when other
    processes share the cores (a 2-thread tools/test.py took 138 s instead
    of 8 s for the 200 val scenes on two cores shared with other work).

    Returns:
        dict: method -> mmseg's evaluation dict of tools/test.py.
    """
    threads = max(1, len(os.sched_getaffinity(0)) // args.jobs)
    iters = {m: args.iters or RUNS.schedule(osp.join(ROOT, c))[1]
             for m, c in CONFIGS.items()}
    pending = list(CONFIGS.items())
    running = {}  # method -> [stage, process, output file]
    metrics = {}
    last_report = time.time()
    while pending or running:
        while pending and len(running) < args.jobs:
            method, config = pending.pop(0)
            work = work_dirs[method]
            os.makedirs(osp.join(ROOT, work), exist_ok=True)
            for old in RUNS.stale_files(osp.join(ROOT, work)):
                os.remove(old)
            out = osp.join(work, 'train.out')
            running[method] = ['train', start_tool(
                train_command(config, work, args), out, threads), out]
        # Polled every second, so that a test starts as soon as its
        # training ends; reported every progress_every seconds.
        time.sleep(min(1.0, args.progress_every))
        if time.time() - last_report >= args.progress_every:
            last_report = time.time()
            stages = ', '.join(
                f'{m} {logged_iter(work_dirs[m])}/{iters[m]} iterations'
                if stage == 'train' else f'{m} testing'
                for m, (stage, _, _) in running.items())
            print(f'[demo] {time.time() - start:.0f} s: {stages}',
                  flush=True)
        for method, (stage, proc, out) in list(running.items()):
            if proc.poll() is None:
                continue
            if proc.returncode != 0:
                with open(osp.join(ROOT, out)) as f:
                    print(f.read()[-3000:])
                sys.exit(f'[demo] {method} {stage} failed, see {out}')
            work = work_dirs[method]
            if stage == 'train':
                out = osp.join(work, 'test.out')
                running[method] = ['test', start_tool(
                    test_command(CONFIGS[method], osp.join(ROOT, work)), out,
                    threads), out]
                continue
            del running[method]
            metrics[method] = RUNS.read_metrics(osp.join(ROOT, work))
            print(f'[demo] {time.time() - start:.0f} s: {method} tested, '
                  f'mIoU {100 * metrics[method]["mIoU"]:.2f} (mmseg\'s '
                  f'tables in {out})', flush=True)
    return metrics


def tail_scenes(root, tail_ids, count):
    """The first ``count`` val scenes (by file name) holding a tail digit."""
    import numpy as np
    from PIL import Image
    found = []
    for name in sorted(os.listdir(osp.join(root, 'ann_dir', 'val'))):
        label = np.asarray(Image.open(osp.join(root, 'ann_dir', 'val', name)))
        if np.isin(label, tail_ids).any():
            found.append(name)
            if len(found) == count:
                break
    return found


def picture(names, work_dirs, out_file, threads):
    """image | ground truth | baseline | SAR for the named val scenes."""
    import numpy as np
    import torch
    from PIL import Image

    torch.set_num_threads(threads)  # as the tools: no OpenMP contention

    from sar.data import DIGITSCENES_CLASSES, DIGITSCENES_PALETTE
    from sar.evaluation.visualize import comparison_figure
    root = osp.join(ROOT, DATA)
    paths = [osp.join(root, 'img_dir', 'val', n) for n in names]
    images = [np.asarray(Image.open(p).convert('RGB')) for p in paths]
    gts = [np.asarray(Image.open(osp.join(root, 'ann_dir', 'val', n)))
           for n in names]
    predictions = {}
    for method, config in CONFIGS.items():
        work = osp.join(ROOT, work_dirs[method])
        predictions[method] = RUNS.predict(osp.join(ROOT, config),
                                           RUNS.checkpoint(work), paths)
    fig = comparison_figure(images, gts, predictions, DIGITSCENES_PALETTE,
                            class_names=list(DIGITSCENES_CLASSES),
                            row_titles=names)
    fig.savefig(out_file, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--work-dir', default=DEFAULT_WORK_DIR)
    parser.add_argument('--iters', type=int,
                        help='training iterations (default: the configs\')')
    parser.add_argument('--seed', type=int,
                        help='training seed (default: the configs\')')
    parser.add_argument('--num-pictures', type=int, default=4,
                        help='val scenes with tail digits in the picture')
    parser.add_argument('--jobs', type=int, default=2,
                        help='methods trained and tested at a time, each '
                        'with cores/jobs threads (1: one after the other)')
    parser.add_argument('--progress-every', type=float, default=30,
                        help='seconds between progress lines')
    args = parser.parse_args()
    start = time.time()

    from sar.data import (DIGITSCENES_CLASSES, head_tail_classes,
                          make_digitscenes)
    from sar.evaluation.report import (comparison_table, gate_summary,
                                       summary_line)
    print(f'[demo] DigitScenes-LT in {DATA} (written once)', flush=True)
    meta = make_digitscenes(osp.join(ROOT, DATA))
    print(f'[demo] train digits 0-9: {meta["train"]["instances"]} '
          f'instances; val: {meta["val"]["instances"]}', flush=True)

    work_dirs = {m: osp.join(args.work_dir, m.lower()) for m in CONFIGS}
    print(f'[demo] training and testing {" and ".join(CONFIGS)}, '
          f'{args.jobs} at a time; mmseg\'s logs in {args.work_dir}/*/',
          flush=True)
    metrics = train_and_test_all(work_dirs, args, start)

    head, tail = head_tail_classes(meta['train']['instances'])
    table, rows = comparison_table(metrics, DIGITSCENES_CLASSES, head, tail)
    gate = gate_summary(RUNS.train_log(osp.join(ROOT, work_dirs['SAR'])))
    out_file = osp.join(args.work_dir, 'digitscenes_val_tail.png')
    names = tail_scenes(osp.join(ROOT, DATA),
                        [DIGITSCENES_CLASSES.index(c) for c in tail],
                        args.num_pictures)
    picture(names, work_dirs, osp.join(ROOT, out_file),
            max(1, len(os.sched_getaffinity(0)) // args.jobs))

    seed = args.seed if args.seed is not None else RUNS.schedule(
        osp.join(ROOT, CONFIGS['SAR']))[0]
    print(f'\nDigitScenes-LT val (balanced, {meta["val"]["num_scenes"]} '
          f'scenes), IoU in %, from mmseg\'s evaluation; one seed ({seed}) '
          'for both; head/tail: the more/less frequent half of the digits '
          'in training.')
    print(table)
    if gate['first_open_iter'] is None:
        print('SAR: the anchor gate never opened (no pull toward semantic '
              'anchors); see decode.sar.anchor_acc in the training log '
              f'under {work_dirs["SAR"]}')
    else:
        print(f'SAR: anchor gate first open by iteration '
              f'{gate["first_open_iter"]} (logged every interval); last '
              f'anchor accuracy {gate["last_anchor_acc"]:.2f}, last pull '
              f'loss {gate["last_pull"]:.4f}')
    print(f'Picture (image | ground truth | baseline | SAR, val scenes with '
          f'tail digits): {out_file}')
    print(f'Total time {time.time() - start:.0f} s')
    print(summary_line(rows['baseline']['mIoU'], rows['SAR']['mIoU']))


if __name__ == '__main__':
    main()
