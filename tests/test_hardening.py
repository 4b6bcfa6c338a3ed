"""Bad configs and bad data: clear errors at build time, no NaN in the state,
fp32 anchor math under autocast (the collapse warning: test_core_collapse)."""
import math

import pytest
import torch
from mmcv.utils import Config
from mmseg.models import build_head

from sar.core import SemanticAnchorRegularizer
from sar.mmseg0x.runtime import check_custom_imports

from test_sar_head import fcn_cfg, inputs, sar_head

C, D = 3, 8  # the classes and channels of test_sar_head's FCN head


# (setting, value, what the message must say)
BAD_SETTINGS = [
    ('anchor_init', 'uniform', "anchor_init must be one of .*'uniform'.*"
     "anchor_init='gaussian'"),
    ('distance', 'l1', "distance must be one of .*'l1'.*distance='mse'"),
    ('pull_mode', 'always', "pull_mode must be one of .*'always'"),
    ('anchor_source', 'feats', 'anchor_source must be one of'),
    ('pull_weight', -0.1, r'pull_weight must be a finite number >= 0, got '
     r'-0.1; the paper uses pull_weight=0.1'),
    ('pull_weight', math.nan, 'pull_weight must be a finite number'),
    ('anchor_ce_weight', math.inf, 'anchor_ce_weight must be a finite'),
    ('filter_conf', 0.0, r'filter_conf must lie in \(0, 1\], got 0.0; the '
     'paper uses filter_conf=0.9'),
    ('filter_conf', 1.5, r'filter_conf must lie in \(0, 1\]'),
    ('update_conf', 1.0, r'update_conf must lie in \(0, 1\), got 1.0'),
    ('update_conf', -0.2, r'update_conf must lie in \(0, 1\)'),
    ('ema_momentum', 1.0, r'ema_momentum must lie in \[0, 1\), got 1.0'),
    ('ema_momentum', -0.5, r'ema_momentum must lie in \[0, 1\)'),
]


@pytest.mark.parametrize('key,value,message', BAD_SETTINGS)
def test_bad_settings_are_refused_at_build_time(key, value, message):
    with pytest.raises(ValueError, match=message):
        SemanticAnchorRegularizer(C, D, **{key: value})
    with pytest.raises(ValueError, match=message):  # and through mmseg
        sar_head(**{key: value})


@pytest.mark.parametrize('key,value', [('filter_conf', 1.0),
                                       ('ema_momentum', 0.0),
                                       ('pull_weight', 0.0)])
def test_edge_values_that_make_sense_are_accepted(key, value):
    reg = SemanticAnchorRegularizer(C, D, **{key: value})
    assert getattr(reg, key) == value


def test_bad_loss_weight_is_refused():
    with pytest.raises(ValueError, match='loss_weight must be a finite'):
        sar_head(loss_weight=-1.0)


@pytest.mark.parametrize('key,value', [('num_classes', 5), ('channels', 4),
                                       ('ignore_index', 0)])
def test_loss_settings_that_disagree_with_the_head_are_refused(key, value):
    with pytest.raises(ValueError, match=f'sar_loss.{key}={value} disagrees '
                       f'with the wrapped FCNHead.*remove sar_loss.{key}'):
        sar_head(**{key: value})
    agreeing = {'num_classes': C, 'channels': D, 'ignore_index': 255}[key]
    sar_head(**{key: agreeing})  # the same value is fine


def test_sar_head_cannot_wrap_a_sar_head():
    inner = dict(type='SARHead', head=fcn_cfg())
    with pytest.raises(TypeError, match='cannot wrap another SARHead'):
        build_head(dict(type='SARHead', head=inner))


def test_config_without_custom_imports_gets_the_fix_named():
    cfg = Config(dict(model=dict(decode_head=dict(type='SARHead',
                                                  head=fcn_cfg()))))
    with pytest.warns(UserWarning, match=r"custom_imports = dict\(imports="
                      r"\['sar'\]"):
        assert check_custom_imports(cfg) is not None
    cfg.custom_imports = dict(imports=['sar'], allow_failed_imports=False)
    assert check_custom_imports(cfg) is None
    plain = Config(dict(model=dict(decode_head=fcn_cfg())))
    assert check_custom_imports(plain) is None


# --- bad data at run time ----------------------------------------------------

