"""Pixel features of an mmseg 1.x segmentor, collected from its data set,
and what tools/analyze_features.py needs of mmseg 1.x.

The 1.x half of :mod:`sar.mmseg0x.features`: the statistics, the sampling
and the label alignment are :mod:`sar.evaluation.features`'s, the tool's
files :mod:`sar.evaluation.feature_analysis`'s; only the 1.x config, data
set items (``inputs`` and ``SegDataSample``, through the model's data
preprocessor), checkpoint loading and ``encode_decode`` are read here.
"""
import torch
from mmengine.config import Config, DictAction  # noqa: F401  (the tool's)
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import init_default_scope
from mmengine.runner.checkpoint import CheckpointLoader, load_state_dict

from ..evaluation.feature_analysis import weights_to_load
from ..evaluation.features import (PixelFeatures, classifier_inputs,
                                   inner_decode_head, labels_at_features)


def load_config(path, options=None):
    """The config at ``path`` with ``--cfg-options`` merged."""
    cfg = Config.fromfile(path)
    if options:
        cfg.merge_from_dict(options)
    return cfg


def build(cfg, split, checkpoint, device):
    """(model in eval mode on ``device`` with the checkpoint's weights, the
    data set of ``split``'s loader, class names, palette)."""
    from mmseg.registry import DATASETS, MODELS
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    dataset = DATASETS.build(cfg[f'{split}_dataloader'].dataset)
    cfg.model.pretrained = None
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    ckpt = CheckpointLoader.load_checkpoint(checkpoint, map_location='cpu')
    load_state_dict(model, weights_to_load(model, ckpt.get('state_dict',
                                                           ckpt)),
                    strict=True)
    return (model.to(device).eval(), dataset,
            list(dataset.metainfo['classes']), dataset.metainfo['palette'])


def ground_truth(dataset, index):
    """The label map of item ``index`` at its original size, read as
    mmseg's ``LoadAnnotations`` reads it (reduce-zero-label and the data
    set's label map applied), whatever the data set's pipeline does
    to it."""
    from mmseg.datasets.transforms import LoadAnnotations
    results = LoadAnnotations()(dict(dataset.get_data_info(index)))
    return torch.from_numpy(results['gt_seg_map'])


@torch.no_grad()
def collect_features(model, dataset, ignore_index=255, max_images=None,
                     max_pixels_per_class=None, seed=0):
    """Pixel features the classifier reads, with their labels, on a data set.

    The 1.x form of :func:`sar.mmseg0x.features.collect_features`, with the
    same arguments but ``dataset`` (a ``BaseSegDataset``, read in order)
    and the same result: feats (N, D), labels (N,) and the number of images.
    Each item (its pipeline applied, as mmseg's test loop sees it) goes
    through the model's data preprocessor and ``encode_decode`` in test
    mode (the whole image), :func:`classifier_inputs` keeping what the
    classifier reads. Labels come from :func:`ground_truth` and are aligned
    with :func:`labels_at_features` (the item's ``img_shape`` and flip).
    """
    model.eval()
    pixels = PixelFeatures(ignore_index, max_pixels_per_class, seed)
    count = len(dataset) if max_images is None else min(max_images,
                                                        len(dataset))
    with classifier_inputs(model) as captured:
        for index in range(count):
            item = dataset[index]
            data = model.data_preprocessor(
                dict(inputs=[item['inputs']],
                     data_samples=[item['data_samples']]), False)
            meta = data['data_samples'][0].metainfo
            captured.clear()
            model.encode_decode(data['inputs'], [meta])
            f = captured[-1][0].float().cpu()  # (D, h, w)
            pixels.add(f, labels_at_features(
                ground_truth(dataset, index), meta, data['inputs'].shape[2:],
                f.shape[1:], ignore_index))
    return (*pixels.result(inner_decode_head(model).conv_seg.in_channels),
            count)
