"""Aggregation over seeds and pictures for the accuracy benchmark.

``tools/benchmark_accuracy.py`` trains every method with several seeds
through tools/train.py, evaluates with tools/test.py and measures features
with tools/analyze_features.py; this module turns those outputs into
mean +- std over seeds, a markdown table and figures. Nothing here computes
a metric from predictions or features: per-class IoU and mIoU are mmseg's
(read through :func:`sar.evaluation.report.class_iou`), compactness and
separability are :func:`sar.evaluation.features.feature_stats`'s. Plain
Python and numpy; matplotlib is imported by the plotting functions alone
(and torch by :func:`pca_row`, through the feature module's plot).

Shape shorthand: M methods, K classes, S seeds, H x W pixels of a picture.
IoU values are in percent; a missing value (a class absent from every
prediction and label, a gate that never opened) is None or NaN, and is
left out of means.
"""
import math

import numpy as np


def _present(values):
    """The values that are neither None nor NaN, as floats."""
    return [float(v) for v in values
            if v is not None and not (isinstance(v, float) and math.isnan(v))]


def mean_std(values):
    """Mean and sample standard deviation of one quantity over seeds.

    Args:
        values (Sequence[float | None]): one value per seed, (S,); None and
            NaN are left out.

    Returns:
        dict: ``mean`` (None if no value is left), ``std`` (the sample
        standard deviation, ddof=1: None with fewer than two values) and
        ``n`` (how many values took part).
    """
    kept = _present(values)
    n = len(kept)
    if n == 0:
        return dict(mean=None, std=None, n=0)
    mean = sum(kept) / n
    std = None
    if n >= 2:
        std = math.sqrt(sum((v - mean) ** 2 for v in kept) / (n - 1))
    return dict(mean=mean, std=std, n=n)


def seed_row(metric, classes, head, tail):
    """One seed's numbers, in percent, from mmseg's evaluation dict.

    Args:
        metric (dict): mmseg's evaluation dict (``mIoU``, ``IoU.<class>``
            as fractions; tools/test.py's ``eval_*.json`` ``metric``).
        classes (Sequence[str]): every class name, (K,).
        head, tail (Sequence[str]): class names averaged into ``head`` and
            ``tail``.

    Returns:
        dict: ``iou`` (class -> IoU in percent,
        :func:`sar.evaluation.report.class_iou`;
        NaN where mmseg has none), ``head`` and ``tail`` (means of those
        classes' IoU, NaN classes left out as mmseg's mIoU leaves them) and
        ``mIoU`` (mmseg's, in percent).
    """
    from .report import class_iou
    iou = class_iou(metric, classes)

    def mean_of(names):
        kept = _present([iou[c] for c in names])
        return sum(kept) / len(kept) if kept else math.nan

    return dict(iou=iou, head=mean_of(head), tail=mean_of(tail),
                mIoU=100 * float(metric['mIoU']))


def summarize_seeds(rows, classes):
    """Mean +- std over seeds of every number of :func:`seed_row` rows.

    Args:
        rows (Sequence[dict]): one dict per seed, (S,), with ``iou``
            (class -> value) and any scalar keys (``mIoU``, ``head``,
            ``compactness``, ``gate_first_open_iter``, ...); a scalar that
            is None or NaN in a seed is left out of that key's mean.
        classes (Sequence[str]): the classes of ``iou`` to summarise.

    Returns:
        dict: every scalar key -> :func:`mean_std` dict, and ``iou`` ->
        dict class -> :func:`mean_std` dict.
    """
    if not rows:
        raise ValueError('summarize_seeds needs at least one seed')
    keys = [k for k in rows[0] if k != 'iou']
    out = {k: mean_std([r.get(k) for r in rows]) for k in keys}
    out['iou'] = {c: mean_std([r['iou'][c] for r in rows]) for c in classes}
    return out


def format_mean_std(stat, digits=2):
    """``'47.85 +- 1.20'``; the mean alone for one seed; ``'n/a'`` for none.

    Args:
        stat (dict): from :func:`mean_std`.
        digits (int): decimals of both numbers.
    """
    if stat['mean'] is None:
        return 'n/a'
    text = f'{stat["mean"]:.{digits}f}'
    if stat['std'] is not None:
        text += f' +- {stat["std"]:.{digits}f}'
    return text


