"""tools/analyze_features.py under mmseg 1.x (sar.mmseg1x.features with
sar.evaluation.feature_analysis): the collected features are what the
classifier reads, aligned with the labels, and the tool writes what it
writes under 0.30, on a 2-iteration checkpoint of the shapes data."""
import json
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

from analysis_result import check_result
from helpers1x import PY, TOOL_TRAIN, run, write_config
from sar.evaluation.features import inner_decode_head, labels_at_features
from sar.mmseg1x.features import build, collect_features

IGNORE = 255


@pytest.fixture(scope='module')
def sar_checkpoint(tmp_path_factory):
    from sar.data import make_shapes_dataset
    tmp = tmp_path_factory.mktemp('analysis1x')
    root = make_shapes_dataset(str(tmp / 'shapes'), num_train=4, num_val=3,
                               size=32)
    cfg = write_config(tmp / 'sar.py', root, iters=2)
    run([PY, TOOL_TRAIN, cfg, '--work-dir', str(tmp / 'work')])
    return tmp, cfg, str(tmp / 'work' / 'iter_2.pth')


# The val images (32 x 32) resized to 24 x 20 and padded to 32 x 32 by the
# data preprocessor: at the features' 8 x 8, 6 x 5 cells hold the image.
RESIZED_AND_PADDED = """
_base_ = [{base!r}]
val_dataloader = dict(dataset=dict(pipeline=[
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(20, 24), keep_ratio=False),
    dict(type='LoadAnnotations'), dict(type='PackSegInputs')]))
model = dict(data_preprocessor=dict(test_cfg=dict(size_divisor=16)))
"""


@pytest.mark.parametrize('resized', [False, True])
def test_collected_features_are_what_the_classifier_reads(sar_checkpoint,
                                                          resized):
    tmp, cfg, ckpt = sar_checkpoint
    if resized:
        path = tmp / 'resized.py'
        path.write_text(RESIZED_AND_PADDED.format(base=cfg))
        cfg = str(path)
    model, dataset, classes, _ = build(Config.fromfile(cfg), 'val', ckpt,
                                       'cpu')
    assert classes == ['background', 'square', 'disc', 'bar']
    feats, labels, n = collect_features(model, dataset, IGNORE)
    head = inner_decode_head(model)
    assert head is model.decode_head.head and n == len(dataset) == 3
    # Independently: the head's logits at feature size, the label files
    # read here and aligned with them; the classifier applied to the
    # collected features must give the logits of exactly the labelled
    # pixels, in order.
    want_logits, want_labels = [], []
    with torch.no_grad():
        for i in range(n):
            item = dataset[i]
            data = model.data_preprocessor(
                dict(inputs=[item['inputs']],
                     data_samples=[item['data_samples']]), False)
            logits = head(model.extract_feat(data['inputs']))[0]
            gt = np.array(Image.open(dataset.get_data_info(i)['seg_map_path']))
            y = labels_at_features(torch.from_numpy(gt).long(),
                                   data['data_samples'][0].metainfo,
                                   data['inputs'].shape[2:],
                                   logits.shape[1:]).flatten()
            keep = y != IGNORE
            want_logits.append(logits.flatten(1).t()[keep])
            want_labels.append(y[keep])
        got_logits = head.conv_seg(feats[:, :, None, None]).flatten(1)
    assert torch.equal(labels, torch.cat(want_labels))
    assert torch.allclose(got_logits, torch.cat(want_logits), atol=1e-5)
    assert feats.shape == (len(labels), head.channels)
    # The padded cells are dropped (the labels' own 255 pixels too): were
    # the labels stretched over the padded input, the resized case would
    # keep about as many as the other, 168.
    assert 0 < len(labels) <= n * (6 * 5 if resized else 8 * 8)
    # A sample of at most 5 per class, from the same pixels.
    f, y, _ = collect_features(model, dataset, IGNORE,
                               max_pixels_per_class=5)
    assert torch.bincount(y, minlength=4).tolist() == \
        torch.bincount(labels, minlength=4).clamp(max=5).tolist()
    assert collect_features(model, dataset, IGNORE, max_images=1)[2] == 1


def test_the_tool_writes_what_it_writes_under_0x(sar_checkpoint):
    tmp, cfg, ckpt = sar_checkpoint
    out_dir = tmp / 'out'
    out = run([PY, 'tools/analyze_features.py', cfg, ckpt, '--out-dir',
               str(out_dir), '--max-images', '2', '--max-pixels-per-class',
               '50', '--device', 'cpu'])
    with open(out_dir / 'features.json') as f:
        res = json.load(f)
    check_result(res, out_dir, 120)
    initialised = bool(torch.load(ckpt, weights_only=False)['state_dict'][
        'decode_head.sar_loss.initialised'])
    assert res['anchors'] == dict(present=True, initialised=initialised,
                                  marked=initialised, source='embedded')
    assert f'separability ratio: {res["separability_ratio"]:.4f}' in out
    assert osp.isfile(res['png'])
