"""SARHead and SemanticAnchorLoss through mmseg's registries, on CPU."""

import pytest
import torch
from mmcv.cnn.utils import revert_sync_batchnorm
from mmcv.utils import Config
from mmseg.models import build_head, build_loss, build_segmentor
from mmseg.models.builder import HEADS, LOSSES

from accumulation import force_gate_open
from conftest import DEMO_BASELINE, DEMO_SAR, tiny_batch
from sar.checkpoints import sar_to_plain_state_dict

SAR_KEYS = {'loss_sar_pull', 'loss_sar_anchor_ce', 'sar.anchor_acc',
            'sar.gate_open', 'sar.iters_since_init', 'sar.anchor_max_cos',
            'sar.nonfinite'}


def fcn_cfg(**kwargs):
    cfg = dict(type='FCNHead', in_channels=6, channels=8, num_convs=1,
               num_classes=3, dropout_ratio=0.0, norm_cfg=dict(type='BN'))
    cfg.update(kwargs)
    return cfg


def sar_head(head=None, **sar_loss):
    torch.manual_seed(0)
    return build_head(dict(type='SARHead', head=head or fcn_cfg(),
                           sar_loss=dict(type='SemanticAnchorLoss',
                                         **sar_loss)))


def inputs(B=2, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = [torch.randn(B, 6, size, size, generator=g)]
    gt = torch.randint(0, 3, (B, 1, size * 4, size * 4), generator=g)
    gt[0, :, :4] = 255
    return x, gt


def test_registered():
    assert 'SARHead' in HEADS.module_dict
    assert 'SemanticAnchorLoss' in LOSSES.module_dict


def test_exposes_the_wrapped_heads_attributes():
    head = sar_head(fcn_cfg(ignore_index=7, align_corners=True))
    for name in ('num_classes', 'out_channels', 'align_corners',
                 'ignore_index', 'channels', 'in_channels', 'input_transform'):
        assert getattr(head, name) == getattr(head.head, name), name
    assert head.sar_loss.ignore_index == 7  # taken from the head
    assert head.sar_loss.num_classes == 3 and head.sar_loss.channels == 8


def test_state_dict_maps_to_the_plain_head():
    head = sar_head()
    plain = build_head(fcn_cfg())
    keys = set(head.state_dict())
    inner = {k[len('head.'):] for k in keys if k.startswith('head.')}
    assert inner == set(plain.state_dict())
    assert all(k.startswith(('head.', 'sar_loss.')) for k in keys)


def test_loss_keys_stable_and_diagnostics_not_losses():
    head = sar_head()
    x, gt = inputs()
    seen = []
    for step in range(3):
        losses = head.forward_train(x, [{}] * 2, gt, None)
        seen.append(set(losses))
        for key, value in losses.items():
            assert torch.is_tensor(value) and value.numel() == 1, key
    assert seen[0] == seen[1] == seen[2] == SAR_KEYS | {'loss_ce', 'acc_seg'}
    assert all('loss' not in k for k in SAR_KEYS if k.startswith('sar.'))


def test_forward_test_is_the_wrapped_head():
    head = sar_head(fcn_cfg(dropout_ratio=0.5)).eval()
    plain = build_head(fcn_cfg(dropout_ratio=0.5)).eval()
    plain.load_state_dict({k[5:]: v for k, v in head.state_dict().items()
                           if k.startswith('head.')})
    x, _ = inputs()
    with torch.no_grad():
        assert torch.equal(head.forward_test(x, [{}] * 2, None),
                           plain.forward_test(x, [{}] * 2, None))
    # and no SAR work at test time
    calls = []
    head.sar_loss.register_forward_hook(lambda *a: calls.append(1))
    head.forward_test(x, [{}] * 2, None)
    assert not calls


def test_features_are_taken_before_dropout():
    head = sar_head(fcn_cfg(dropout_ratio=0.9))
    x, gt = inputs()
    seen = {}

    def spy(module, args):
        seen['feats'] = args[0]

    head.sar_loss.register_forward_pre_hook(spy)
    head.forward_train(x, [{}] * 2, gt, None)
    with torch.no_grad():
        expected = head.head._forward_feature(x)
    # Dropout at 0.9 would zero ~90% of the entries.
    assert torch.allclose(seen['feats'], expected, atol=1e-6)
    assert 'cls_seg' not in head.head.__dict__  # interception undone


def spy_on_sar_labels(head):
    """Records the labels each call of the head's SAR loss receives."""
    seen = []
    head.sar_loss.register_forward_pre_hook(
        lambda module, args: seen.append(args[1]))
    return seen


def test_labels_are_the_batchs_gt_semantic_seg():
    # Pixel for pixel: not flipped, cropped, resized or cast on the way
    # (the 1.x suite's test_labels_are_the_samples_gt_sem_seg).
    head = sar_head(pull_mode='after_init')
    head.sar_loss.initialised.fill_(True)
    head.sar_loss.semantic_anchors.normal_()
    x, gt = inputs()
    seen = spy_on_sar_labels(head)
    head.forward_train(x, [{}] * 2, gt, None)
    assert len(seen) == 1 and torch.equal(seen[0], gt)


def test_segmentor_hands_sar_the_batchs_gt_semantic_seg():
    _, model = build_pair()
    img, metas, gt = tiny_batch()
    seen = spy_on_sar_labels(model.decode_head)
    model.train()
    model.train_step(dict(img=img, img_metas=metas, gt_semantic_seg=gt),
                     None)
    assert len(seen) == 1 and torch.equal(seen[0], gt)


def test_anchor_ce_uses_the_heads_own_classifier():
    head = sar_head()
    x, gt = inputs()
    losses = head.forward_train(x, [{}] * 2, gt, None)
    grads = torch.autograd.grad(losses['loss_sar_anchor_ce'],
                                [head.head.conv_seg.weight])
    assert grads[0].abs().sum() > 0
    with torch.no_grad():
        e = head.sar_loss.embed_anchors()
        want = head.head.conv_seg(e[:, :, None, None]).flatten(1)
    assert torch.allclose(head._classify_anchors(e), want)


def test_projector_norm_follows_the_head():
    head = sar_head(fcn_cfg(norm_cfg=dict(type='GN', num_groups=2)))
    assert type(head.sar_loss.projector.norm1).__name__ == 'GroupNorm'
    head = sar_head(norm_cfg=dict(type='SyncBN'))
    assert type(head.sar_loss.projector.norm1).__name__ == 'SyncBatchNorm'
    with pytest.raises(ValueError, match="type='BN'"):
        sar_head(norm_cfg=dict(type='LN'))


@pytest.mark.parametrize('head_cfg', [
    dict(type='PointHead', in_channels=[6], in_index=[0], channels=8,
         num_fcs=1, coarse_pred_each_layer=True, num_classes=3),
    dict(type='SegmenterMaskTransformerHead', in_channels=6, channels=6,
         num_classes=3, num_layers=1, num_heads=2, embed_dims=6),
    dict(type='IterativeDecodeHead', num_stages=1,
         kernel_generate_head=fcn_cfg(),
         kernel_update_head=[dict(type='KernelUpdateHead', num_classes=3,
                                  in_channels=8, out_channels=8,
                                  feedforward_channels=16, num_heads=2,
                                  num_ffn_fcs=2, conv_kernel_size=1,
                                  kernel_updator_cfg=dict(
                                      type='KernelUpdator', in_channels=8,
                                      feat_channels=8, out_channels=8))]),
])
def test_unsupported_heads_fail_at_build_time_with_the_reason(head_cfg):
    with pytest.raises(TypeError, match='SARHead cannot wrap .*conv_seg.*'
                       'Supported: heads derived from mmseg BaseDecodeHead'):
        sar_head(head_cfg)


def test_binary_single_output_head_is_refused():
    with pytest.raises(ValueError, match='out_channels=num_classes'):
        sar_head(fcn_cfg(num_classes=2, out_channels=1))


def test_loss_name_must_be_a_loss():
    with pytest.raises(ValueError, match="start with 'loss_'"):
        sar_head(loss_name='sar')
    loss = build_loss(dict(type='SemanticAnchorLoss', num_classes=3,
                           channels=4, loss_name='loss_anchor'))
    assert loss.loss_name == 'loss_anchor'


# --- whole segmentors -------------------------------------------------------

def build_pair():
    """(plain, sar) demo segmentors with identical shared weights."""
    torch.manual_seed(0)
    sar_model = revert_sync_batchnorm(build_segmentor(
        Config.fromfile(DEMO_SAR).model))
    plain = revert_sync_batchnorm(build_segmentor(
        Config.fromfile(DEMO_BASELINE).model))
    plain.load_state_dict(sar_to_plain_state_dict(sar_model.state_dict()))
    return plain, sar_model


@pytest.mark.parametrize('test_cfg', [
    dict(mode='whole'),
    dict(mode='slide', crop_size=(24, 24), stride=(16, 16)),
])
@pytest.mark.parametrize('aug', [False, True])
def test_segmentor_inference_identical_to_plain(test_cfg, aug):
    plain, sar_model = build_pair()
    for model in (plain, sar_model):
        model.test_cfg = Config(test_cfg)
        model.eval()
    img, metas, _ = tiny_batch(B=1, size=40)
    metas[0]['ori_shape'] = (40, 40, 3)
    with torch.no_grad():
        if aug:
            # multi-scale + flip TTA, as tools/test.py --aug-test feeds it
            imgs = [img,
                    torch.nn.functional.interpolate(img, scale_factor=1.5),
                    img.flip(-1)]
            flipped = dict(metas[0], flip=True, flip_direction='horizontal')
            scaled = dict(metas[0], img_shape=(60, 60, 3))
            all_metas = [metas, [scaled], [flipped]]
            a = plain.aug_test(imgs, all_metas, rescale=True)
            b = sar_model.aug_test(imgs, all_metas, rescale=True)
        else:
            a = plain.inference(img, metas, rescale=True)
            b = sar_model.inference(img, metas, rescale=True)
    a, b = (torch.as_tensor(x) if not torch.is_tensor(x) else x
            for x in (a, b))
    assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))


