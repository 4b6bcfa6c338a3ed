"""Build-time refusals and bad labels: the 0.x glue's checks and messages,
from the same shared code (sar.core.wrapping), through mmseg 1.x."""
import pytest
import torch
from mmseg.registry import MODELS

from helpers1x import fcn_cfg, inputs, samples

C, D = 3, 8  # fcn_cfg's classes and channels


def sar_head(head=None, **sar_loss):
    torch.manual_seed(0)
    return MODELS.build(dict(type='SARHead', head=head or fcn_cfg(),
                             sar_loss=dict(type='SemanticAnchorLoss',
                                           **sar_loss)))


KERNEL_UPDATE = dict(
    type='KernelUpdateHead', num_classes=C, in_channels=D, out_channels=D,
    feedforward_channels=16, num_heads=2, num_ffn_fcs=2, conv_kernel_size=1,
    kernel_updator_cfg=dict(type='KernelUpdator', in_channels=D,
                            feat_channels=D, out_channels=D))


@pytest.mark.parametrize('head_cfg', [
    dict(type='PointHead', in_channels=[6], in_index=[0], channels=8,
         num_fcs=1, coarse_pred_each_layer=True, num_classes=C),
    dict(type='SegmenterMaskTransformerHead', in_channels=6, channels=6,
         num_classes=C, num_layers=1, num_heads=2, embed_dims=6),
    dict(type='IterativeDecodeHead', num_stages=1,
         kernel_generate_head=fcn_cfg(), kernel_update_head=[KERNEL_UPDATE]),
], ids=['PointHead', 'SegmenterMaskTransformerHead', 'IterativeDecodeHead'])
def test_unsupported_heads_fail_at_build_time_with_the_reason(head_cfg):
    with pytest.raises(TypeError, match='SARHead cannot wrap .*conv_seg.*'
                       'Supported: heads derived from mmseg BaseDecodeHead'):
        sar_head(head_cfg)


def test_sar_head_cannot_wrap_a_sar_head():
    with pytest.raises(TypeError, match='cannot wrap another SARHead'):
        sar_head(dict(type='SARHead', head=fcn_cfg()))


def test_single_output_head_is_refused():
    with pytest.raises(ValueError, match='out_channels=num_classes'):
        sar_head(fcn_cfg(num_classes=2, out_channels=1))


def test_one_class_head_is_refused():
    with pytest.raises(ValueError, match='num_classes >= 2'):
        sar_head(fcn_cfg(num_classes=1))


@pytest.mark.parametrize('key,value', [('num_classes', 5), ('channels', 4),
                                       ('ignore_index', 0)])
def test_loss_settings_that_disagree_with_the_head_are_refused(key, value):
    with pytest.raises(ValueError, match=f'sar_loss.{key}={value} disagrees '
                       f'with the wrapped FCNHead.*remove sar_loss.{key}'):
        sar_head(**{key: value})
    agreeing = {'num_classes': C, 'channels': D, 'ignore_index': 255}[key]
    sar_head(**{key: agreeing})


@pytest.mark.parametrize('norm', ['IN', 'IN2d', 'BN1d', 'LN'])
def test_unfit_projector_norms_are_refused_at_build_time(norm):
    with pytest.raises(ValueError, match=f"type '{norm}' cannot serve the "
                       r"anchor projector.*sar_loss=dict\(norm_cfg=dict\("
                       r"type='BN'\)\)"):
        sar_head(fcn_cfg(norm_cfg=dict(type=norm)))
    head = sar_head(norm_cfg=dict(type='BN'))  # the fix the message names
    x, labels = inputs()
    assert 'loss_sar_anchor_ce' in head.loss(x, samples(labels), None)


def test_projector_norm_follows_the_head():
    head = sar_head(fcn_cfg(norm_cfg=dict(type='GN', num_groups=2)))
    assert type(head.sar_loss.projector.norm1).__name__ == 'GroupNorm'
    head = sar_head(norm_cfg=dict(type='SyncBN'))
    assert type(head.sar_loss.projector.norm1).__name__ == 'SyncBatchNorm'


