"""Per-class IoU from predicted and true label maps, in mmseg's form.

For frameworks that have no evaluation of their own (transformers,
segmentation_models.pytorch): the result is the dict that mmseg's
evaluation returns (``mIoU`` and ``IoU.<class>`` as fractions), so the
report functions of :mod:`sar.evaluation.report` take it unchanged. As in
mmseg, a class absent from both prediction and ground truth has IoU NaN and
is left out of the mean.
"""
import numpy as np


def iou_metrics(pred, labels, classes, ignore_index=255):
    """mmseg-style IoU dict of predictions against labels.

    Args:
        pred (ndarray): predicted classes, any integer shape.
        labels (ndarray): true classes, the same shape; ``ignore_index``
            pixels are left out.
        classes (Sequence[str]): the K class names, in label order.
        ignore_index (int): label of unlabelled pixels.

    Returns:
        dict: ``mIoU`` and ``IoU.<class>``, fractions in [0, 1] (NaN for a
        class in neither map).
    """
    pred, labels = np.asarray(pred), np.asarray(labels)
    if pred.shape != labels.shape:
        raise ValueError(f'pred {pred.shape} and labels {labels.shape} '
                         'differ in shape')
    k = len(classes)
    keep = labels != ignore_index
    p, y = pred[keep].astype(np.int64), labels[keep].astype(np.int64)
    if p.size and (p.min() < 0 or p.max() >= k or y.min() < 0
                   or y.max() >= k):
        raise ValueError(f'classes outside 0..{k - 1} (ignore_index '
                         f'{ignore_index} aside)')
    confusion = np.bincount(y * k + p, minlength=k * k).reshape(k, k)
    inter = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - inter
    with np.errstate(invalid='ignore', divide='ignore'):
        iou = inter / union
    out = {f'IoU.{c}': float(v) for c, v in zip(classes, iou)}
    out['mIoU'] = float(np.nanmean(iou)) if np.isfinite(iou).any() else \
        float('nan')
    return out
