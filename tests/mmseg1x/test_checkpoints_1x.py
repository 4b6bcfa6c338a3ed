"""Checkpoints under mmseg 1.x: a plain mmengine checkpoint loads into the
SAR model with only SAR's state fresh, a SAR checkpoint loads fully into the
baseline twin, and a converted checkpoint of the authors' release loads
strictly into the paper's 1.x SAR config."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MessageHub, MMLogger
from mmengine.model import revert_sync_batchnorm
from mmengine.runner import load_checkpoint, save_checkpoint
from mmseg.registry import MODELS

from accumulation import force_gate_open
from helpers1x import ROOT, image_batch, segmentor_cfg
from release_state import release_from_plain
from sar.checkpoints import official_to_sar_state_dict

CONFIGS = osp.join(ROOT, 'configs', 'mmseg1x')


def test_plain_mmengine_checkpoint_loads_into_the_sar_model(tmp_path):
    torch.manual_seed(0)
    plain = MODELS.build(segmentor_cfg(sar=False)).eval()
    # The layout mmengine's runner writes: weights, meta and the message
    # hub's logging records (numpy values, read weights-only on torch 2.6+).
    hub = MessageHub.get_instance('plain_ckpt_test')
    hub.update_scalar('train/loss', 0.5)
    path = str(tmp_path / 'plain.pth')
    save_checkpoint(dict(meta=dict(iter=4), state_dict=plain.state_dict(),
                         message_hub=hub.state_dict()), path)
    sar = MODELS.build(segmentor_cfg()).eval()
    fresh = {k: v.clone() for k, v in sar.state_dict().items()
             if '.sar_loss.' in k}
    load_checkpoint(sar, path, map_location='cpu', strict=False)
    for key, value in plain.state_dict().items():
        ours = key.replace('decode_head.', 'decode_head.head.', 1)
        assert torch.equal(sar.state_dict()[ours], value), key
    for key, value in fresh.items():  # only SAR's state starts fresh
        assert torch.equal(sar.state_dict()[key], value), key
    imgs, batch = image_batch(B=1, size=32)
    with torch.no_grad():
        assert torch.equal(sar.predict(imgs, batch)[0].seg_logits.data,
                           plain.predict(imgs, batch)[0].seg_logits.data)


def build_eval(config):
    cfg = Config.fromfile(config)
    cfg.model.pretrained = None  # no download; weights come from the test
    return revert_sync_batchnorm(MODELS.build(cfg.model)).eval()


def test_official_hr48_release_loads_strictly_into_the_paper_config():
    torch.manual_seed(0)
    name = 'fcn_hr48_4xb2-80k_cityscapes-512x1024.py'
    plain = build_eval(osp.join(CONFIGS, 'baseline', name))
    sar = build_eval(osp.join(CONFIGS, 'sar', f'sar_{name}'))
    release = release_from_plain(plain, C=19, D=720)
    sar.load_state_dict(official_to_sar_state_dict(release), strict=True)
    state = sar.decode_head.sar_loss
    assert torch.equal(state.init_anchors, release['random_center'])
    assert torch.equal(state.semantic_anchors,
                       release['momentum_center_feat'])
    assert bool(state.initialised)
    # Test time: the SAR model is the plain FCN model with the same weights.
    img = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    metas = [dict(img_shape=(32, 32), ori_shape=(32, 32),
                  pad_shape=(32, 32))]
    with torch.no_grad():
        ours = sar.encode_decode(img, metas)
        theirs = plain.encode_decode(img, metas)
    assert ours.shape == (1, 19, 32, 32)
    assert torch.equal(ours, theirs)


def test_plain_head_with_its_own_head_child_loads_under_the_wrapper():
    # DDRHead has a child module called `head`: its plain keys include
    # `head.0.*` and must still be moved under the wrapper's `head.`.
    cfg = dict(type='DDRHead', in_channels=8, channels=8, num_classes=3,
               norm_cfg=dict(type='BN'))
    plain = MODELS.build(cfg)
    assert any(k.startswith('head.') for k in plain.state_dict())
    with torch.no_grad():
        for value in plain.state_dict().values():
            if value.is_floating_point():
                value.uniform_()  # differ from a fresh build
    sar = MODELS.build(dict(type='SARHead', head=cfg))
    missing, unexpected = sar.load_state_dict(plain.state_dict(),
                                              strict=False)
    assert unexpected == []
    assert missing and all(k.startswith('sar_loss.') for k in missing)
    for key, value in plain.state_dict().items():
        assert torch.equal(sar.state_dict()[f'head.{key}'], value), key


def test_plain_checkpoint_without_classifier_loads_the_rest_of_the_head():
    # Fine-tuning to other classes: the classifier's keys are dropped.
    plain = MODELS.build(segmentor_cfg(sar=False))
    with torch.no_grad():
        for value in plain.state_dict().values():
            if value.is_floating_point():
                value.uniform_()
    stripped = {k: v for k, v in plain.state_dict().items()
                if 'conv_seg' not in k}
    sar = MODELS.build(segmentor_cfg())
    _, unexpected = sar.load_state_dict(stripped, strict=False)
    assert unexpected == []
    for key, value in stripped.items():
        ours = key.replace('decode_head.', 'decode_head.head.', 1)
        assert torch.equal(sar.state_dict()[ours], value), key


@pytest.mark.parametrize('change', [dict(num_classes=4), dict(channels=16)],
                         ids=['other_classes', 'other_width'])
def test_fine_tuning_from_a_sar_checkpoint_starts_sar_afresh(
        tmp_path, monkeypatch, change):
    # mmengine's load_checkpoint (strict=False, as the runner's load_from)
    # skips the anchors for their shapes; SAR's other state must not load
    # alone.
    from sar.core import downsample_labels, pull_loss
    torch.manual_seed(0)
    source = MODELS.build(segmentor_cfg())
    state = source.decode_head.sar_loss
    state.initialised.fill_(True)
    state.iters_since_init.fill_(9)
    state.semantic_anchors.normal_()
    path = str(tmp_path / 'sar.pth')
    save_checkpoint(dict(meta=dict(iter=9), state_dict=source.state_dict()),
                    path)
    head = dict(type='FCNHead', in_channels=64, channels=8, num_convs=1,
                num_classes=3, dropout_ratio=0.1, norm_cfg=dict(type='BN'))
    head.update(change)
    cfg = segmentor_cfg(decode_head=head)
    cfg.decode_head.sar_loss = dict(type='SemanticAnchorLoss',
                                    pull_mode='after_init')

    def build():
        torch.manual_seed(3)
        return MODELS.build(cfg)

    model, fresh = build(), build()
    C, D = change.get('num_classes', 3), change.get('channels', 8)
    log = tmp_path / 'run.log'
    MMLogger.get_instance(f'finetune_{sorted(change)[0]}',
                          log_file=str(log))  # the run's current logger
    with pytest.warns(UserWarning, match=r'does not fit this model: '
                      r'init_anchors \(3, 8\) in the checkpoint, '
                      rf'\({C}, {D}\) here'):
        load_checkpoint(model, path, map_location='cpu', strict=False)
    # The run's log says why SAR's keys are left out.
    text = log.read_text()
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
    imgs, batch = image_batch(num_classes=C)
    model.train()
    losses = model.loss(imgs, batch)
    embedded = sar.embed_anchors().detach()
    torch.testing.assert_close(sar.semantic_anchors, embedded)
    labels = torch.stack([s.gt_sem_seg.data for s in batch])
    want = 0.1 * pull_loss(feats[0], downsample_labels(
        labels, feats[0].shape[2:]), embedded, 255)
    assert losses['decode.loss_sar_pull'].item() == pytest.approx(
        want.item(), rel=1e-5)
    assert losses['decode.sar.iters_since_init'].item() == 0


def test_resuming_a_fitting_sar_checkpoint_loads_it_whole_and_silently(
        tmp_path):
    import warnings
    torch.manual_seed(0)
    source = MODELS.build(segmentor_cfg())
    source.decode_head.sar_loss.initialised.fill_(True)
    source.decode_head.sar_loss.iters_since_init.fill_(9)
    source.decode_head.sar_loss.semantic_anchors.normal_()
    path = str(tmp_path / 'sar.pth')
    save_checkpoint(dict(meta=dict(iter=9), state_dict=source.state_dict()),
                    path)
    torch.manual_seed(1)
    model = MODELS.build(segmentor_cfg())
    with warnings.catch_warnings():
        warnings.simplefilter('error', UserWarning)
        load_checkpoint(model, path, map_location='cpu', strict=True)
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def randomized(model):
    """``model`` with every float parameter and buffer drawn anew, so that
    a weight nobody loaded differs from a loaded one."""
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if 'running_var' in name:
                value.uniform_(0.5, 1.5)
            elif value.is_floating_point():
                value.uniform_(-0.1, 0.1)
    return model


def test_sar_checkpoint_loads_fully_into_the_baseline_twin(tmp_path):
    # mmengine loads non-strictly (tools/test.py, load_from, init_model):
    # the twin's decode head stayed random, with only a key warning.
    torch.manual_seed(0)
    sar = randomized(MODELS.build(segmentor_cfg())).eval()
    path = str(tmp_path / 'sar.pth')
    save_checkpoint(dict(meta=dict(iter=4), state_dict=sar.state_dict()),
                    path)
    torch.manual_seed(1)
    twin = MODELS.build(segmentor_cfg(sar=False)).eval()
    with pytest.warns(UserWarning, match='tools/export_plain.py'):
        load_checkpoint(twin, path, map_location='cpu')
    for key, value in twin.state_dict().items():
        ours = key.replace('decode_head.', 'decode_head.head.', 1)
        assert torch.equal(sar.state_dict()[ours], value), key
    imgs, batch = image_batch(B=1, size=32)
    with torch.no_grad():
        assert torch.equal(sar.predict(imgs, batch)[0].seg_logits.data,
                           twin.predict(imgs, batch)[0].seg_logits.data)
    # strictly too: nothing of SAR's is left over
    load_checkpoint(twin, path, map_location='cpu', strict=True)


def test_sar_models_still_load_sar_checkpoints_as_they_are(tmp_path):
    torch.manual_seed(0)
    sar = randomized(MODELS.build(segmentor_cfg()))
    path = str(tmp_path / 'sar.pth')
    save_checkpoint(dict(state_dict=sar.state_dict()), path)
    again = MODELS.build(segmentor_cfg())
    load_checkpoint(again, path, map_location='cpu', strict=True)
    for key, value in sar.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
