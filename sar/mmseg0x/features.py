"""Pixel features of an mmseg 0.x segmentor, collected from its data loader,
and what tools/analyze_features.py needs of mmseg 0.30.

The statistics, the sampling and the label alignment are
:mod:`sar.evaluation.features`'s, the tool's files
:mod:`sar.evaluation.feature_analysis`'s; only the 0.x config, loader
(``img`` and ``img_metas`` lists, DataContainers), checkpoint loading and
``encode_decode`` are read here.
"""
import torch
from mmcv.cnn.utils import revert_sync_batchnorm
from mmcv.runner import CheckpointLoader, load_state_dict
from mmcv.utils import Config, DictAction  # noqa: F401  (the tool's)

from ..evaluation.feature_analysis import weights_to_load
from ..evaluation.features import (PixelFeatures, classifier_inputs,
                                   inner_decode_head, labels_at_features)
from .runtime import adapt_cfg_to_machine


def load_config(path, options=None):
    """The config at ``path`` with ``--cfg-options`` merged, made runnable
    on this machine."""
    cfg = Config.fromfile(path)
    if options:
        cfg.merge_from_dict(options)
    return adapt_cfg_to_machine(cfg)


def build(cfg, split, checkpoint, device):
    """(model in eval mode on ``device`` with the checkpoint's weights,
    unshuffled test-mode loader of ``split``, class names, palette)."""
    from mmseg.datasets import build_dataloader, build_dataset
    from mmseg.models import build_segmentor

    dataset = build_dataset(cfg.data[split], dict(test_mode=True))
    loader = build_dataloader(dataset, samples_per_gpu=1,
                              workers_per_gpu=cfg.data.get(
                                  'workers_per_gpu', 0),
                              dist=False, shuffle=False,
                              persistent_workers=False)
    cfg.model.pretrained = None
    cfg.model.train_cfg = None
    model = build_segmentor(cfg.model, test_cfg=cfg.get('test_cfg'))
    model = revert_sync_batchnorm(model)
    ckpt = CheckpointLoader.load_checkpoint(checkpoint, map_location='cpu')
    load_state_dict(model, weights_to_load(model, ckpt.get('state_dict',
                                                           ckpt)),
                    strict=True)
    return (model.to(device).eval(), loader, list(dataset.CLASSES),
            dataset.PALETTE)


@torch.no_grad()
def collect_features(model, data_loader, ignore_index=255, max_images=None,
                     max_pixels_per_class=None, seed=0):
    """Pixel features the classifier reads, with their labels, on a data set.

    Each image goes through ``model.encode_decode`` in test mode (the whole
    image, the first test-time augmentation only);
    :func:`classifier_inputs` keeps the classifier's input, which is the
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
    device = next(model.parameters()).device
    dataset = data_loader.dataset
    pixels = PixelFeatures(ignore_index, max_pixels_per_class, seed)
    index = 0
    with classifier_inputs(model) as captured:
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
                pixels.add(f, labels_at_features(
                    torch.from_numpy(gt), meta, img.shape[2:], f.shape[1:],
                    ignore_index))
                index += 1
            if max_images is not None and index >= max_images:
                break
    return (*pixels.result(inner_decode_head(model).conv_seg.in_channels),
            index)
