"""What tools/analyze_features.py computes, writes and prints once a
generation's glue has collected a model's pixel features
(:func:`sar.mmseg0x.features.collect_features`,
:func:`sar.mmseg1x.features.collect_features`).

The statistics and the PCA are :mod:`sar.evaluation.features`'s; this
module puts them in the tool's files (``features.json``,
``features_pca.png``, ``features_pca.npz``) and lines.
"""
import json
import math
import os.path as osp
import re

import numpy

from .features import (anchor_source, feature_stats, inner_decode_head,
                       pca_2d, pca_project, plot_pca, semantic_anchors)

# Legend entry of the stars, by the SARHead's anchor_source.
ANCHOR_LABELS = dict(embedded='semantic anchors', prototype='prototypes')


def weights_to_load(model, state):
    """A checkpoint's ``state_dict`` as ``model`` loads it strictly.

    The ``module.`` prefix of a wrapped model's checkpoint is dropped, and
    so are non-persistent buffers, which an mmcv 1.x checkpoint may hold
    (its ``get_state_dict`` keeps every buffer; mmengine's does not): they
    are not weights, and a strict load would refuse them. Anything else
    that does not match is left for the strict load to refuse: features of
    a half-loaded model would be meaningless.
    """
    transient = {f'{name}.{buf}' if name else buf
                 for name, module in model.named_modules()
                 for buf in module._non_persistent_buffers_set}
    state = {re.sub(r'^module\.', '', k): v for k, v in state.items()}
    return {k: v for k, v in state.items() if k not in transient}


def _finite(x):
    """JSON has no NaN/inf: None instead."""
    return x if isinstance(x, float) and math.isfinite(x) else None


def analyze(model, feats, labels, num_images, classes, palette, out_dir,
            source):
    """Statistics, PCA picture and files of collected features.

    Args:
        model (nn.Module): the segmentor they came from (its head's
            ``num_classes`` and ``ignore_index``, SAR's anchors if any).
        feats (Tensor): (N, D) pixel features; labels (Tensor): (N,).
        num_images (int): images they were collected from.
        classes (list[str]), palette (list): the data set's.
        out_dir (str): where the three files go (it exists).
        source (dict): ``config``, ``checkpoint``, ``split`` and
            ``max_pixels_per_class``, recorded in the json as given.

    Returns:
        tuple: the json's dict and the lines to print.
    """
    head = inner_decode_head(model)
    stats = feature_stats(feats, labels, head.num_classes, head.ignore_index)
    sar_state = semantic_anchors(model)
    stars = ANCHOR_LABELS.get(anchor_source(model), 'semantic anchors')
    anchors_2d = None
    anchors_note = 'no semantic anchors (not a SAR model)'
    if sar_state is not None:
        anchors_note = (f'{stars} (EMA) marked' if sar_state[1] else
                        f'SAR model, {stars} not yet set (gate never '
                        'opened): not marked')
    pca = png = npz = None
    if len(feats) >= 2:
        pca = pca_2d(feats)
        if sar_state is not None and sar_state[1]:
            anchors_2d = pca_project(sar_state[0].cpu(), pca)
        fig = plot_pca(
            pca.coords, labels, classes, palette, anchors_2d,
            title=f'{osp.basename(source["config"])}\ndecode features, '
            'PCA', anchors_label=stars)
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
        config=source['config'],
        checkpoint=source['checkpoint'],
        split=source['split'],
        num_images=num_images,
        num_pixels=len(labels),
        feature_channels=int(feats.shape[1]),
        max_pixels_per_class=source['max_pixels_per_class'],
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
    limit = source['max_pixels_per_class'] or 'all'
    pair = '' if closest is None else \
        f'  (closest: {classes[closest[0]]} / {classes[closest[1]]})'
    lines = [
        f'{num_images} images, {len(labels)} pixel features of '
        f'{feats.shape[1]} channels, {present}/{len(classes)} classes '
        f'present (at most {limit} pixels per class)',
        f'compactness:  {stats["compactness"]:.4f}  (mean distance to '
        f'class mean {stats["intra"]:.4f} / mean distance between class '
        f'means {stats["inter"]:.4f}; lower is tighter)',
        f'separability: {stats["separability"]:.4f}{pair}',
        f'separability ratio: {stats["separability_ratio"]:.4f}  '
        '(separability / mean distance to class mean; higher is further '
        'apart, free of the features\' scale)',
        f'PCA: {anchors_note}',
        f'wrote {out_json}' + (f', {png} and {npz}' if png else ''),
    ]
    return result, lines