def markdown_table(summaries, columns, digits=2):
    """A markdown table, one row per method, ``mean +- std`` per cell.

    Args:
        summaries (dict): method -> dict key -> :func:`mean_std` dict (as
            :func:`summarize_seeds` returns), rows in dict order.
        columns (Sequence[tuple]): ``(key, header)`` pairs, or
            ``(key, header, digits)`` to override ``digits`` for a column.
        digits (int): decimals.

    Returns:
        str: the table, header and separator lines first, no trailing
        newline.
    """
    lines = ['| method | ' + ' | '.join(c[1] for c in columns) + ' |',
             '| --- |' + ' --- |' * len(columns)]
    for method, summary in summaries.items():
        cells = [format_mean_std(summary[c[0]],
                                 c[2] if len(c) > 2 else digits)
                 for c in columns]
        lines.append(f'| {method} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def class_iou_bars(mean, std, class_names, method_names, tail=None,
                   title=None):
    """Grouped bars of per-class IoU, one bar per method in each class.

    Args:
        mean (ndarray): IoU in percent; NaN draws no bar.
        std (ndarray, optional): error bars (std over seeds) in percent;
            NaN or None draws none.
        class_names (Sequence[str]): (K,) x-axis labels.
        method_names (Sequence[str]): (M,) legend entries.
        tail (Sequence[str], optional): class names shaded grey as the
            tail.
        title (str, optional): axes title.

    Shape:
        mean (M, K), std (M, K).

    Returns:
        matplotlib.figure.Figure: a figure not registered with pyplot;
        ``fig.savefig(path)`` writes it. Its axes hold one bar container
        per method, in order.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    mean = np.asarray(mean, dtype=float)
    num_methods, num_classes = mean.shape
    if len(class_names) != num_classes or len(method_names) != num_methods:
        raise ValueError(f'class_iou_bars: mean is {mean.shape}, with '
                         f'{len(method_names)} methods and '
                         f'{len(class_names)} classes named')
    std = np.full_like(mean, np.nan) if std is None else \
        np.asarray(std, dtype=float)
    fig = Figure(figsize=(max(6.4, 0.7 * num_classes * max(num_methods, 2)
                              / 2 + 1.5), 4.2), dpi=100)
    ax = fig.subplots()
    x = np.arange(num_classes)
    width = 0.8 / num_methods
    tail = set(tail or [])
    for k, name in enumerate(class_names):
        if name in tail:
            ax.axvspan(k - 0.5, k + 0.5, color='0.92', zorder=0)
    for m, name in enumerate(method_names):
        offset = (m - (num_methods - 1) / 2) * width
        errors = np.where(np.isnan(std[m]), 0.0, std[m])
        ax.bar(x + offset, np.nan_to_num(mean[m], nan=0.0), width,
               yerr=errors, capsize=2, label=name, zorder=2)
    ax.set_xticks(x)
    ax.set_xticklabels(class_names)
    ax.set_xlim(-0.5, num_classes - 0.5)
    ax.set_ylim(0, 100)
    ax.set_ylabel('IoU (%)')
    ax.set_xlabel('class' + (' (grey: tail)' if tail else ''))
    if title:
        ax.set_title(title)
    handles, labels = ax.get_legend_handles_labels()
    if tail:
        handles.append(Patch(color='0.92', label='tail classes'))
        labels.append('tail classes')
    ax.legend(handles, labels, loc='upper right', fontsize='small')
    fig.tight_layout()
    return fig


def pca_row(panels, class_names=None, palette=None, ignore_index=255):
    """PCA scatters of several models in one row, e.g. one per method.

    Each panel is drawn by :func:`sar.evaluation.features.plot_pca` from
    the coordinates tools/analyze_features.py saves
    (``features_pca.npz``), so that each keeps its own legend, titles fit
    their panel and the stars are named for what they are.

    Args:
        panels (Sequence[dict]): one per panel: ``coords`` (N, 2),
            ``labels`` (N,), ``title`` (str), optional ``anchors`` (C, 2)
            (None or (0, 2): no stars) and ``anchors_label`` (legend entry
            of the stars, ``'semantic anchors'`` by default).
        class_names (Sequence[str], optional): K legend entries.
        palette (Sequence[Sequence[int]], optional): (K, 3) RGB in 0-255.
        ignore_index (int): label of pixels not drawn.

    Returns:
        matplotlib.figure.Figure: one axes per panel, in order.
    """
    from matplotlib.figure import Figure

    from .features import plot_pca
    if not panels:
        raise ValueError('pca_row needs at least one panel')
    fig = Figure(figsize=(5.2 * len(panels), 5.0), dpi=100)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        anchors = panel.get('anchors')
        if anchors is not None and len(anchors) == 0:
            anchors = None
        plot_pca(panel['coords'], panel['labels'], class_names, palette,
                 anchors, title=panel['title'], ignore_index=ignore_index,
                 anchors_label=panel.get('anchors_label',
                                         'semantic anchors'), ax=ax)
    fig.tight_layout()
    return fig
