"""Every config in configs/ parses and builds; SAR configs differ from their
baseline twins only by the wrapped decode head; names match settings."""
import glob
import os.path as osp
import re

import pytest
from mmcv.cnn.utils import revert_sync_batchnorm
from mmcv.utils import Config
from mmseg.datasets import DATASETS
from mmseg.datasets.pipelines import Compose
from mmseg.models import build_segmentor

from conftest import ROOT

# configs/mmseg1x holds mmseg 1.x configs: tests/mmseg1x/test_configs.py.
CONFIGS = sorted(
    osp.relpath(p, ROOT)
    for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'),
                       recursive=True)
    if '/_base_/' not in p and '/mmseg1x/' not in p)
SAR_CONFIGS = [c for c in CONFIGS if osp.basename(c).startswith('sar_')]


def test_every_sar_config_has_a_baseline_twin():
    assert len(SAR_CONFIGS) >= 11
    for path in SAR_CONFIGS:
        twin = twin_of(path)
        assert osp.isfile(osp.join(ROOT, twin)), twin


def twin_of(path):
    name = osp.basename(path)[len('sar_'):]
    folder = osp.dirname(path)
    return osp.join(folder if folder.endswith('demo') else 'configs/baseline',
                    name)


@pytest.mark.parametrize('path', CONFIGS)
def test_config_builds(path):
    cfg = Config.fromfile(osp.join(ROOT, path))
    model = revert_sync_batchnorm(build_segmentor(cfg.model))
    assert model is not None
    for split in ('train', 'val', 'test'):
        data = cfg.data[split]
        assert DATASETS.get(data['type']) is not None, data['type']
        data = data.get('dataset', data)  # RepeatDataset and the like
        assert DATASETS.get(data['type']) is not None, data['type']
        Compose(data['pipeline'])  # every transform is registered
    if osp.basename(path).startswith('sar_'):
        assert cfg.custom_imports == dict(imports=['sar'],
                                          allow_failed_imports=False)


def _without_sar(cfg_dict):
    heads = cfg_dict['model']['decode_head']
    if isinstance(heads, list):
        heads[-1] = heads[-1]['head']
    else:
        cfg_dict['model']['decode_head'] = heads['head']
    cfg_dict.pop('custom_imports')
    return cfg_dict


@pytest.mark.parametrize('path', SAR_CONFIGS)
def test_sar_config_only_wraps_the_twins_head(path):
    sar = Config.fromfile(osp.join(ROOT, path))
    base = Config.fromfile(osp.join(ROOT, twin_of(path)))
    heads = sar.model.decode_head
    last = heads[-1] if isinstance(heads, list) else heads
    assert last['type'] == 'SARHead'
    assert last['sar_loss']['type'] == 'SemanticAnchorLoss'
    sar_dict = _without_sar(sar._cfg_dict.to_dict())
    base_dict = base._cfg_dict.to_dict()
    for key in ('norm_cfg', 'hr48_channels', 'sar_loss'):  # helper variables
        sar_dict.pop(key, None)
        base_dict.pop(key, None)
    assert sar_dict == base_dict


NAME = re.compile(r'(?P<gpus>\d+)xb(?P<batch>\d+)-(?P<iters>\d+)k?_.*-'
                  r'(?P<h>\d+)x(?P<w>\d+)\.py$')


@pytest.mark.parametrize('path', [c for c in CONFIGS
                                  if 'configs/demo' not in c])
def test_name_matches_batch_schedule_and_crop(path):
    cfg = Config.fromfile(osp.join(ROOT, path))
    m = NAME.search(osp.basename(path))
    assert m, path
    assert cfg.data.samples_per_gpu == int(m['batch'])
    assert cfg.runner.max_iters == int(m['iters']) * 1000
    crops = [t['crop_size'] for t in cfg.data.train.pipeline
             if t['type'] == 'RandomCrop']
    assert crops == [(int(m['h']), int(m['w']))]


def test_paper_settings():
    for name in ('sar_fcn_hr48_4xb2-80k_cityscapes-512x1024.py',
                 'sar_fcn_hr48_4xb4-160k_ade20k-512x512.py',
                 'sar_fcn_hr48_4xb4-40k_pascal-context-59-480x480.py'):
        cfg = Config.fromfile(osp.join(ROOT, 'configs', 'sar', name))
        head = cfg.model.decode_head
        assert head.head.type == 'FCNHead' and head.head.channels == 720
        assert head.head.input_transform == 'resize_concat'
        assert head.head.num_convs == 1 and head.head.dropout_ratio == -1
        assert cfg.model.backbone.norm_cfg.type == 'SyncBN'
        loss = head.sar_loss
        assert (loss.pull_weight, loss.anchor_ce_weight, loss.filter_conf,
                loss.update_conf, loss.ema_momentum) == (0.1, 1.0, 0.9, 0.8,
                                                         0.999)
        assert cfg.seed == 1270964153
        assert cfg.optimizer.momentum == 0.9 and cfg.lr_config.policy == \
            'poly'
        if 'pascal' in name:
            assert (cfg.optimizer.lr, cfg.optimizer.weight_decay) == \
                (0.004, 1e-4)
            assert cfg.model.test_cfg.mode == 'slide'
        else:
            assert (cfg.optimizer.lr, cfg.optimizer.weight_decay) == \
                (0.01, 5e-4)


def _roundtrip(cfg):
    """The config as a checkpoint's meta['config'] carries it, read back."""
    return Config.fromstring(cfg.pretty_text, '.py')._cfg_dict.to_dict()


@pytest.mark.parametrize('path', SAR_CONFIGS)
def test_exported_config_text_is_the_twins(path):
    # tools/export_plain.py rewrites the config text of the checkpoint's
    # meta: a plain checkpoint must not make mmseg build SAR (or import it).
    from sar.checkpoints import sar_to_plain_config_text
    sar = Config.fromfile(osp.join(ROOT, path))
    plain = Config.fromstring(sar_to_plain_config_text(sar.pretty_text),
                              '.py')._cfg_dict.to_dict()
    base = _roundtrip(Config.fromfile(osp.join(ROOT, twin_of(path))))
    for key in ('norm_cfg', 'hr48_channels'):  # helper variables
        plain.pop(key, None)
        base.pop(key, None)
    assert 'custom_imports' not in plain
    assert plain == base
