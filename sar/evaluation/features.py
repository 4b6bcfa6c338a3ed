"""Feature-space metrics and pictures of a segmentor's decode features.

What SAR claims to change is the geometry of the features the classifier
reads: tighter classes (compactness) that sit further apart (separability).
This module measures both on pixel features, projects them to 2-D for a
picture, and aligns label maps with feature maps; each mmseg generation's
glue collects the features of a trained segmentor (SAR or not) from its
data loader with these helpers. Plain torch; models are only duck-typed;
matplotlib is imported by the plotting function alone.

Shape shorthand, used in every docstring below:
    N: pixels, D: feature channels (the classifier's input), C: classes,
    h x w: spatial size of the decode feature map.
Distances are Euclidean (not squared), in the features' own units.
"""
import math
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


def _ratio(num, den):
    """num / den for distances (>= 0): NaN for NaN or 0/0, inf for x/0."""
    if math.isnan(num) or math.isnan(den):
        return math.nan
    if den == 0.0:
        return math.nan if num == 0.0 else math.inf
    return num / den


def feature_stats(feats, labels, num_classes, ignore_index=255):
    """Compactness and separability of labelled features.

    - ``intra``: mean over valid pixels of ``||f - mu_y||``, the distance of
      a feature to the mean of its class.
    - ``inter``: mean over pairs of present classes of ``||mu_i - mu_j||``.
    - ``compactness = intra / inter``: 0 when every feature equals its class
      mean; lower is tighter relative to the spacing of the classes.
    - ``separability = min_{i<j} ||mu_i - mu_j||`` over present classes,
      in the features' units: it grows with their scale.
    - ``separability_ratio = separability / intra``: the same gap in units
      of the mean distance of a feature to its class mean, so scaling (or
      shifting) every feature leaves it unchanged. 0 when two class means
      coincide; larger when the two closest classes sit further apart
      relative to the spread within classes (higher is better separated;
      like compactness, but through the closest pair of means instead of
      the mean pair, and inverted). inf when every feature is on its class
      mean and the means differ; NaN when both are 0.

    Computed in float64. A class is present when it has at least one valid
    pixel; absent classes take no part (their means and spreads are NaN).
    With fewer than two present classes, ``inter``, ``compactness``,
    ``separability`` and ``separability_ratio`` are NaN.

    Args:
        feats (Tensor): pixel features.
        labels (Tensor): class of each pixel, or ``ignore_index``.
        num_classes (int): C.
        ignore_index (int): label of pixels that take no part.

    Shape:
        feats (N, D), labels (N,) integer.

    Returns:
        dict: ``compactness``, ``separability``, ``separability_ratio``,
        ``intra``, ``inter`` (floats), ``closest_pair`` ((i, j) class
        indices of the separability, or None), ``class_means`` (C, D)
        float64, ``class_counts`` (C,) long, ``class_spread`` (C,) float64
        (mean distance to the own class mean, per class).

    Raises:
        ValueError: shapes disagree, or a label is neither ignored nor in
            [0, C).
    """
    labels = labels.reshape(-1)
    if feats.dim() != 2 or feats.shape[0] != labels.shape[0]:
        raise ValueError(f'feats {tuple(feats.shape)} must be (N, D) with N '
                         f'= labels.numel() = {labels.shape[0]}')
    valid = labels != ignore_index
    f = feats.detach()[valid].to(torch.float64)
    y = labels[valid].long()
    if y.numel() and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f'labels must lie in [0, {num_classes}) or equal '
                         f'ignore_index={ignore_index}; found '
                         f'{sorted(set(y.unique().tolist()))[:10]}')
    counts = torch.bincount(y, minlength=num_classes)
    sums = f.new_zeros(num_classes, f.shape[1]).index_add_(0, y, f)
    means = sums / counts[:, None]  # 0/0 = NaN rows for absent classes
    own = (f - means[y]).norm(dim=1)  # (N,)
    spread = f.new_zeros(num_classes).index_add_(0, y, own) / counts
    intra = own.mean().item() if own.numel() else math.nan

    present = torch.nonzero(counts > 0).flatten()
    inter = separability = math.nan
    closest = None
    if present.numel() >= 2:
        m = means[present]
        # The direct formula, not the matmul expansion: exact for equal or
        # close means.
        d = torch.cdist(m, m, compute_mode='donot_use_mm_for_euclid_dist')
        i, j = torch.triu_indices(len(m), len(m), offset=1)
        pairs = d[i, j]
        inter = pairs.mean().item()
        k = int(pairs.argmin())
        separability = pairs[k].item()
        closest = (int(present[i[k]]), int(present[j[k]]))
    return dict(compactness=_ratio(intra, inter), separability=separability,
                separability_ratio=_ratio(separability, intra),
                intra=intra, inter=inter, closest_pair=closest,
                class_means=means, class_counts=counts, class_spread=spread)