def test_segmentor_train_step_and_gradient_paths():
    _, model = build_pair()
    img, metas, gt = tiny_batch()
    model.train()
    losses = model.forward_train(img, metas, gt)
    assert {f'decode.{k}' for k in SAR_KEYS} <= set(losses)
    sar = model.decode_head.sar_loss
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    proj = list(sar.projector.parameters())
    cls = [model.decode_head.head.conv_seg.weight]
    ce = losses['decode.loss_sar_anchor_ce']
    g = torch.autograd.grad(ce, backbone + proj + cls, allow_unused=True,
                            retain_graph=True)
    nb = len(backbone)
    assert all(x is None for x in g[:nb])  # never the backbone
    assert all(x is not None and x.abs().sum() > 0 for x in g[nb:])
    # Force the gate open so the pull is non-zero, then check its paths.
    sar.pull_mode = 'after_init'
    sar.initialised.fill_(True)
    sar.semantic_anchors.normal_()
    losses = model.forward_train(img, metas, gt)
    pull = losses['decode.loss_sar_pull']
    assert pull.item() > 0
    g = torch.autograd.grad(pull, backbone + proj + cls, allow_unused=True)
    assert sum(x.abs().sum() for x in g[:nb] if x is not None) > 0
    assert all(x is None or x.abs().sum() == 0 for x in g[nb:])