@pytest.mark.parametrize('bad', [[3], [7, 19], [-1]])
def test_out_of_range_labels_are_named(bad):
    head = sar_head()
    x, gt = inputs()
    for i, value in enumerate(bad):
        gt[1, 0, 5, i] = value
    shown = ', '.join(str(v) for v in sorted(bad))
    with pytest.raises(ValueError, match=rf'{len(bad)} value\(s\) that are '
                       rf'neither a class in \[0, 2\] nor the ignore index '
                       rf'255: {shown}\. Fix the annotations'):
        head.forward_train(x, [{}] * 2, gt, None)
    reg = SemanticAnchorRegularizer(C, D)  # plain torch, same message
    with pytest.raises(ValueError, match=rf'ignore index 255: {shown}'):
        reg(torch.rand(2, D, 8, 8), gt, torch.nn.Linear(D, C))


def test_all_ignored_batch_gives_zero_and_changes_nothing():
    head = sar_head(pull_mode='after_init')
    x, gt = inputs()
    head.forward_train(x, [{}] * 2, gt, None)  # a normal step first
    sar = head.sar_loss
    sar.initialised.fill_(True)
    sar.semantic_anchors.normal_()
    # an oracle classifier would open the gate; the labels must close it
    with torch.no_grad():
        head.head.conv_seg.weight.mul_(0)
    before = {k: v.clone() for k, v in sar.state_dict().items()
              if 'projector' not in k}
    ignored = torch.full_like(gt, 255)
    losses = head.sar_loss(torch.rand(2, D, 8, 8, requires_grad=True),
                           ignored, lambda e: 50.0 * torch.eye(C) + 0 *
                           e[:, :C])
    assert losses['loss_sar_pull'].item() == 0
    assert losses['loss_sar_anchor_ce'].item() == 0
    assert losses['sar.gate_open'].item() == 0
    assert all(torch.isfinite(v).all() for v in losses.values())
    for key, value in sar.state_dict().items():
        if key in before and key != 'iters_since_init':
            assert torch.equal(value, before[key]), key


@pytest.mark.parametrize('where', ['features', 'anchors'])
def test_non_finite_steps_leave_the_state_finite(where):
    reg = SemanticAnchorRegularizer(C, D, pull_mode='after_init')
    oracle = lambda e: 50.0 * torch.eye(C) + 0 * e[:, :C]  # noqa: E731
    feats = torch.rand(2, D, 4, 4)
    labels = torch.randint(0, C, (2, 4, 4))
    reg(feats, labels, oracle)  # the gate opens: S is set
    assert reg.initialised
    before = reg.semantic_anchors.clone()
    if where == 'features':
        feats = feats.clone()
        feats[0, 0, 0, 0] = math.nan
    else:
        with torch.no_grad():
            reg.projector.fc2.weight[0, 0] = math.inf
    out = reg(feats, labels, oracle)
    assert out['nonfinite'].item() == 1 and out['gate_open'].item() == 0
    assert torch.equal(reg.semantic_anchors, before)
    for key, value in reg.state_dict().items():
        if value.is_floating_point() and 'projector' not in key:
            assert torch.isfinite(value).all(), key
    healthy = SemanticAnchorRegularizer(C, D)(torch.rand(2, D, 4, 4), labels,
                                              oracle)
    assert healthy['nonfinite'].item() == 0


def test_anchor_math_stays_fp32_under_bf16_autocast():
    head = sar_head(pull_mode='after_init')
    head.sar_loss.initialised.fill_(True)
    head.sar_loss.semantic_anchors.uniform_()
    x, gt = inputs()
    dtypes = []
    head.sar_loss.projector.register_forward_hook(
        lambda m, a, out: dtypes.append(out.dtype))
    state = {k: v.clone() for k, v in head.state_dict().items()}
    reference = head.forward_train(x, [{}] * 2, gt, None)
    head.load_state_dict(state)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        mixed = head.forward_train(x, [{}] * 2, gt, None)
        seen_feats = head.head._forward_feature(x).dtype
    assert seen_feats == torch.bfloat16  # autocast really was on
    assert dtypes == [torch.float32, torch.float32]
    for key in ('loss_sar_pull', 'loss_sar_anchor_ce'):
        assert mixed[key].dtype == torch.float32, key
        assert torch.isfinite(mixed[key])
    # The anchor path does not see the features: identical in fp32.
    assert mixed['loss_sar_anchor_ce'].item() == pytest.approx(
        reference['loss_sar_anchor_ce'].item(), rel=1e-6)
    # The pull sees bf16 features: equal to their precision.
    assert mixed['loss_sar_pull'].item() == pytest.approx(
        reference['loss_sar_pull'].item(), rel=3e-2)
    mixed['loss_sar_pull'].backward()