class PCA2D(NamedTuple):
    """Result of :func:`pca_2d`.

    Shape:
        coords (N, 2), mean (D,), components (2, D), explained (2,); float64.
    """
    coords: torch.Tensor
    mean: torch.Tensor
    components: torch.Tensor
    explained: torch.Tensor


def pca_2d(feats):
    """The two principal components of a set of features.

    Eigenvectors of the (D, D) covariance, so the cost grows with D, not N.
    Each component's sign is fixed (its largest-magnitude entry positive) so
    that the same data always give the same picture.

    Args:
        feats (Tensor): the points, e.g. pixel features.

    Shape:
        feats (N, D) with D >= 2 -> :class:`PCA2D`: coords (N, 2) of the
        centred points on the components, mean (D,), components (2, D)
        orthonormal, explained (2,) fraction of the total variance (zeros
        if there is none).
    """
    if feats.dim() != 2 or feats.shape[1] < 2:
        raise ValueError(f'feats must be (N, D) with D >= 2, got '
                         f'{tuple(feats.shape)}')
    x = feats.detach().to(torch.float64)
    mean = x.mean(dim=0)
    centred = x - mean
    cov = centred.t() @ centred / max(x.shape[0] - 1, 1)
    values, vectors = torch.linalg.eigh(cov)  # ascending
    values = values.flip(0).clamp(min=0.0)
    components = vectors.flip(1)[:, :2].t().contiguous()  # (2, D)
    biggest = components.abs().argmax(dim=1, keepdim=True)
    components *= torch.sign(components.gather(1, biggest))
    total = values.sum()
    explained = values[:2] / total if total > 0 else values[:2] * 0
    return PCA2D(centred @ components.t(), mean, components, explained)


def pca_project(points, pca):
    """Place further points (e.g. anchors) in the picture of :func:`pca_2d`.

    Shape:
        points (M, D), pca from features (N, D) -> (M, 2) float64.
    """
    return (points.detach().to(torch.float64) - pca.mean) @ pca.components.t()


def _numpy(x):
    return x.detach().cpu().numpy() if torch.is_tensor(x) else x


def _wrapped(text, width_inches, fontsize_points):
    """``text`` broken into lines that fit ``width_inches`` at that size.

    A character is taken as 0.6 em wide, about right for matplotlib's
    default sans-serif. Lines break after a space, ``-``, ``_`` or ``/``
    (config file names have no spaces), mid-word only where a piece alone
    is too long.
    """
    import re
    chars = max(8, int(width_inches * 72 / (0.6 * fontsize_points)))
    lines = []
    for line in text.split('\n'):
        current = ''
        for piece in re.findall(r'[^ \-_/]*(?:[ \-_/]|$)', line):
            while len(piece) > chars:  # too long even alone
                if current:
                    lines.append(current.rstrip())
                    current = ''
                lines.append(piece[:chars])
                piece = piece[chars:]
            if len((current + piece).rstrip()) > chars and current:
                lines.append(current.rstrip())
                current = ''
            current += piece
        lines.append(current.rstrip())
    return '\n'.join(lines)


