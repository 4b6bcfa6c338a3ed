"""Checkpoint mapping: SAR -> plain, and the authors' release -> SAR."""
import os
import os.path as osp
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch

from conftest import ROOT
from release_state import release_from_plain
from sar.checkpoints import (is_sar_state_dict, official_to_sar_state_dict,
                             sar_to_plain_state_dict)
from sar.checkpoints.safe_load import load_weights_only


def test_sar_to_plain_single_and_cascade():
    t = torch.zeros(1)
    sar = OrderedDict([
        ('backbone.conv.weight', t), ('decode_head.head.conv_seg.weight', t),
        ('decode_head.sar_loss.init_anchors', t),
        ('decode_head.sar_loss.projector.fc1.weight', t),
        ('decode_head.0.conv_seg.weight', t),
        ('decode_head.1.head.conv_seg.bias', t),
        ('decode_head.1.sar_loss.semantic_anchors', t),
        ('auxiliary_head.conv_seg.weight', t)])
    plain = sar_to_plain_state_dict(sar)
    assert list(plain) == [
        'backbone.conv.weight', 'decode_head.conv_seg.weight',
        'decode_head.0.conv_seg.weight', 'decode_head.1.conv_seg.bias',
        'auxiliary_head.conv_seg.weight']
    assert is_sar_state_dict(sar) and not is_sar_state_dict(plain)
    with pytest.raises(ValueError, match='not a SAR state dict'):
        sar_to_plain_state_dict(plain)


def official_state_dict(C=3, D=4, initialised=True):
    """A state dict in the release's layout, with recognisable values."""
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    def bn(prefix):
        return {f'{prefix}.weight': r(D), f'{prefix}.bias': r(D),
                f'{prefix}.running_mean': r(D), f'{prefix}.running_var':
                r(D).abs(), f'{prefix}.num_batches_tracked': torch.tensor(5)}

    sd = OrderedDict()
    sd['backbone.stem.weight'] = r(2, 2)
    sd['random_center'] = r(C, D)
    sd['center_lbl'] = torch.arange(C)
    sd['local_iter'] = torch.tensor([80000])
    sd['update_flag'] = torch.tensor(1 if initialised else 0)
    sd['momentum_center_feat'] = r(C, D)
    sd['projecter_linear.0.weight'] = r(D, D)
    sd['projecter_linear.0.bias'] = r(D)
    sd.update(bn('projecter_linear.1'))
    sd['projecter_linear.3.weight'] = r(D, D)
    sd['projecter_linear.3.bias'] = r(D)
    sd.update(bn('projecter_linear.4'))
    sd['projecter.conv.weight'] = r(D, D, 1, 1)
    sd.update(bn('projecter.bn'))
    sd['decode_head.conv_seg.weight'] = r(C, D, 1, 1)
    sd['decode_head.conv_seg.bias'] = r(C)
    sd['decode_head.convs.0.conv.weight'] = r(D, 6, 1, 1)
    return sd


def test_official_to_sar_maps_every_key():
    src = official_state_dict()
    out = official_to_sar_state_dict(src)
    s = 'decode_head.sar_loss.'
    assert torch.equal(out[s + 'init_anchors'], src['random_center'])
    assert torch.equal(out[s + 'semantic_anchors'],
                       src['momentum_center_feat'])
    assert out[s + 'initialised'].dtype == torch.bool
    assert bool(out[s + 'initialised'])
    assert out[s + 'iters_since_init'].item() == 0
    assert torch.equal(out[s + 'projector.fc1.weight'],
                       src['projecter_linear.0.weight'])
    assert torch.equal(out[s + 'projector.norm2.running_var'],
                       src['projecter_linear.4.running_var'])
    assert torch.equal(out[s + 'projector.proj.weight'],
                       src['projecter.conv.weight'].flatten(1))
    assert torch.equal(out[s + 'projector.norm3.bias'],
                       src['projecter.bn.bias'])
    assert torch.equal(out['decode_head.head.conv_seg.weight'],
                       src['decode_head.conv_seg.weight'])
    assert 'backbone.stem.weight' in out


def test_official_state_loads_into_the_sar_module_strictly():
    from sar.core import SemanticAnchorRegularizer
    C, D = 3, 4
    out = official_to_sar_state_dict(official_state_dict(C, D, False))
    sar = {k[len('decode_head.sar_loss.'):]: v for k, v in out.items()
           if k.startswith('decode_head.sar_loss.')}
    module = SemanticAnchorRegularizer(C, D)
    module.load_state_dict(sar, strict=True)
    assert not module.initialised and module.iters_since_init.item() == -1