def test_parse_losses_counts_only_real_losses():
    _, model = build_pair()
    img, metas, gt = tiny_batch()
    losses = model.forward_train(img, metas, gt)
    loss, log_vars = model._parse_losses(losses)
    want = sum(v for k, v in losses.items() if 'loss' in k)
    assert torch.allclose(loss, want)
    assert 'decode.sar.gate_open' in log_vars


# --- settings that reach the core through the wrapper ------------------------

def test_anchors_are_classified_without_dropout():
    head = sar_head(fcn_cfg(dropout_ratio=0.9))
    head.train()
    x, gt = inputs()
    from sar.core import anchor_ce
    for _ in range(2):  # dropout would make every call differ
        losses = head.forward_train(x, [{}] * 2, gt, None)
        with torch.no_grad():
            e = head.sar_loss.embed_anchors()
            logits = head.head.conv_seg(e[:, :, None, None]).flatten(1)
            want, _ = anchor_ce(logits, head.sar_loss.filter_conf)
        assert losses['loss_sar_anchor_ce'].item() == pytest.approx(
            want.item(), rel=1e-6)
        assert torch.equal(head._classify_anchors(e), logits)


@pytest.mark.parametrize('loss_weight', [0.0, 0.25, 3.0])
def test_loss_weight_scales_both_sar_losses(loss_weight):
    x, gt = inputs()
    outs = []
    for weight in (1.0, loss_weight):
        head = sar_head(loss_weight=weight, pull_mode='after_init')
        head.sar_loss.initialised.fill_(True)
        head.sar_loss.semantic_anchors.fill_(0.5)
        outs.append(head.forward_train(x, [{}] * 2, gt, None))
    base, scaled = outs
    assert base['loss_sar_pull'].item() > 0
    assert base['loss_sar_anchor_ce'].item() > 0
    for key in ('loss_sar_pull', 'loss_sar_anchor_ce'):
        assert scaled[key].item() == pytest.approx(
            loss_weight * base[key].item(), rel=1e-6, abs=1e-12), key
    for key in ('sar.anchor_acc', 'sar.gate_open', 'loss_ce'):
        assert scaled[key].item() == pytest.approx(base[key].item()), key