def plot_pca(coords, labels, class_names=None, palette=None, anchors=None,
             title=None, ignore_index=255, point_size=4.0,
             anchors_label='semantic anchors', ax=None):
    """Scatter of 2-D feature coordinates coloured by class.

    Args:
        coords (Tensor | ndarray): 2-D positions of the pixels.
        labels (Tensor | ndarray): class of each pixel; ``ignore_index``
            pixels are left out.
        class_names (Sequence[str], optional): legend entries; ``'class i'``
            by default.
        palette (Sequence[Sequence[int]], optional): RGB colour per class,
            0-255 (mmseg's ``PALETTE``); matplotlib's tab20 cycle otherwise.
        anchors (Tensor | ndarray, optional): 2-D positions of one anchor
            per class, drawn as stars in the class colour.
        title (str, optional): axes title, wrapped to the axes' width.
        ignore_index (int): label of pixels not drawn.
        point_size (float): marker area of a pixel, in points^2.
        anchors_label (str): legend entry of the stars, e.g.
            ``'prototypes'`` for the prototype ablation.
        ax (matplotlib.axes.Axes, optional): draw into these axes (e.g. one
            panel of a row) instead of a new figure; the caller then lays
            the figure out.

    Shape:
        coords (N, 2), labels (N,), palette (C, 3), anchors (C, 2).

    Returns:
        matplotlib.figure.Figure: a figure not registered with pyplot (no
        display needed), ``ax``'s when given; ``fig.savefig(path)`` writes
        it.
    """
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    coords = np.asarray(_numpy(coords), dtype=float)
    labels = np.asarray(_numpy(labels)).reshape(-1)
    num_classes = max(
        len(class_names) if class_names is not None else 0,
        len(palette) if palette is not None else 0,
        len(anchors) if anchors is not None else 0,
        int(labels[labels != ignore_index].max()) + 1
        if (labels != ignore_index).any() else 0)
    if class_names is None:
        class_names = [f'class {i}' for i in range(num_classes)]
    if palette is not None:
        colours = np.asarray(palette, dtype=float) / 255.0
    else:
        cycle = colormaps['tab20'].colors
        colours = np.array([cycle[i % len(cycle)] for i in range(num_classes)])

    own_figure = ax is None
    if own_figure:
        fig = Figure(figsize=(6.4, 5.6), dpi=100)
        ax = fig.subplots()
    fig = ax.figure
    # The legend gets its own handles: one dot per class at a readable
    # size whatever point_size is, and a star of the size of a letter.
    handles = []
    for c in range(num_classes):
        keep = labels == c
        if keep.any():
            ax.scatter(coords[keep, 0], coords[keep, 1], s=point_size,
                       color=colours[c], alpha=0.5, linewidths=0)
            handles.append(Line2D([], [], linestyle='', marker='o',
                                  markersize=5, color=colours[c],
                                  label=class_names[c]))
    if anchors is not None:
        anchors = np.asarray(_numpy(anchors), dtype=float)
        ax.scatter(anchors[:, 0], anchors[:, 1], s=160, marker='*',
                   c=colours[:len(anchors)], edgecolors='black',
                   linewidths=0.8, zorder=3)
        handles.append(Line2D([], [], linestyle='', marker='*',
                              markersize=9, markerfacecolor='white',
                              markeredgecolor='black', markeredgewidth=0.8,
                              label=anchors_label))
    ax.set_xlabel('PC 1')
    ax.set_ylabel('PC 2')
    if title:
        width = fig.get_figwidth() * ax.get_position().width
        ax.set_title(_wrapped(title, width, 10), fontsize=10)
    if num_classes <= 20:
        ax.legend(handles=handles, loc='best', fontsize='small')
    if own_figure:
        fig.tight_layout()
    return fig


def inner_decode_head(model):
    """The decode head that classifies, unwrapped.

    The last head of a cascade, and the wrapped head of a ``SARHead``; a
    ``MMDataParallel``/DDP wrapper is looked through.
    """
    model = getattr(model, 'module', model)
    head = model.decode_head
    if isinstance(head, nn.ModuleList):
        head = head[-1]
    if 'head' in head._modules and 'sar_loss' in head._modules:
        head = head._modules['head']
    return head


def _sar_loss(model):
    """The ``sar_loss`` of a segmentor's (last) decode head, or None."""
    model = getattr(model, 'module', model)
    head = model.decode_head
    if isinstance(head, nn.ModuleList):
        head = head[-1]
    reg = head._modules.get('sar_loss')
    return reg if hasattr(reg, 'semantic_anchors') else None


def semantic_anchors(model):
    """SAR's semantic anchors S of a segmentor, if it has any.

    Returns:
        tuple | None: ``(anchors (C, D), initialised bool)`` for a model with
        a ``SARHead`` (S is all zeros until the gate first opened), None for
        a model without.
    """
    reg = _sar_loss(model)
    if reg is None:
        return None
    return reg.semantic_anchors.detach(), bool(reg.initialised)


def anchor_source(model):
    """What :func:`semantic_anchors` holds: ``'embedded'`` (SAR's semantic
    anchors), ``'prototype'`` (the ablation's EMA class means), or None for
    a model without a ``SARHead``."""
    reg = _sar_loss(model)
    if reg is None:
        return None
    return getattr(reg, 'anchor_source', 'embedded')