def test_official_unknown_keys_are_reported():
    src = official_state_dict()
    src['mystery.weight'] = torch.zeros(1)
    with pytest.raises(ValueError, match='mystery.weight'):
        official_to_sar_state_dict(src)


def test_convert_official_tool_round_trip(tmp_path):
    src = tmp_path / 'theirs.pth'
    torch.save({'state_dict': official_state_dict(), 'meta': {'iter': 3}},
               src)
    out = tmp_path / 'ours.pth'
    tool = f'{ROOT}/tools/convert_official.py'
    run = subprocess.run([sys.executable, tool, str(src), str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    got = load_weights_only(out)['state_dict']
    assert torch.equal(got['decode_head.sar_loss.init_anchors'],
                       official_state_dict()['random_center'])
    again = subprocess.run([sys.executable, tool, str(src), str(out)],
                           capture_output=True, text=True)
    assert again.returncode != 0 and '--force' in again.stderr


def test_official_anchors_out_of_class_order_are_refused():
    src = official_state_dict(C=3)
    src['center_lbl'] = torch.tensor([0, 2, 1])
    with pytest.raises(ValueError, match=r'center_lbl is \[0, 2, 1\]'):
        official_to_sar_state_dict(src)


# --------------------------------------------------------------------------
# The paper's model: HRNetV2-W48 + FCN on Cityscapes (C=19, D=720), in the
# exact layout of the release's SAR segmentor.
HR48_SAR = osp.join(ROOT, 'configs', 'sar',
                    'sar_fcn_hr48_4xb2-80k_cityscapes-512x1024.py')
HR48_BASE = osp.join(ROOT, 'configs', 'baseline',
                     'fcn_hr48_4xb2-80k_cityscapes-512x1024.py')


def _build_eval(config):
    from mmcv.cnn.utils import revert_sync_batchnorm
    from mmcv.utils import Config
    from mmseg.models import build_segmentor
    cfg = Config.fromfile(config)
    cfg.model.pretrained = None  # no download; weights come from the test
    return revert_sync_batchnorm(build_segmentor(cfg.model)).eval()


@pytest.fixture(scope='module')
def hr48_release():
    """(release state dict, plain model holding its weights, SAR model)."""
    torch.manual_seed(0)
    plain = _build_eval(HR48_BASE)
    sar = _build_eval(HR48_SAR)
    release = release_from_plain(plain, C=19, D=720)
    return release, plain, sar


def test_official_hr48_release_loads_strictly_into_the_paper_config(
        hr48_release):
    release, plain, sar = hr48_release
    converted = official_to_sar_state_dict(release)
    sar.load_state_dict(converted, strict=True)
    state = sar.decode_head.sar_loss
    assert torch.equal(state.init_anchors, release['random_center'])
    assert torch.equal(state.semantic_anchors,
                       release['momentum_center_feat'])
    assert state.initialised.dtype == torch.bool and bool(state.initialised)
    assert state.iters_since_init.item() == 0

    # Test time: the SAR model is the plain FCN model with the same weights.
    img = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    metas = [dict(img_shape=(32, 32, 3), ori_shape=(32, 32, 3),
                  pad_shape=(32, 32, 3), scale_factor=1.0, flip=False)]
    with torch.no_grad():
        ours = sar.encode_decode(img, metas)
        theirs = plain.encode_decode(img, metas)
    assert ours.shape == (1, 19, 32, 32)
    assert torch.equal(ours, theirs)


def test_official_hr48_projector_embeds_anchors_as_the_release(hr48_release):
    from mmcv.cnn import ConvModule
    from torch import nn
    release, _, sar = hr48_release
    sar.load_state_dict(official_to_sar_state_dict(release), strict=True)
    D = 720
    # The release's modules, with BN for its SyncBN (one process).
    linear = nn.Sequential(nn.Linear(D, D), nn.BatchNorm1d(D), nn.ReLU(),
                           nn.Linear(D, D), nn.BatchNorm1d(D), nn.ReLU())
    conv = ConvModule(D, D, 1, norm_cfg=dict(type='BN'))
    for module, prefix in ((linear, 'projecter_linear.'),
                           (conv, 'projecter.')):
        module.load_state_dict({k[len(prefix):]: v for k, v in release.items()
                                if k.startswith(prefix)}, strict=True)
    anchors = release['random_center']
    for train in (False, True):  # running statistics, then batch statistics
        for module in (linear, conv, sar.decode_head.sar_loss):
            module.train(train)
        with torch.no_grad():
            expected = conv(linear(anchors)[:, :, None, None]).flatten(1)
            got = sar.decode_head.sar_loss.embed_anchors()
        assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5), train
    sar.eval()


# --------------------------------------------------------------------------
# The export tools with torch alone: mmseg/mmcv hidden, or of another major
# version. `sar/__init__.py` must not run its mmseg set-up for them, and the
# numpy allow-list must still apply to their loading.
_HIDE_OR_RUN = '''
import runpy, sys
mode, sys.argv = sys.argv[1], sys.argv[2:]
if mode == 'hide':
    class Hide:
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in ('mmseg', 'mmcv'):
                raise ImportError('hidden: ' + name)
    sys.meta_path.insert(0, Hide())
sys.path.insert(0, __import__('os').path.dirname(sys.argv[0]))  # as python X
try:
    runpy.run_path(sys.argv[0], run_name='__main__')
finally:
    print('mm modules:', sorted(m for m in sys.modules
                               if m.split('.')[0] in ('mmseg', 'mmcv')))
'''


def _numpy_meta():
    import numpy as np
    return dict(PALETTE=np.array([[0, 0, 0], [220, 20, 60]], dtype=np.uint8),
                best_mIoU=np.float64(0.625), CLASSES=('a', 'b'))


def _run_torch_only(mode, tool, args, tmp_path):
    env = dict(os.environ)
    if mode == 'mmseg1x':
        # What a current OpenMMLab install looks like to `import sar`.
        fake = tmp_path / 'fake_site'
        for name, version in (('mmseg', '1.2.2'), ('mmcv', '2.1.0')):
            (fake / name).mkdir(parents=True)
            (fake / name / '__init__.py').write_text(
                f"__version__ = '{version}'\n")
        env['PYTHONPATH'] = str(fake)
    else:
        env.pop('PYTHONPATH', None)
    return subprocess.run(
        [sys.executable, '-c', _HIDE_OR_RUN, mode,
         osp.join(ROOT, 'tools', tool), *args],
        capture_output=True, text=True, env=env, cwd=str(tmp_path))


@pytest.mark.parametrize('mode', ['hide', 'mmseg1x'])
def test_export_plain_runs_with_torch_alone(mode, tmp_path):
    t = torch.arange(4.0)
    state = OrderedDict([('backbone.conv.weight', t),
                         ('decode_head.head.conv_seg.weight', t + 1),
                         ('decode_head.sar_loss.init_anchors', t + 2)])
    src, out = tmp_path / 'sar.pth', tmp_path / 'plain.pth'
    torch.save(dict(state_dict=state, meta=_numpy_meta()), src)
    run = _run_torch_only(mode, 'export_plain.py', [str(src), str(out)],
                          tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert 'mm modules: []' in run.stdout
    assert 'wrote' in run.stdout and '1 SAR entries dropped' in run.stdout
    got = load_weights_only(out)  # numpy: allowed by sar
    assert list(got['state_dict']) == ['backbone.conv.weight',
                                       'decode_head.conv_seg.weight']
    assert torch.equal(got['state_dict']['decode_head.conv_seg.weight'], t + 1)
    assert got['meta']['best_mIoU'] == 0.625
    assert got['meta']['PALETTE'].tolist() == [[0, 0, 0], [220, 20, 60]]


@pytest.mark.parametrize('mode', ['hide', 'mmseg1x'])
def test_convert_official_runs_with_torch_alone(mode, tmp_path):
    src, out = tmp_path / 'theirs.pth', tmp_path / 'ours.pth'
    torch.save(dict(state_dict=official_state_dict(), meta=_numpy_meta()),
               src)
    run = _run_torch_only(mode, 'convert_official.py', [str(src), str(out)],
                          tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert 'mm modules: []' in run.stdout
    got = load_weights_only(out)['state_dict']
    assert torch.equal(got['decode_head.sar_loss.semantic_anchors'],
                       official_state_dict()['momentum_center_feat'])


def test_read_checkpoint_refuses_arbitrary_objects(tmp_path):
    import argparse
    import pickle

    from sar.checkpoints import read_checkpoint
    path = tmp_path / 'odd.pth'
    torch.save(dict(meta=dict(args=argparse.Namespace(lr=0.01)),
                    state_dict={}), path)
    with pytest.raises(pickle.UnpicklingError, match='argparse.Namespace'):
        read_checkpoint(str(path))
    assert read_checkpoint(str(path), trust=True)['meta']['args'].lr == 0.01


SAR_CONFIG_TEXT = '''crop_size = (512, 1024)
custom_imports = dict(allow_failed_imports=False, imports=[
    'sar',
])
model = dict(
    type='EncoderDecoder',
    decode_head=dict(
        type='SARHead',
        head=dict(
            type='FCNHead',
            num_classes=19,
            norm_cfg=dict(type='SyncBN', requires_grad=True)),
        sar_loss=dict(type='SemanticAnchorLoss', pull_weight=0.1)),
    test_cfg=dict(mode='whole'))
sar_loss = dict(type='SemanticAnchorLoss', pull_weight=0.1)
work_dir = './work_dirs/sar_fcn'
'''
PLAIN_CONFIG_TEXT = '''crop_size = (512, 1024)
model = dict(
    type='EncoderDecoder',
    decode_head=dict(
            type='FCNHead',
            num_classes=19,
            norm_cfg=dict(type='SyncBN', requires_grad=True)),
    test_cfg=dict(mode='whole'))
work_dir = './work_dirs/sar_fcn'
'''


def test_sar_config_text_becomes_the_twins():
    from sar.checkpoints import sar_to_plain_config_text
    assert sar_to_plain_config_text(SAR_CONFIG_TEXT) == PLAIN_CONFIG_TEXT


def test_cascade_config_text_and_other_imports_are_kept():
    import ast

    from sar.checkpoints import sar_to_plain_config_text
    # the last head of a cascade, a {...} literal, two more imports
    text = """custom_imports = dict(imports=['sar', 'sar.extra', 'mine'])
model = dict(
    type='CascadeEncoderDecoder',
    decode_head=[dict(type='FCNHead'), {
        'type': 'SARHead',
        'head': dict(type='OCRHead', num_classes=19),
        'sar_loss': dict(type='SemanticAnchorLoss')}])
work_dir = 'w'
"""
    plain = sar_to_plain_config_text(text)
    module = ast.parse(plain)
    names = [s.targets[0].id for s in module.body]
    assert names == ['custom_imports', 'model', 'work_dir']
    assert "imports=['mine']" in plain
    assert "decode_head=[dict(type='FCNHead'), dict(type='OCRHead', " \
        "num_classes=19)])" in plain


@pytest.mark.parametrize('text,message', [
    ("model = dict(type='EncoderDecoder', decode_head=dict(type='FCNHead'))",
     'no model.decode_head of type SARHead'),
    ('model = dict(', 'not Python'),
    (SAR_CONFIG_TEXT + "auxiliary_head = dict(type='SARHead')\n",
     r"still names \['SARHead'\]"),
])
def test_config_text_that_cannot_become_plain_is_refused(text, message):
    from sar.checkpoints import sar_to_plain_config_text
    with pytest.raises(ValueError, match=message):
        sar_to_plain_config_text(text)


def test_export_plain_writes_the_twins_config_or_none(tmp_path):
    t = torch.arange(4.0)
    state = OrderedDict([('decode_head.head.conv_seg.weight', t),
                         ('decode_head.sar_loss.init_anchors', t)])
    for name, meta in (('mmengine', dict(cfg=SAR_CONFIG_TEXT)),
                       ('mmcv', dict(config=SAR_CONFIG_TEXT)),
                       ('odd', dict(cfg='model = dict(', config=None))):
        src, out = tmp_path / f'{name}.pth', tmp_path / f'{name}_plain.pth'
        torch.save(dict(state_dict=state, meta=meta), src)
        run = subprocess.run([sys.executable, 'tools/export_plain.py',
                              str(src), str(out)], cwd=ROOT,
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr
        got = load_weights_only(out)['meta']
        if name == 'odd':  # dropped, never kept naming SAR
            assert 'cfg' not in got and got['config'] is None
            assert "meta['cfg'] dropped" in run.stdout
        else:
            key, = set(meta)
            assert got[key] == PLAIN_CONFIG_TEXT
            assert f"meta['{key}']: the config, SARHead unwrapped" in \
                run.stdout
