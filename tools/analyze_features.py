"""Compactness, separability and a PCA picture of a model's decode features.

For any trained segmentor (SAR or plain) and the val split of its config,
under mmseg 0.30 or 1.x (the installed one): the pixel features its
classifier reads (see collect_features of sar.mmseg0x.features and
sar.mmseg1x.features), their compactness (mean distance
to the class mean over the mean distance between class means; lower is
tighter), separability (smallest distance between two class means, in the
features' units) and separability ratio (that distance over the mean
distance to the class mean: free of the features' scale; higher is
further apart), and a 2-D PCA scatter coloured by class, with SAR's
semantic anchors (or the prototype ablation's prototypes) as stars when
the model has them. Writes ``features.json``, ``features_pca.png`` and
``features_pca.npz`` (the scatter's coordinates, labels and stars, for
composing pictures) to --out-dir and prints the numbers.
"""
import argparse
import os
import os.path as osp

import torch

import sar  # registers SAR and applies the shims of mmseg's generation
from sar.evaluation.feature_analysis import analyze
from sar.evaluation.features import inner_decode_head

if sar.mmseg_generation() == 1:
    from sar.mmseg1x import features as GLUE
else:
    from sar.mmseg0x import features as GLUE


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out-dir', help='where to write features.json, '
                        'features_pca.png and features_pca.npz (default: '
                        'work_dirs/features/<config name>)')
    parser.add_argument('--split', default='val', choices=['val', 'test'],
                        help='data split of the config to read')
    parser.add_argument('--max-images', type=int,
                        help='use only the first N images of the split')
    parser.add_argument('--max-pixels-per-class', type=int, default=2000,
                        help='uniform random sample of at most this many '
                        'pixels per class (0: all pixels)')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the pixel sample')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available()
                        else 'cpu', help='cpu or cuda (default: cuda if '
                        'present)')
    parser.add_argument('--cfg-options', nargs='+', action=GLUE.DictAction,
                        help='override config settings, key=value')
    return parser.parse_args()


def main():
    args = parse_args()
    cfg = GLUE.load_config(args.config, args.cfg_options)
    out_dir = args.out_dir or osp.join(
        'work_dirs', 'features', osp.splitext(osp.basename(args.config))[0])
    os.makedirs(out_dir, exist_ok=True)

    model, data, classes, palette = GLUE.build(cfg, args.split,
                                               args.checkpoint, args.device)
    limit = args.max_pixels_per_class or None
    feats, labels, num_images = GLUE.collect_features(
        model, data, ignore_index=inner_decode_head(model).ignore_index,
        max_images=args.max_images, max_pixels_per_class=limit,
        seed=args.seed)
    source = dict(config=args.config, checkpoint=args.checkpoint,
                  split=args.split, max_pixels_per_class=limit)
    _, lines = analyze(model, feats, labels, num_images, classes, palette,
                       out_dir, source)
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