@pytest.mark.parametrize('head_ignore,sar_ignore', [(None, -1), (2, 2),
                                                    (255, 255)])
def test_ignore_index_comes_from_the_head(head_ignore, sar_ignore):
    head = sar_head(fcn_cfg(ignore_index=head_ignore),
                    pull_mode='after_init')
    assert head.sar_loss.ignore_index == sar_ignore
    S = torch.randn(3, 8)
    head.sar_loss.initialised.fill_(True)
    head.sar_loss.semantic_anchors.copy_(S)
    x, gt = inputs()
    gt[gt == 255] = 1  # every label valid, so ignore=None can take them all
    # The SAR loss alone: mmseg 0.30's own CE refuses ignore_index=None.
    with torch.no_grad():
        feats = head.head._forward_feature(x)
    losses = head.sar_loss(feats, gt, head._classify_anchors)
    small = gt[:, 0, ::4, ::4]  # nearest from 32 to 8: every 4th pixel
    per_pixel = ((feats - S[small].permute(0, 3, 1, 2)) ** 2).mean(1)
    keep = small != sar_ignore
    want = 0.1 * per_pixel[keep].mean()
    assert losses['loss_sar_pull'].item() == pytest.approx(want.item(),
                                                           rel=1e-5)
    if head_ignore == 2:  # pixels of class 2 are out: another value
        assert per_pixel.mean().item() != pytest.approx(
            per_pixel[keep].mean().item(), rel=1e-4)


@pytest.mark.parametrize('norm', ['IN', 'IN2d', 'BN1d', 'LN'])
def test_unfit_projector_norms_are_refused_at_build_time(norm):
    with pytest.raises(ValueError, match=f"type '{norm}' cannot serve the "
                       r"anchor projector.*sar_loss=dict\(norm_cfg=dict\("
                       r"type='BN'\)\)"):
        sar_head(fcn_cfg(norm_cfg=dict(type=norm)))
    # The fix the message names works with the same head.
    fits_the_head = norm in ('IN', 'IN2d')  # BN1d/LN break FCN's own convs
    head = sar_head(fcn_cfg(norm_cfg=dict(type=norm)) if fits_the_head
                    else None, norm_cfg=dict(type='BN'))
    x, gt = inputs()
    assert 'loss_sar_anchor_ce' in head.forward_train(x, [{}] * 2, gt, None)


def test_one_class_head_is_refused_at_build_time():
    with pytest.raises(ValueError, match='num_classes >= 2'):
        sar_head(fcn_cfg(num_classes=1))


def test_val_workflow_does_not_move_the_sar_state():
    _, model = build_pair()
    img, metas, gt = tiny_batch()
    data = dict(img=img, img_metas=metas, gt_semantic_seg=gt)
    sar = model.decode_head.sar_loss
    sar.initialised.fill_(True)
    sar.iters_since_init.fill_(5)
    sar.semantic_anchors.normal_()
    before = {k: v.clone() for k, v in sar.state_dict().items()}
    model.eval()
    with torch.no_grad():  # what mmcv's runner.val does for ('val', 1)
        model.val_step(data)
    for key, value in sar.state_dict().items():
        assert torch.equal(value, before[key]), key
    model.train()
    model.train_step(data, None)
    assert sar.iters_since_init.item() == 6


