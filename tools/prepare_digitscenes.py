"""Write DigitScenes-LT (sar.data.make_digitscenes) in mmseg's layout.

Scenes of scikit-learn's real handwritten digits on textured backgrounds;
long-tailed training split, balanced validation split. Needs scikit-learn
(requirements/demo.txt). Deterministic: the same flags give the same files.
"""
import argparse
import time

from sar.data import make_digitscenes


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out-dir', default='data/digitscenes-lt')
    parser.add_argument('--num-train', type=int, default=2000,
                        help='training scenes')
    parser.add_argument('--num-val', type=int, default=200,
                        help='validation (and test) scenes')
    parser.add_argument('--size', type=int, default=64,
                        help='scene side in pixels')
    parser.add_argument('--digits-per-scene', type=int, default=3)
    parser.add_argument('--imbalance-ratio', type=float, default=50.0,
                        help='train instances of the most over the least '
                        'frequent digit')
    parser.add_argument('--val-per-class', type=int, default=50,
                        help='glyphs per digit kept for validation')
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args()


def main():
    args = parse_args()
    start = time.time()
    meta = make_digitscenes(
        args.out_dir, num_train=args.num_train, num_val=args.num_val,
        size=args.size, digits_per_scene=args.digits_per_scene,
        imbalance_ratio=args.imbalance_ratio,
        val_per_class=args.val_per_class, seed=args.seed)
    print(f'DigitScenes-LT in {args.out_dir} ({time.time() - start:.1f} s)')
    for split in ('train', 'val'):
        info = meta[split]
        print(f'  {split}: {info["num_scenes"]} scenes, '
              f'{len(info["glyph_indices"])} distinct glyphs, '
              f'instances per digit 0-9: {info["instances"]}')


if __name__ == '__main__':
    main()
