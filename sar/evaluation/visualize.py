"""Pictures of predictions: image | ground truth | one column per model.

Functions take arrays and return a matplotlib ``Figure`` (built without
pyplot, so no display or backend is needed); the caller saves it. matplotlib
is a demo extra, imported when a function is called.

Shape shorthand: N scenes, H x W pixels, K classes.
"""
import numpy as np


def colorize(label, palette, ignore_index=255):
    """Label map to RGB; ignored pixels white.

    Args:
        label (ndarray): class ids.
        palette (Sequence): (K, 3) RGB in 0-255, one row per class.
        ignore_index (int): label drawn white.

    Shape:
        label (H, W) int -> (H, W, 3) uint8.
    """
    colours = np.asarray(palette, np.uint8)
    label = np.asarray(label)
    out = np.full(label.shape + (3, ), 255, np.uint8)
    known = label != ignore_index
    out[known] = colours[label[known]]
    return out


def comparison_figure(images, gts, predictions, palette, class_names=None,
                      row_titles=None, ignore_index=255, cell_inches=1.6):
    """A grid of scenes: image, ground truth, then each model's prediction.

    Args:
        images (Sequence[ndarray]): RGB scenes, (H, W, 3) uint8 each.
        gts (Sequence[ndarray]): ground truth, (H, W) int each.
        predictions (dict): column title -> sequence of (H, W) int
            predictions, one per scene.
        palette (Sequence): (K, 3) RGB in 0-255.
        class_names (Sequence[str], optional): K names; if given, a legend
            of the class colours goes under the grid.
        row_titles (Sequence[str], optional): one label per scene.
        ignore_index (int): label drawn white.
        cell_inches (float): side of one picture in inches.

    Returns:
        matplotlib.figure.Figure: N rows by 2 + len(predictions) columns.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    n = len(images)
    if len(gts) != n or any(len(p) != n for p in predictions.values()):
        raise ValueError('comparison_figure: images, gts and every '
                         'prediction list need one entry per scene')
    columns = ['image', 'ground truth'] + list(predictions)
    legend_inches = 0.6 if class_names else 0.0
    fig = Figure(figsize=(cell_inches * len(columns),
                          cell_inches * n + 0.4 + legend_inches))
    axes = fig.subplots(n, len(columns), squeeze=False)
    for i in range(n):
        cells = [np.asarray(images[i]), colorize(gts[i], palette,
                                                 ignore_index)]
        cells += [colorize(p[i], palette, ignore_index)
                  for p in predictions.values()]
        for j, cell in enumerate(cells):
            ax = axes[i, j]
            ax.imshow(cell, interpolation='nearest')
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(columns[j], fontsize=9)
            if j == 0 and row_titles is not None:
                ax.set_ylabel(row_titles[i], fontsize=8)
    height = fig.get_figheight()
    fig.subplots_adjust(left=0.06, right=0.98, wspace=0.05, hspace=0.08,
                        top=1 - 0.3 / height,
                        bottom=(legend_inches + 0.05) / height)
    if class_names:
        handles = [Patch(color=np.asarray(palette[k]) / 255, label=name)
                   for k, name in enumerate(class_names)]
        fig.legend(handles=handles, loc='lower center',
                   ncol=min(len(handles), 6), fontsize=7, frameon=False)
    return fig