# --- checkpoints both ways through mmcv's load_checkpoint --------------------

def test_plain_checkpoint_loads_fully_into_the_sar_model(tmp_path):
    from mmcv.runner import load_checkpoint, save_checkpoint
    plain, sar_model = build_pair()
    torch.manual_seed(7)
    trained = revert_sync_batchnorm(build_segmentor(
        Config.fromfile(DEMO_BASELINE).model))  # other weights than the pair
    path = str(tmp_path / 'plain.pth')
    save_checkpoint(trained, path)
    anchors = sar_model.decode_head.sar_loss.init_anchors.clone()
    load_checkpoint(sar_model, path, map_location='cpu')
    state = sar_model.state_dict()
    for key, value in trained.state_dict().items():
        ours = key.replace('decode_head.', 'decode_head.head.', 1) \
            if key.startswith('decode_head.') else key
        assert torch.equal(state[ours], value), key
    assert torch.equal(sar_model.decode_head.sar_loss.init_anchors, anchors)
    img, metas, _ = tiny_batch(B=1, size=40)
    with torch.no_grad():
        a = trained.eval().encode_decode(img, metas)
        b = sar_model.eval().encode_decode(img, metas)
    assert torch.equal(a, b)


def test_plain_checkpoint_without_classifier_loads_the_rest_of_the_head():
    # Fine-tuning to other classes: the classifier's keys are dropped from
    # the plain checkpoint; the rest of the head must still load.
    from mmcv.runner import load_state_dict
    plain, sar_model = build_pair()
    with torch.no_grad():
        for value in plain.state_dict().values():
            if value.is_floating_point():
                value.uniform_()  # differ from the SAR model's build
    stripped = {k: v for k, v in plain.state_dict().items()
                if 'conv_seg' not in k}
    load_state_dict(sar_model, stripped)
    state = sar_model.state_dict()
    for key, value in stripped.items():
        ours = key.replace('decode_head.', 'decode_head.head.', 1)
        assert torch.equal(state[ours], value), key


def test_sar_checkpoint_round_trips_and_exports(tmp_path):
    from mmcv.runner import load_checkpoint, save_checkpoint
    _, sar_model = build_pair()
    sar_model.decode_head.sar_loss.semantic_anchors.normal_()
    path = str(tmp_path / 'sar.pth')
    save_checkpoint(sar_model, path)
    torch.manual_seed(3)
    again = revert_sync_batchnorm(build_segmentor(
        Config.fromfile(DEMO_SAR).model))
    load_checkpoint(again, path, map_location='cpu', strict=True)
    for key, value in sar_model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    # and back to a plain model, strictly, through the exported keys
    plain = revert_sync_batchnorm(build_segmentor(
        Config.fromfile(DEMO_BASELINE).model))
    exported = str(tmp_path / 'plain.pth')
    torch.save(dict(state_dict=sar_to_plain_state_dict(
        sar_model.state_dict())), exported)
    load_checkpoint(plain, exported, map_location='cpu', strict=True)
    img, metas, _ = tiny_batch(B=1, size=40)
    with torch.no_grad():
        assert torch.equal(plain.eval().encode_decode(img, metas),
                           sar_model.eval().encode_decode(img, metas))


@pytest.mark.parametrize('change', [dict(num_classes=3), dict(channels=60)],
                         ids=['other_classes', 'other_width'])
