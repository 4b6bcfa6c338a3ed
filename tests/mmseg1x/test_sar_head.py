"""SARHead and SemanticAnchorLoss through mmseg 1.x's registry, on CPU."""
import pytest
import torch
from mmseg.registry import MODELS

from helpers1x import fcn_cfg, image_batch, inputs, samples, segmentor_cfg
from sar.checkpoints import sar_to_plain_state_dict

SAR_KEYS = {'loss_sar_pull', 'loss_sar_anchor_ce', 'sar.anchor_acc',
            'sar.gate_open', 'sar.iters_since_init', 'sar.anchor_max_cos',
            'sar.nonfinite'}


def sar_head(head=None, **sar_loss):
    torch.manual_seed(0)
    return MODELS.build(dict(type='SARHead', head=head or fcn_cfg(),
                             sar_loss=dict(type='SemanticAnchorLoss',
                                           **sar_loss)))


def test_registered_in_mmsegs_models():
    import sar
    assert MODELS.get('SARHead') is sar.SARHead
    assert MODELS.get('SemanticAnchorLoss') is sar.SemanticAnchorLoss
    assert sar.SARHead.__module__ == 'sar.mmseg1x.sar_head'


def test_exposes_what_segmentors_read():
    head = sar_head(fcn_cfg(ignore_index=7, align_corners=True,
                            num_classes=2, out_channels=2, threshold=0.4))
    for name in ('num_classes', 'out_channels', 'align_corners',
                 'ignore_index', 'threshold', 'channels', 'in_channels',
                 'in_index', 'input_transform', 'conv_seg'):
        assert getattr(head, name) is getattr(head.head, name), name
    assert head.sar_loss.ignore_index == 7
    assert head.sar_loss.num_classes == 2 and head.sar_loss.channels == 8
    model = MODELS.build(segmentor_cfg())
    assert (model.num_classes, model.out_channels, model.align_corners) == \
        (3, 3, False)


def test_state_dict_keys_are_the_0x_layout():
    head = sar_head()
    plain = MODELS.build(fcn_cfg())
    keys = set(head.state_dict())
    assert {k[len('head.'):] for k in keys if k.startswith('head.')} == \
        set(plain.state_dict())
    assert all(k.startswith(('head.', 'sar_loss.')) for k in keys)


def test_loss_keys_stable_and_tensors_of_one_value():
    head = sar_head()
    x, labels = inputs()
    seen = []
    for _ in range(3):
        losses = head.loss(x, samples(labels), None)
        seen.append(set(losses))
        for key, value in losses.items():
            assert torch.is_tensor(value) and value.numel() == 1, key
    assert seen[0] == seen[1] == seen[2] == SAR_KEYS | {'loss_ce', 'acc_seg'}


def test_parse_losses_logs_diagnostics_and_sums_only_losses():
    model = MODELS.build(segmentor_cfg())
    imgs, batch = image_batch()
    losses = model.loss(imgs, batch)
    total, log_vars = model.parse_losses(losses)
    want = sum(v for k, v in losses.items() if 'loss' in k)
    assert torch.allclose(total, want)
    everything = sum(v.sum() for v in losses.values())
    assert not torch.allclose(total, everything)  # acc and sar.* left out
    for key in SAR_KEYS:
        assert f'decode.{key}' in log_vars, key
    assert all('loss' not in k for k in SAR_KEYS if k.startswith('sar.'))


def test_predict_and_forward_are_the_wrapped_heads():
    head = sar_head(fcn_cfg(dropout_ratio=0.5)).eval()
    plain = MODELS.build(fcn_cfg(dropout_ratio=0.5)).eval()
    plain.load_state_dict({k[5:]: v for k, v in head.state_dict().items()
                           if k.startswith('head.')})
    x, _ = inputs()
    metas = [dict(img_shape=(32, 32))] * 2
    calls = []
    head.sar_loss.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        assert torch.equal(head.predict(x, metas, None),
                           plain.predict(x, metas, None))
        assert torch.equal(head(x), plain(x))
    assert not calls  # no SAR work at test time


def test_features_are_taken_before_dropout():
    head = sar_head(fcn_cfg(dropout_ratio=0.9))
    x, labels = inputs()
    seen = {}

    def spy(module, args):
        seen['feats'] = args[0]

    head.sar_loss.register_forward_pre_hook(spy)
    head.loss(x, samples(labels), None)
    with torch.no_grad():
        expected = head.head._forward_feature(x)
    assert torch.allclose(seen['feats'], expected, atol=1e-6)
    assert 'cls_seg' not in head.head.__dict__  # interception undone