def _resample_nearest(label, size):
    """(H, W) -> (h, w) nearest, as mmseg and SAR resize labels."""
    if tuple(label.shape) == tuple(size):
        return label
    out = F.interpolate(label[None, None].float(), size=tuple(size),
                        mode='nearest')
    return out[0, 0].long()


def labels_at_features(gt, meta, input_size, feature_size, ignore_index=255):
    """The ground truth of one image, aligned with its decode feature map.

    mmseg's test pipeline flips, resizes and pads the image; the label map
    follows: flipped like the image, resized (nearest) to ``img_shape``,
    padded with ``ignore_index`` to the network input, then resized
    (nearest) to the features.

    Args:
        gt (Tensor): label map at the original image size.
        meta (dict): the image's ``img_metas`` entry (``img_shape``,
            optional ``flip``/``flip_direction``).
        input_size (tuple): (H_in, W_in) of the tensor fed to the network.
        feature_size (tuple): (h, w).

    Shape:
        gt (H, W) -> (h, w) long.
    """
    gt = torch.as_tensor(gt).long()
    if meta.get('flip', False):
        direction = meta.get('flip_direction', 'horizontal')
        dims = dict(horizontal=[1], vertical=[0], diagonal=[0, 1])[direction]
        gt = gt.flip(dims)
    h, w = meta['img_shape'][:2]
    gt = _resample_nearest(gt, (h, w))
    pad_h, pad_w = input_size[0] - h, input_size[1] - w
    if pad_h or pad_w:
        gt = F.pad(gt, (0, pad_w, 0, pad_h), value=ignore_index)
    return _resample_nearest(gt, feature_size)


class ClassSample:
    """Uniform sample without replacement of at most ``k`` items per class.

    Every item gets a uniform random key; the ``k`` smallest keys of a class
    are a uniform sample of everything seen so far, whatever the order the
    items arrive in, so images can stream through in bounded memory.
    """

    def __init__(self, k, generator):
        self.k = k
        self.generator = generator
        self.keys, self.feats = {}, {}

    def add(self, feats, labels):
        keys = torch.rand(len(labels), generator=self.generator)
        for c in labels.unique().tolist():
            take = labels == c
            k = torch.cat([self.keys.get(c, keys[:0]), keys[take]])
            f = torch.cat([self.feats.get(c, feats[:0]), feats[take]])
            if len(k) > self.k:
                k, order = torch.topk(k, self.k, largest=False)
                f = f[order]
            self.keys[c], self.feats[c] = k, f

    def result(self, dim):
        classes = sorted(self.feats)
        if not classes:
            return torch.zeros(0, dim), torch.zeros(0, dtype=torch.long)
        feats = torch.cat([self.feats[c] for c in classes])
        labels = torch.cat([torch.full((len(self.feats[c]), ), c)
                            for c in classes])
        return feats, labels


class PixelFeatures:
    """Labelled pixel features gathered image by image, ignored pixels
    dropped: all of them in order, or a :class:`ClassSample` of at most
    ``max_pixels_per_class`` per class (seeded by ``seed``)."""

    def __init__(self, ignore_index=255, max_pixels_per_class=None, seed=0):
        self.ignore_index = ignore_index
        self.sample = None if max_pixels_per_class is None else ClassSample(
            max_pixels_per_class, torch.Generator().manual_seed(seed))
        self.feats, self.labels = [], []

    def add(self, feats, labels):
        """One image's features (D, h, w) and aligned labels (h, w)."""
        feats = feats.flatten(1).t()  # (h*w, D)
        labels = labels.flatten()
        keep = labels != self.ignore_index
        if self.sample is None:
            self.feats.append(feats[keep])
            self.labels.append(labels[keep])
        else:
            self.sample.add(feats[keep], labels[keep])

    def result(self, dim):
        """feats (N, dim) and labels (N,): in image order, row-major; with
        a sample, grouped by class."""
        if self.sample is not None:
            return self.sample.result(dim)
        if not self.feats:
            return torch.zeros(0, dim), torch.zeros(0, dtype=torch.long)
        return torch.cat(self.feats), torch.cat(self.labels)


@contextmanager
def classifier_inputs(model):
    """The inputs of the inner head's ``conv_seg`` during the block.

    Yields a list that each forward of the classifier appends its input to
    ((B, D, h, w): the feature after dropout, itself the identity in test
    mode); the forward pre-hook is removed on leaving.
    """
    captured = []
    hook = inner_decode_head(model).conv_seg.register_forward_pre_hook(
        lambda module, inputs: captured.append(inputs[0]))
    try:
        yield captured
    finally:
        hook.remove()
