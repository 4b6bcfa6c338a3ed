"""Pixel features of an mmseg 0.x segmentor, collected from its data loader.

The statistics, the sampling and the label alignment are
:mod:`sar.evaluation.features`'s; only the 0.x loader's batch layout
(``img`` and ``img_metas`` lists, DataContainers) and its
``encode_decode`` are read here.
"""
import torch

from ..evaluation.features import (ClassSample, inner_decode_head,
                                   labels_at_features)


@torch.no_grad()
def collect_features(model, data_loader, ignore_index=255, max_images=None,
                     max_pixels_per_class=None, seed=0):
    """Pixel features the classifier reads, with their labels, on a data set.

    Each image goes through ``model.encode_decode`` in test mode (the whole
    image, the first test-time augmentation only); a forward pre-hook on
    the inner head's ``conv_seg`` keeps the classifier's input, which is the
    feature after dropout, itself the identity in test mode. Labels come
    from ``data_loader.dataset.get_gt_seg_map_by_idx`` (mmseg's own
    reduce-zero-label and label map applied) and are aligned with
    :func:`labels_at_features`; ignored pixels are dropped.

    Args:
        model (nn.Module): an mmseg segmentor, put in eval mode here.
        data_loader (Iterable): mmseg test-mode loader, unshuffled, yielding
            ``img`` (list of (B, 3, H, W)) and ``img_metas`` (list of
            DataContainer) per batch.
        ignore_index (int): label of pixels to drop.
        max_images (int, optional): stop after this many images.
        max_pixels_per_class (int, optional): keep a uniform random sample
            of at most this many pixels per class over all images.
        seed (int): seed of that sample.

    Returns:
        tuple: feats (N, D) float32 on the CPU, labels (N,) long, and the
        number of images used. Without ``max_pixels_per_class`` the pixels
        are in image order, row-major; with it, grouped by class.
    """
    model.eval()
    conv_seg = inner_decode_head(model).conv_seg
    device = next(model.parameters()).device
    dataset = data_loader.dataset
    captured = []
    hook = conv_seg.register_forward_pre_hook(
        lambda module, inputs: captured.append(inputs[0]))
    sample = None
    if max_pixels_per_class is not None:
        sample = ClassSample(max_pixels_per_class,
                             torch.Generator().manual_seed(seed))
    all_feats, all_labels = [], []
    index = 0
    try:
        for data in data_loader:
            img = data['img'][0]
            metas = data['img_metas'][0].data[0]
            captured.clear()
            model.encode_decode(img.to(device), metas)
            feats = captured[-1].float().cpu()  # (B, D, h, w)
            for f, meta in zip(feats, metas):
                if max_images is not None and index >= max_images:
                    break
                gt = dataset.get_gt_seg_map_by_idx(index)
                y = labels_at_features(torch.from_numpy(gt), meta,
                                       img.shape[2:], f.shape[1:],
                                       ignore_index)
                f = f.flatten(1).t()  # (h*w, D)
                y = y.flatten()
                keep = y != ignore_index
                f, y = f[keep], y[keep]
                if sample is None:
                    all_feats.append(f)
                    all_labels.append(y)
                else:
                    sample.add(f, y)
                index += 1
            if max_images is not None and index >= max_images:
                break
    finally:
        hook.remove()
    dim = conv_seg.in_channels
    if sample is not None:
        feats, labels = sample.result(dim)
    elif all_feats:
        feats, labels = torch.cat(all_feats), torch.cat(all_labels)
    else:
        feats, labels = torch.zeros(0, dim), torch.zeros(0, dtype=torch.long)
    return feats, labels, index