def test_labels_are_the_samples_gt_sem_seg():
    head = sar_head(pull_mode='after_init')
    head.sar_loss.initialised.fill_(True)
    head.sar_loss.semantic_anchors.normal_()
    x, labels = inputs()
    got = {}

    def spy(module, args):
        got['labels'] = args[1]

    head.sar_loss.register_forward_pre_hook(spy)
    head.loss(x, samples(labels), None)
    assert torch.equal(got['labels'], labels)


def test_anchor_ce_uses_the_heads_own_classifier_without_dropout():
    head = sar_head(fcn_cfg(dropout_ratio=0.9))
    x, labels = inputs()
    losses = head.loss(x, samples(labels), None)
    grads = torch.autograd.grad(losses['loss_sar_anchor_ce'],
                                [head.head.conv_seg.weight])
    assert grads[0].abs().sum() > 0
    with torch.no_grad():
        e = head.sar_loss.embed_anchors()
        want = head.head.conv_seg(e[:, :, None, None]).flatten(1)
    assert torch.equal(head._classify_anchors(e), want)


def test_segmentor_gradient_paths():
    model = MODELS.build(segmentor_cfg())
    imgs, batch = image_batch()
    losses = model.loss(imgs, batch)
    sar = model.decode_head.sar_loss
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    proj = list(sar.projector.parameters())
    cls = [model.decode_head.head.conv_seg.weight]
    g = torch.autograd.grad(losses['decode.loss_sar_anchor_ce'],
                            backbone + proj + cls, allow_unused=True)
    nb = len(backbone)
    assert all(x is None for x in g[:nb])  # never the backbone
    assert all(x is not None and x.abs().sum() > 0 for x in g[nb:])
    sar.pull_mode = 'after_init'
    sar.initialised.fill_(True)
    sar.semantic_anchors.normal_()
    pull = model.loss(imgs, batch)['decode.loss_sar_pull']
    assert pull.item() > 0
    g = torch.autograd.grad(pull, backbone + proj + cls, allow_unused=True)
    assert sum(x.abs().sum() for x in g[:nb] if x is not None) > 0
    assert all(x is None or x.abs().sum() == 0 for x in g[nb:])


def plain_and_sar():
    """(plain, sar) segmentors with the same weights, in eval mode."""
    torch.manual_seed(0)
    sar_model = MODELS.build(segmentor_cfg())
    plain = MODELS.build(segmentor_cfg(sar=False))
    plain.load_state_dict(sar_to_plain_state_dict(sar_model.state_dict()))
    return plain.eval(), sar_model.eval()


@pytest.mark.parametrize('test_cfg', [
    dict(mode='whole'),
    dict(mode='slide', crop_size=(24, 24), stride=(16, 16)),
])
def test_segmentor_inference_identical_to_plain(test_cfg):
    from mmengine.config import ConfigDict
    plain, sar_model = plain_and_sar()
    imgs, batch = image_batch(B=1, size=40)
    for model in (plain, sar_model):
        model.test_cfg = ConfigDict(test_cfg)
    with torch.no_grad():
        a, b = (m.predict(imgs, batch) for m in (plain, sar_model))
    assert torch.equal(a[0].seg_logits.data, b[0].seg_logits.data)
    assert torch.equal(a[0].pred_sem_seg.data, b[0].pred_sem_seg.data)


def test_flip_tta_identical_to_plain():
    from mmseg.models import SegTTAModel
    plain, sar_model = plain_and_sar()
    imgs, batch = image_batch(B=1, size=32)
    batch[0].set_metainfo(dict(img_path='a.png', flip=False))
    flipped = [s.clone() for s in batch]
    for s in flipped:
        s.set_metainfo(dict(flip=True, flip_direction='horizontal'))
    data = dict(inputs=[imgs[0], imgs[0].flip(-1)],
                data_samples=[batch, flipped])
    outs = []
    for model in (plain, sar_model):
        tta = SegTTAModel(module=model)
        with torch.no_grad():
            outs.append(tta.test_step(dict(
                inputs=[[i] for i in data['inputs']],
                data_samples=data['data_samples'])))
    assert torch.equal(outs[0][0].pred_sem_seg.data,
                       outs[1][0].pred_sem_seg.data)