def test_sar_trains_under_mmcvs_fp16_machinery(monkeypatch):
    """mmseg 0.30's fp16 (Fp16OptimizerHook): wrap_fp16_model, then
    auto_fp16 casts the images to half and runs under CUDA autocast. Here
    CPU float16 autocast stands in for CUDA's, with the pull active."""
    import functools

    from mmcv.cnn.utils import revert_sync_batchnorm
    from mmcv.runner import fp16_utils, wrap_fp16_model
    from mmseg.models import build_segmentor

    from conftest import DEMO_SAR, tiny_batch
    cfg = Config.fromfile(DEMO_SAR)
    cfg.model.decode_head.sar_loss.pull_mode = 'after_init'
    model = revert_sync_batchnorm(build_segmentor(cfg.model))
    model.init_weights()
    model.train()
    sar = model.decode_head.sar_loss
    sar.initialised.fill_(True)
    sar.semantic_anchors.normal_()
    wrap_fp16_model(model)
    monkeypatch.setattr(fp16_utils, 'autocast', functools.partial(
        torch.autocast, 'cpu', dtype=torch.float16))
    feats = []
    model.decode_head.head.register_forward_hook(
        lambda m, a, out: feats.append(out.dtype))
    img, metas, gt = tiny_batch()
    losses = model(img, metas, gt_semantic_seg=gt)
    assert feats == [torch.float16]  # the head really ran in half
    for key in ('decode.loss_sar_pull', 'decode.loss_sar_anchor_ce'):
        assert losses[key].dtype == torch.float32, key
        assert torch.isfinite(losses[key]) and losses[key] > 0, key
    loss, _ = model._parse_losses(losses)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert all(p.dtype == torch.float32 for p in model.parameters())


# --- checkpoint files --------------------------------------------------------