def test_fine_tuning_from_a_sar_checkpoint_starts_sar_afresh(
        tmp_path, monkeypatch, change):
    # mmcv's load_checkpoint (strict=False, as a runner's load_from) skips
    # the anchors for their shapes; SAR's other state must not load alone.
    from mmcv.runner import load_checkpoint, save_checkpoint
    from mmcv.utils import get_logger
    from sar.core import downsample_labels, pull_loss
    _, source = build_pair()
    state = source.decode_head.sar_loss
    state.initialised.fill_(True)
    state.iters_since_init.fill_(9)
    state.semantic_anchors.normal_()
    path = str(tmp_path / 'sar.pth')
    save_checkpoint(source, path)
    cfg = Config.fromfile(DEMO_SAR)
    cfg.model.decode_head.head.update(change)
    cfg.model.decode_head.sar_loss.pull_mode = 'after_init'

    def build():
        torch.manual_seed(3)
        return revert_sync_batchnorm(build_segmentor(cfg.model))

    model, fresh = build(), build()
    log = tmp_path / 'run.log'
    logger = get_logger(f'finetune_{sorted(change)[0]}', log_file=str(log))
    with pytest.warns(UserWarning, match=r'does not fit this model: '
                      r'init_anchors \(4, 120\) in the checkpoint, '
                      rf'\({change.get("num_classes", 4)}, '
                      rf'{change.get("channels", 120)}\) here'):
        load_checkpoint(model, path, map_location='cpu', logger=logger)
    # The run's log says why, beside mmcv's list of missing keys.
    text = log.read_text()
    assert 'missing keys in source state_dict' in text
    assert 'does not fit this model' in text and 'SAR starts afresh' in text
    sar = model.decode_head.sar_loss
    for key, value in fresh.decode_head.sar_loss.state_dict().items():
        assert torch.equal(sar.state_dict()[key], value), key
    assert not sar.initialised and sar.iters_since_init.item() == -1
    for key, value in source.backbone.state_dict().items():  # still loads
        assert torch.equal(model.backbone.state_dict()[key], value), key
    # The first open gate copies E, and the pull draws toward it.
    force_gate_open(monkeypatch)
    feats = []
    sar.register_forward_pre_hook(lambda m, args: feats.append(args[0]))
    img, metas, gt = tiny_batch(num_classes=change.get('num_classes', 4))
    model.train()
    losses = model.forward_train(img, metas, gt)
    embedded = sar.embed_anchors().detach()
    torch.testing.assert_close(sar.semantic_anchors, embedded)
    small = downsample_labels(gt, feats[0].shape[2:])
    want = 0.1 * pull_loss(feats[0], small, embedded, 255)
    assert losses['decode.loss_sar_pull'].item() == pytest.approx(
        want.item(), rel=1e-5)
    assert losses['decode.sar.iters_since_init'].item() == 0


def test_prototype_ablation_is_a_config_switch():
    x, gt = inputs()
    losses = {}
    for source in ('embedded', 'prototype'):
        head = sar_head(anchor_source=source)
        opt = torch.optim.SGD(head.parameters(), lr=0.1)
        for _ in range(2):
            out = head.forward_train(x, [{}] * 2, gt, None)
            opt.zero_grad()
            sum(v for k, v in out.items() if 'loss' in k).backward()
            opt.step()
        losses[source] = out
    assert set(losses['embedded']) == set(losses['prototype'])
    proto = losses['prototype']
    assert proto['loss_sar_pull'].item() > 0  # pulls from the first step
    assert proto['loss_sar_anchor_ce'].item() == 0
    assert losses['embedded']['loss_sar_anchor_ce'].item() > 0
    assert not hasattr(head.sar_loss.projector, 'fc1')
    assert head.sar_loss.class_seen.all()  # every class was in the batch


def test_sar_checkpoint_loads_into_a_plain_model_through_the_tools_hook(
        tmp_path):
    from mmcv.runner import load_checkpoint, save_checkpoint
    from sar.mmseg0x.runtime import accept_sar_checkpoints
    _, sar_model = build_pair()
    path = str(tmp_path / 'sar.pth')
    save_checkpoint(sar_model, path)
    torch.manual_seed(11)
    plain = accept_sar_checkpoints(revert_sync_batchnorm(build_segmentor(
        Config.fromfile(DEMO_BASELINE).model)))
    with pytest.warns(UserWarning, match='anchor branch is dropped'):
        load_checkpoint(plain, path, map_location='cpu', strict=True)
    img, metas, _ = tiny_batch(B=1, size=40)
    with torch.no_grad():
        assert torch.equal(plain.eval().encode_decode(img, metas),
                           sar_model.eval().encode_decode(img, metas))
    # a SAR model is left as it is (its head's own hook serves it)
    assert accept_sar_checkpoints(sar_model) is sar_model
    assert not sar_model._load_state_dict_pre_hooks