def test_cascade_wraps_the_last_head():
    norm = NORM = dict(type='BN')
    cfg = segmentor_cfg(
        type='CascadeEncoderDecoder', num_stages=2,
        decode_head=[
            dict(type='FCNHead', in_channels=64, channels=8, num_convs=1,
                 num_classes=3, norm_cfg=NORM, concat_input=False),
            dict(type='SARHead', head=dict(
                type='OCRHead', in_channels=64, channels=8,
                ocr_channels=4, num_classes=3, norm_cfg=norm))],
        sar=False)
    model = MODELS.build(cfg)
    imgs, batch = image_batch()
    losses = model.loss(imgs, batch)
    assert {f'decode_1.{k}' for k in SAR_KEYS} <= set(losses)
    assert 'decode_0.loss_ce' in losses
    assert not any(k.startswith('decode_0.sar') for k in losses)
    total, _ = model.parse_losses(losses)
    total.backward()
    assert model.decode_head[1].sar_loss.projector.fc1.weight.grad.abs() \
        .sum() > 0
    model.eval()
    plain = MODELS.build(segmentor_cfg(
        type='CascadeEncoderDecoder', num_stages=2,
        decode_head=[cfg.decode_head[0], cfg.decode_head[1]['head']],
        sar=False)).eval()
    plain.load_state_dict(sar_to_plain_state_dict(model.state_dict()))
    with torch.no_grad():
        a, b = (m.predict(imgs, batch) for m in (plain, model))
    assert torch.equal(a[0].seg_logits.data, b[0].seg_logits.data)


def test_val_step_does_not_move_the_sar_state():
    model = MODELS.build(segmentor_cfg())
    sar = model.decode_head.sar_loss
    sar.initialised.fill_(True)
    sar.iters_since_init.fill_(5)
    sar.semantic_anchors.normal_()
    before = {k: v.clone() for k, v in sar.state_dict().items()}
    imgs, batch = image_batch()
    model.eval()
    with torch.no_grad():
        model.val_step(dict(inputs=list(imgs), data_samples=batch))
        model.loss(imgs, batch)  # a loss in eval mode learns nothing
    for key, value in sar.state_dict().items():
        assert torch.equal(value, before[key]), key
    model.train()
    model.loss(imgs, batch)
    assert sar.iters_since_init.item() == 6


def test_anchor_math_stays_fp32_under_bf16_autocast():
    from mmengine.runner.amp import autocast
    head = sar_head(pull_mode='after_init')
    head.sar_loss.initialised.fill_(True)
    head.sar_loss.semantic_anchors.uniform_()
    x, labels = inputs()
    dtypes = []
    head.sar_loss.projector.register_forward_hook(
        lambda m, a, out: dtypes.append(out.dtype))
    state = {k: v.clone() for k, v in head.state_dict().items()}
    reference = head.loss(x, samples(labels), None)
    head.load_state_dict(state)
    with autocast(device_type='cpu', dtype=torch.bfloat16):
        mixed = head.loss(x, samples(labels), None)
        seen_feats = head.head._forward_feature(x).dtype
    assert seen_feats == torch.bfloat16  # autocast really was on
    assert dtypes == [torch.float32, torch.float32]
    for key in ('loss_sar_pull', 'loss_sar_anchor_ce'):
        assert mixed[key].dtype == torch.float32, key
        assert torch.isfinite(mixed[key])
    assert mixed['loss_sar_anchor_ce'].item() == pytest.approx(
        reference['loss_sar_anchor_ce'].item(), rel=1e-6)
    assert mixed['loss_sar_pull'].item() == pytest.approx(
        reference['loss_sar_pull'].item(), rel=3e-2)
    mixed['loss_sar_pull'].backward()


def test_segmentor_trains_a_step_under_bf16_autocast():
    # mmengine's AmpOptimWrapper refuses the CPU; its autocast does not.
    from mmengine.optim import OptimWrapper
    from mmengine.runner.amp import autocast
    model = MODELS.build(segmentor_cfg())
    sar = model.decode_head.sar_loss
    sar.pull_mode = 'after_init'
    sar.initialised.fill_(True)
    sar.semantic_anchors.normal_()
    wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01))
    imgs, batch = image_batch()
    with autocast(device_type='cpu', dtype=torch.bfloat16):
        log_vars = model.train_step(dict(inputs=list(imgs),
                                         data_samples=batch), wrapper)
    for key in ('decode.loss_sar_pull', 'decode.loss_sar_anchor_ce'):
        assert log_vars[key].dtype == torch.float32, key
        assert torch.isfinite(log_vars[key]) and log_vars[key] > 0, key
    assert all(p.dtype == torch.float32 for p in model.parameters())