@pytest.mark.parametrize('keep', [0.5, 0.0])
def test_truncated_checkpoint_is_refused_and_changes_nothing(tmp_path, keep):
    from mmcv.runner import load_checkpoint, save_checkpoint
    head = sar_head()
    path = str(tmp_path / 'iter_9.pth')
    save_checkpoint(head, path)
    with open(path, 'rb') as f:
        data = f.read()
    with open(path, 'wb') as f:
        f.write(data[:int(len(data) * keep)])
    torch.manual_seed(1)
    other = sar_head()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(RuntimeError, match='iter_9.pth is not a complete '
                       'checkpoint.*nothing was loaded.*--resume-from'):
        load_checkpoint(other, path, map_location='cpu')
    for key, value in other.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_checkpoint_write_is_all_or_nothing(tmp_path, monkeypatch):
    from mmcv.fileio.file_client import HardDiskBackend
    from mmcv.runner import save_checkpoint
    from mmcv.runner import load_checkpoint
    head = sar_head()
    path = str(tmp_path / 'latest_good.pth')
    save_checkpoint(head, path)
    with open(path, 'rb') as f:
        good = f.read()

    def put_half_then_fail(backend, obj, filepath):
        with open(filepath, 'wb') as f:
            f.write(obj[:len(obj) // 2])
        raise KeyboardInterrupt  # as a kill would stop the write

    monkeypatch.setattr(HardDiskBackend, 'put', put_half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(head, path)
    with open(path, 'rb') as f:
        assert f.read() == good  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ['latest_good.pth']
    monkeypatch.undo()
    load_checkpoint(sar_head(), path, map_location='cpu', strict=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason='needs a CPU machine')
def test_other_load_errors_are_not_called_truncation(tmp_path):
    from mmcv.runner import load_checkpoint, save_checkpoint
    path = str(tmp_path / 'whole.pth')
    save_checkpoint(sar_head(), path)
    with pytest.raises(RuntimeError) as err:  # CUDA asked of a CPU machine
        load_checkpoint(sar_head(), path, map_location='cuda')
    assert 'not a complete checkpoint' not in str(err.value)


def test_a_killed_save_leaves_nothing_behind_after_the_next(tmp_path):
    from mmcv.runner import save_checkpoint
    path = tmp_path / 'iter_4.pth'
    stale = tmp_path / '.iter_4.pth.tmp'  # what a SIGKILL mid-save leaves
    stale.write_bytes(b'PK\x03\x04 half a checkpoint')
    save_checkpoint(sar_head(), str(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ['iter_4.pth']
    assert torch.load(path, weights_only=False)['state_dict']


# --- fp16 settings -----------------------------------------------------------

def fp16_cfg(**entries):
    return Config(dict(optimizer_config=dict(grad_clip=None), **entries))


def test_fp16_dict_turns_the_optimizer_hook_to_fp16(monkeypatch):
    from sar.mmseg0x.runtime import resolve_fp16
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    cfg = fp16_cfg(fp16=dict(loss_scale='dynamic'))
    note = resolve_fp16(cfg)
    assert cfg.optimizer_config == dict(type='Fp16OptimizerHook',
                                        grad_clip=None, loss_scale='dynamic')
    assert 'Fp16OptimizerHook' in note
    cumulative = Config(dict(fp16=dict(loss_scale=512.), optimizer_config=dict(
        type='GradientCumulativeOptimizerHook', cumulative_iters=4)))
    resolve_fp16(cumulative)
    assert cumulative.optimizer_config == dict(
        type='GradientCumulativeFp16OptimizerHook', cumulative_iters=4,
        loss_scale=512.)
    # mmcv builds both hooks from what resolve_fp16 wrote.
    from mmcv.runner import HOOKS
    from mmcv.utils import build_from_cfg
    for done in (cfg, cumulative):
        hook = build_from_cfg(dict(done.optimizer_config), HOOKS)
        assert type(hook).__name__ == done.optimizer_config.type
    # mmseg's own fp16 configs: the hook set, fp16 = dict() a placeholder.
    own = fp16_cfg(fp16=dict())
    own.optimizer_config = dict(type='Fp16OptimizerHook', loss_scale=512.)
    assert resolve_fp16(own) is None
    assert own.optimizer_config == dict(type='Fp16OptimizerHook',
                                        loss_scale=512.)
    plain = fp16_cfg()
    assert resolve_fp16(plain) is None
    assert plain.optimizer_config == dict(grad_clip=None)


def test_fp16_settings_that_cannot_work_are_refused(monkeypatch):
    from sar.mmseg0x.runtime import resolve_fp16
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    odd = Config(dict(fp16=dict(loss_scale=512.),
                      optimizer_config=dict(type='MyOwnHook')))
    with pytest.raises(ValueError, match='MyOwnHook, which has no fp16 twin'):
        resolve_fp16(odd)
    both = fp16_cfg(fp16=dict(loss_scale='dynamic'))
    both.optimizer_config = dict(type='Fp16OptimizerHook', loss_scale=512.)
    with pytest.raises(ValueError, match='keep the loss scale in one'):
        resolve_fp16(both)
    with pytest.raises(ValueError, match='no optimizer_config'):
        resolve_fp16(Config(dict(fp16=dict(loss_scale='dynamic'))))
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    for cfg, fix in (
            (fp16_cfg(fp16=dict(loss_scale='dynamic')), 'drop fp16'),
            (Config(dict(fp16=dict(), optimizer_config=dict(
                type='Fp16OptimizerHook'))), "type to 'OptimizerHook'")):
        with pytest.raises(ValueError, match='fp16 training needs a CUDA '
                           f'device.*Train in fp32 here: .*{fix}'):
            resolve_fp16(cfg)


def test_fp16_dict_fills_in_what_the_fp16_hook_lacks(monkeypatch):
    from sar.mmseg0x.runtime import resolve_fp16
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    cfg = Config(dict(fp16=dict(loss_scale=512),
                      optimizer_config=dict(type='Fp16OptimizerHook')))
    assert 'loss_scale' in resolve_fp16(cfg)
    # An int scale becomes the float that mmcv's hook accepts.
    assert cfg.optimizer_config == dict(type='Fp16OptimizerHook',
                                        loss_scale=512.)
    assert isinstance(cfg.optimizer_config.loss_scale, float)
    # An int already in the hook's settings, and the hook named by class.
    from mmcv.runner import Fp16OptimizerHook
    as_class = Config(dict(optimizer_config=dict(type=Fp16OptimizerHook,
                                                 loss_scale=256)))
    assert resolve_fp16(as_class) is None
    assert as_class.optimizer_config.loss_scale == 256.
    assert isinstance(as_class.optimizer_config.loss_scale, float)
    anomaly = Config(dict(
        fp16=dict(loss_scale='dynamic'),
        optimizer_config=dict(detect_anomalous_params=True, grad_clip=None)))
    resolve_fp16(anomaly)
    assert anomaly.optimizer_config == dict(
        type='Fp16OptimizerHook', grad_clip=None, loss_scale='dynamic')


def test_the_generation_free_loss_base_names_what_it_lacks():
    from sar.core.wrapping import SemanticAnchorLossBase
    with pytest.raises(TypeError, match='staticmethod.*build_norm_layer'):
        SemanticAnchorLossBase(3, 8)