@pytest.mark.parametrize('key,value,message', [
    ('loss_name', 'sar', "start with 'loss_'"),
    ('loss_weight', -1.0, 'loss_weight must be a finite'),
    ('anchor_init', 'uniform', "anchor_init must be one of"),
    ('update_conf', 1.0, r'update_conf must lie in \(0, 1\), got 1.0'),
    ('pull_weight', -0.1, 'pull_weight must be a finite number >= 0'),
])
def test_bad_settings_are_refused_at_build_time(key, value, message):
    with pytest.raises(ValueError, match=message):
        sar_head(**{key: value})


@pytest.mark.parametrize('bad', [[3], [7, 19], [-1]])
def test_out_of_range_labels_are_named_before_the_heads_loss(bad):
    head = sar_head()
    x, labels = inputs()
    for i, value in enumerate(bad):
        labels[1, 0, 5, i] = value
    shown = ', '.join(str(v) for v in sorted(bad))
    calls = []
    head.head.loss_decode.register_forward_pre_hook(
        lambda *a: calls.append(1))
    with pytest.raises(ValueError, match=rf'{len(bad)} value\(s\) that are '
                       rf'neither a class in \[0, 2\] nor the ignore index '
                       rf'255: {shown}\. Fix the annotations'):
        head.loss(x, samples(labels), None)
    assert not calls


def test_a_head_that_never_classifies_in_training_is_named():
    head = sar_head()
    # A head whose training path bypasses cls_seg: nothing to read.
    head.head.forward = lambda inputs: head.head.conv_seg(
        head.head._forward_feature(inputs))
    x, labels = inputs()
    with pytest.raises(RuntimeError, match='FCNHead never called cls_seg'):
        head.loss(x, samples(labels), None)


def test_labels_of_the_batch_padding_name_seg_pad_val():
    # SegDataPreProcessor pads label maps with its seg_pad_val (255); a
    # head ignoring another value got the annotations blamed.
    head = sar_head(fcn_cfg(ignore_index=100))
    preprocessor = MODELS.build(dict(
        type='SegDataPreProcessor', mean=[0, 0, 0], std=[1, 1, 1],
        size=(36, 36)))
    x, _ = inputs()
    labels = torch.randint(0, C, (2, 1, 32, 32),
                           generator=torch.Generator().manual_seed(0))
    batch = preprocessor(dict(inputs=[torch.zeros(3, 32, 32)] * 2,
                              data_samples=samples(labels)), training=True)
    with pytest.raises(ValueError, match=r'padding holds label\(s\) 255, '
                       r'neither a class.*seg_pad_val=100'):
        head.loss(x, batch['data_samples'], None)
    # The fix the message names.
    preprocessor = MODELS.build(dict(
        type='SegDataPreProcessor', mean=[0, 0, 0], std=[1, 1, 1],
        size=(36, 36), seg_pad_val=100))
    batch = preprocessor(dict(inputs=[torch.zeros(3, 32, 32)] * 2,
                              data_samples=samples(labels)), training=True)
    assert 'loss_sar_pull' in head.loss(x, batch['data_samples'], None)


def test_bad_labels_inside_the_image_still_blame_the_annotations():
    head = sar_head(fcn_cfg(ignore_index=100))
    preprocessor = MODELS.build(dict(
        type='SegDataPreProcessor', mean=[0, 0, 0], std=[1, 1, 1],
        size=(36, 36), seg_pad_val=100))
    x, _ = inputs()
    labels = torch.zeros(2, 1, 32, 32, dtype=torch.long)
    labels[0, 0, 3, 3] = 255
    batch = preprocessor(dict(inputs=[torch.zeros(3, 32, 32)] * 2,
                              data_samples=samples(labels)), training=True)
    with pytest.raises(ValueError, match='Fix the annotations'):
        head.loss(x, batch['data_samples'], None)
