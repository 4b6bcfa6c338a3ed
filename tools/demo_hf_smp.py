"""SAR against its baseline on DigitScenes-LT, outside OpenMMLab, on the CPU.

Writes DigitScenes-LT once (sar.data.make_digitscenes), then trains, with
and without SAR (same seed, data and schedule): a small SegFormer with
transformers' Trainer (sar.transformers.demo) and an smp FPN with a plain
loop (sar.smp.demo). Scores the validation predictions with scikit-learn's
``jaccard_score`` (per-class IoU, macro mean over the K classes) and prints,
per framework, ``mIoU baseline B SAR S (gain +G)``.

    python tools/demo_hf_smp.py                 # four trainings of 400 steps
    python tools/demo_hf_smp.py --steps 10 --num-train 64 --num-val 20

The second is a smoke run (about 35 s on two busy cores): its numbers mean
nothing. The first's numbers have not been measured yet.
"""
import argparse
import os.path as osp
import time

import numpy as np

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data-dir', default='data/digitscenes-lt-small')
    parser.add_argument('--work-dir', default='work_dirs/demo_hf_smp')
    parser.add_argument('--num-train', type=int, default=600)
    parser.add_argument('--num-val', type=int, default=110)
    parser.add_argument('--steps', type=int, default=400,
                        help='optimizer steps of each training')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--frameworks', nargs='+',
                        default=['transformers', 'smp'],
                        choices=['transformers', 'smp'])
    return parser.parse_args()


def miou(pred, labels, num_classes, ignore_index=255):
    """mIoU in percent: scikit-learn's macro Jaccard over labelled pixels."""
    from sklearn.metrics import jaccard_score
    keep = labels.ravel() != ignore_index
    return 100 * jaccard_score(labels.ravel()[keep], pred.ravel()[keep],
                               labels=list(range(num_classes)),
                               average='macro', zero_division=0)


def main():
    args = parse_args()
    from sar.data.arrays import read_split
    from sar.data.digitscenes import DIGITSCENES_CLASSES, make_digitscenes
    from sar.evaluation.report import summary_line

    data = osp.join(ROOT, args.data_dir)
    make_digitscenes(data, num_train=args.num_train, num_val=args.num_val,
                     seed=args.seed)
    train = read_split(data, 'train')
    val_images, val_labels = read_split(data, 'val')
    k = len(DIGITSCENES_CLASSES)
    lines = []
    for framework in args.frameworks:
        scores = {}
        for use_sar in (False, True):
            start = time.time()
            if framework == 'transformers':
                from sar.transformers.demo import train_segformer
                pred = train_segformer(
                    train, val_images, k, use_sar, args.steps,
                    osp.join(ROOT, args.work_dir, f'segformer_sar{use_sar:d}'),
                    seed=args.seed)
            else:
                from sar.smp.demo import train_fpn
                pred = train_fpn(train, val_images, k, use_sar, args.steps,
                                 seed=args.seed)
            scores[use_sar] = miou(pred, np.asarray(val_labels), k)
            print(f'{framework} {"SAR" if use_sar else "baseline"}: mIoU '
                  f'{scores[use_sar]:.2f} ({time.time() - start:.0f} s)',
                  flush=True)
        name = 'SegFormer (Trainer)' if framework == 'transformers' else \
            'smp FPN (plain loop)'
        lines.append(f'{name}: {summary_line(scores[False], scores[True])}')
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
