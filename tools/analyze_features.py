"""Compactness, separability and a PCA picture of a model's decode features.

For any trained segmentor (SAR or plain) and the val split of its config:
the pixel features its classifier reads (see
sar.mmseg0x.features.collect_features), their compactness (mean distance
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
import json
import math
import os
import os.path as osp
import re

import numpy
import torch
from mmcv.cnn.utils import revert_sync_batchnorm
from mmcv.runner import CheckpointLoader, load_state_dict
from mmcv.utils import Config, DictAction

import sar  # noqa: F401  registers SAR and applies the torch 2.x shims
from sar.evaluation.features import (anchor_source, feature_stats,
                                     inner_decode_head, pca_2d, pca_project,
                                     plot_pca, semantic_anchors)
from sar.mmseg0x.features import collect_features
from sar.mmseg0x.runtime import adapt_cfg_to_machine

# Legend entry of the stars, by the SARHead's anchor_source.
ANCHOR_LABELS = dict(embedded='semantic anchors', prototype='prototypes')


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
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    return parser.parse_args()


def load_weights(model, path):
    """mmcv's checkpoint loading, strict but for non-persistent buffers.

    mmcv's save_checkpoint writes non-persistent buffers too (its
    get_state_dict keeps every buffer, for BN); they are not weights, and a
    strict load would refuse them. Anything else that does not match is an
    error: features of a half-loaded model would be meaningless.
    """
    checkpoint = CheckpointLoader.load_checkpoint(path, map_location='cpu')
    state = checkpoint.get('state_dict', checkpoint)
    transient = {f'{name}.{buf}' if name else buf
                 for name, module in model.named_modules()
                 for buf in module._non_persistent_buffers_set}
    state = {re.sub(r'^module\.', '', k): v for k, v in state.items()}
    load_state_dict(model, {k: v for k, v in state.items()
                            if k not in transient}, strict=True)


def build(args, cfg):
    from mmseg.datasets import build_dataloader, build_dataset
    from mmseg.models import build_segmentor

    dataset = build_dataset(cfg.data[args.split], dict(test_mode=True))
    loader = build_dataloader(dataset, samples_per_gpu=1,
                              workers_per_gpu=cfg.data.get(
                                  'workers_per_gpu', 0),
                              dist=False, shuffle=False,
                              persistent_workers=False)
    cfg.model.pretrained = None
    cfg.model.train_cfg = None
    model = build_segmentor(cfg.model, test_cfg=cfg.get('test_cfg'))
    model = revert_sync_batchnorm(model)
    load_weights(model, args.checkpoint)
    return model.to(args.device).eval(), loader


def _finite(x):
    """JSON has no NaN/inf: None instead."""
    return x if isinstance(x, float) and math.isfinite(x) else None


def main():
    args = parse_args()
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    adapt_cfg_to_machine(cfg)
    out_dir = args.out_dir or osp.join(
        'work_dirs', 'features', osp.splitext(osp.basename(args.config))[0])
    os.makedirs(out_dir, exist_ok=True)

    model, loader = build(args, cfg)
    head = inner_decode_head(model)
    ignore = head.ignore_index
    classes = list(loader.dataset.CLASSES)
    palette = loader.dataset.PALETTE
    feats, labels, num_images = collect_features(
        model, loader, ignore_index=ignore, max_images=args.max_images,
        max_pixels_per_class=args.max_pixels_per_class or None,
        seed=args.seed)
    stats = feature_stats(feats, labels, head.num_classes, ignore)

    sar_state = semantic_anchors(model)
    stars = ANCHOR_LABELS.get(anchor_source(model), 'semantic anchors')
    anchors_2d = None
    anchors_note = 'no semantic anchors (not a SAR model)'
    if sar_state is not None:
        anchors_note = (f'{stars} (EMA) marked' if sar_state[1] else
                        f'SAR model, {stars} not yet set (gate never '
                        'opened): not marked')
    pca = None
    png = npz = None
    if len(feats) >= 2:
        pca = pca_2d(feats)
        if sar_state is not None and sar_state[1]:
            anchors_2d = pca_project(sar_state[0].cpu(), pca)
        fig = plot_pca(
            pca.coords, labels, classes, palette, anchors_2d,
            title=f'{osp.basename(args.config)}\ndecode features, PCA',
            anchors_label=stars)
        png = osp.join(out_dir, 'features_pca.png')
        fig.savefig(png)
        npz = osp.join(out_dir, 'features_pca.npz')
        numpy.savez(npz, coords=pca.coords.float().numpy(),
                    labels=labels.numpy(),
                    anchors=numpy.zeros((0, 2), numpy.float32)
                    if anchors_2d is None else anchors_2d.float().numpy(),
                    explained=pca.explained.numpy())

    counts = stats['class_counts'].tolist()
    closest = stats['closest_pair']
    result = dict(
        config=args.config,
        checkpoint=args.checkpoint,
        split=args.split,
        num_images=num_images,
        num_pixels=len(labels),
        feature_channels=int(feats.shape[1]),
        max_pixels_per_class=args.max_pixels_per_class or None,
        classes=classes,
        class_pixels=counts,
        compactness=_finite(stats['compactness']),
        separability=_finite(stats['separability']),
        separability_ratio=_finite(stats['separability_ratio']),
        mean_distance_to_class_mean=_finite(stats['intra']),
        mean_distance_between_class_means=_finite(stats['inter']),
        closest_classes=None if closest is None else
        [classes[closest[0]], classes[closest[1]]],
        class_spread=[_finite(v) for v in stats['class_spread'].tolist()],
        pca_explained_variance=None if pca is None else
        pca.explained.tolist(),
        anchors=dict(present=sar_state is not None,
                     initialised=bool(sar_state and sar_state[1]),
                     marked=anchors_2d is not None,
                     source=anchor_source(model)),
        png=png, npz=npz)
    out_json = osp.join(out_dir, 'features.json')
    with open(out_json, 'w') as f:
        json.dump(result, f, indent=2)

    present = sum(c > 0 for c in counts)
    print(f'{num_images} images, {len(labels)} pixel features of '
          f'{feats.shape[1]} channels, {present}/{len(classes)} classes '
          f'present (at most {args.max_pixels_per_class or "all"} pixels '
          'per class)')
    print(f'compactness:  {stats["compactness"]:.4f}  (mean distance to '
          f'class mean {stats["intra"]:.4f} / mean distance between class '
          f'means {stats["inter"]:.4f}; lower is tighter)')
    pair = '' if closest is None else \
        f'  (closest: {classes[closest[0]]} / {classes[closest[1]]})'
    print(f'separability: {stats["separability"]:.4f}{pair}')
    print(f'separability ratio: {stats["separability_ratio"]:.4f}  '
          '(separability / mean distance to class mean; higher is further '
          'apart, free of the features\' scale)')
    print(f'PCA: {anchors_note}')
    print(f'wrote {out_json}' + (f', {png} and {npz}' if png else ''))


if __name__ == '__main__':
    main()
