"""Every config in configs/mmseg1x loads with mmengine and builds through
mmseg 1.x's registries; SAR configs differ from their baseline twins only by
the wrapped decode head; names, paper settings and the demo's match the 0.x
configs; the demo pair trains a step on its own pipeline; a bare pytest
(setup.cfg's testpaths) collects this suite only."""
import copy
import functools
import glob
import os.path as osp
import re

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import Compose, pseudo_collate
from mmengine.optim import build_optim_wrapper
from mmseg.registry import DATASETS, MODELS
from PIL import Image

from bare_run import bare_collection
from helpers1x import ROOT

FOLDER = osp.join(ROOT, 'configs', 'mmseg1x')
CONFIGS = sorted(
    osp.relpath(p, FOLDER)
    for p in glob.glob(osp.join(FOLDER, '**', '*.py'), recursive=True)
    if '/_base_/' not in p)
SAR_CONFIGS = [c for c in CONFIGS if osp.basename(c).startswith('sar_')]
PAPER = ['sar/sar_fcn_hr48_4xb2-80k_cityscapes-512x1024.py',
         'sar/sar_fcn_hr48_4xb4-160k_ade20k-512x512.py',
         'sar/sar_fcn_hr48_4xb4-40k_pascal-context-59-480x480.py']
DEMO = 'demo/fcn_r18slim-d8_1xb8-3000_digitscenes-lt-64x64.py'
SAR_DEMO = 'demo/sar_fcn_r18slim-d8_1xb8-3000_digitscenes-lt-64x64.py'
SEED = 1270964153
IMPORTS = dict(imports=['sar'], allow_failed_imports=False)
SPLITS = ('train', 'val', 'test')


@functools.lru_cache(maxsize=None)
def _load(path):
    return Config.fromfile(osp.join(FOLDER, path))


def load(path):
    """The config at ``path`` (relative to configs/mmseg1x), a fresh copy."""
    return copy.deepcopy(_load(path))


def twin_of(path):
    name = osp.basename(path)[len('sar_'):]
    folder = osp.dirname(path)
    return osp.join(folder if folder == 'demo' else 'baseline', name)


def test_the_paper_settings_and_the_demo_each_have_a_twin():
    assert set(PAPER) | {SAR_DEMO} == set(SAR_CONFIGS)
    for path in SAR_CONFIGS:
        assert twin_of(path) in CONFIGS, path
    for path in PAPER:  # the same experiment names as the 0.x configs
        assert osp.isfile(osp.join(ROOT, 'configs', path))
        assert osp.isfile(osp.join(ROOT, 'configs', twin_of(path)))


@pytest.mark.parametrize('path', CONFIGS)
def test_config_builds(path):
    cfg = load(path)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    is_sar = osp.basename(path).startswith('sar_')
    assert type(model.decode_head).__name__ == \
        ('SARHead' if is_sar else 'FCNHead')
    if is_sar:
        assert cfg.custom_imports == IMPORTS
        assert model.decode_head.sar_loss.num_classes == \
            cfg.model.decode_head.head.num_classes
    assert cfg.default_scope == 'mmseg'
    for split in SPLITS:
        data = cfg[f'{split}_dataloader'].dataset
        assert DATASETS.get(data.type) is not None, data.type
        # every transform registered and built (the data sets themselves
        # need their files, some even lazily)
        pipeline = Compose(data.pipeline)
        assert [type(t).__name__ for t in pipeline.transforms] == \
            [t['type'] for t in data.pipeline]


def _without_sar(cfg_dict):
    head = cfg_dict['model']['decode_head']
    assert head.pop('type') == 'SARHead'
    assert head.pop('sar_loss')['type'] == 'SemanticAnchorLoss'
    cfg_dict['model']['decode_head'] = head.pop('head')
    assert not head, head  # nothing else added to the wrapper
    return cfg_dict


@pytest.mark.parametrize('path', SAR_CONFIGS)
def test_sar_config_only_wraps_the_twins_head(path):
    sar = load(path).to_dict()
    base = load(twin_of(path)).to_dict()
    assert sar.pop('custom_imports') == IMPORTS
    # Every twin imports sar too: the demo's data set is the plugin's, and
    # the glue's shims serve the paper twins in mmseg's tools (test_twins_1x)
    assert base.pop('custom_imports') == IMPORTS
    sar.pop('sar_loss', None)  # sar_paper.py's helper variable
    assert _without_sar(sar) == base


NAME = re.compile(r'(?P<gpus>\d+)xb(?P<batch>\d+)-(?P<iters>\d+)(?P<k>k?)_'
                  r'.*-(?P<h>\d+)x(?P<w>\d+)\.py$')


@pytest.mark.parametrize('path', CONFIGS)
def test_name_matches_batch_schedule_and_crop(path):
    cfg = load(path)
    m = NAME.search(osp.basename(path))
    assert m, path
    iters = int(m['iters']) * (1000 if m['k'] else 1)
    crop = (int(m['h']), int(m['w']))
    assert cfg.train_dataloader.batch_size == int(m['batch'])
    assert cfg.train_cfg.max_iters == iters
    assert [s.end for s in cfg.param_scheduler] == [iters]
    assert cfg.model.data_preprocessor.size == crop
    crops = [t['crop_size'] for t in cfg.train_dataloader.dataset.pipeline
             if t['type'] == 'RandomCrop']
    assert crops == ([] if path.startswith('demo/') else [crop])


@pytest.mark.parametrize('path', PAPER)
def test_paper_settings(path):
    cfg = load(path)
    head = cfg.model.decode_head
    assert head.head.type == 'FCNHead' and head.head.channels == 720
    assert head.head.in_channels == [48, 96, 192, 384]
    assert head.head.input_transform == 'resize_concat'
    assert head.head.num_convs == 1 and head.head.dropout_ratio == -1
    assert cfg.model.backbone.type == 'HRNet'
    assert cfg.model.backbone.norm_cfg.type == 'SyncBN'
    assert head.head.norm_cfg.type == 'SyncBN'
    loss = dict(head.sar_loss)
    assert loss == dict(type='SemanticAnchorLoss', pull_weight=0.1,
                        anchor_ce_weight=1.0, filter_conf=0.9,
                        update_conf=0.8, ema_momentum=0.999,
                        anchor_init='gaussian', distance='mse',
                        pull_mode='gate')
    # one source with the 0.x configs
    assert loss == Config.fromfile(
        osp.join(ROOT, 'configs', '_base_', 'sar_paper.py')).sar_loss
    assert cfg.randomness == dict(seed=SEED)
    optimizer = cfg.optim_wrapper.optimizer
    assert optimizer.type == 'SGD' and optimizer.momentum == 0.9
    (poly, ) = cfg.param_scheduler
    assert (poly.type, poly.power, poly.eta_min, poly.by_epoch) == \
        ('PolyLR', 0.9, 1e-4, False)
    if 'pascal' in path:
        assert (optimizer.lr, optimizer.weight_decay) == (0.004, 1e-4)
        assert cfg.model.test_cfg.mode == 'slide'
        assert head.head.num_classes == 59
    else:
        assert (optimizer.lr, optimizer.weight_decay) == (0.01, 5e-4)
        assert head.head.num_classes == (19 if 'cityscapes' in path
                                         else 150)


def test_demo_is_the_0x_demo():
    cfg = load(DEMO)
    old_model = Config.fromfile(
        osp.join(ROOT, 'configs', '_base_', 'models', 'fcn_r18slim-d8.py'))
    old_data = Config.fromfile(
        osp.join(ROOT, 'configs', '_base_', 'datasets', 'digitscenes_lt.py'))
    for key in ('backbone', 'decode_head', 'train_cfg', 'test_cfg'):
        assert cfg.model[key] == old_model.model[key], key
    norm = old_data.img_norm_cfg
    pre = cfg.model.data_preprocessor
    assert (pre.mean, pre.std, pre.bgr_to_rgb) == \
        (norm.mean, norm.std, norm.to_rgb)
    assert (pre.pad_val, pre.seg_pad_val) == (0, 255)
    assert cfg.optim_wrapper.optimizer == dict(
        type='SGD', lr=0.05, momentum=0.9, weight_decay=5e-4)
    assert cfg.param_scheduler == [dict(type='PolyLR', eta_min=1e-4,
                                        power=0.9, begin=0, end=3000,
                                        by_epoch=False)]
    assert cfg.randomness == dict(seed=SEED)
    assert cfg.train_cfg == dict(type='IterBasedTrainLoop', max_iters=3000,
                                 val_interval=3000)  # val at the end only
    assert cfg.default_hooks.checkpoint.interval == 3000
    assert cfg.default_hooks.logger.interval == 50
    for split in SPLITS:
        data = cfg[f'{split}_dataloader'].dataset
        assert (data.type, data.data_root) == ('DigitScenesDataset',
                                               'data/digitscenes-lt')
        folder = 'train' if split == 'train' else 'val'
        assert data.data_prefix == dict(img_path=f'img_dir/{folder}',
                                        seg_map_path=f'ann_dir/{folder}')
    types = [t.type for t in cfg.train_dataloader.dataset.pipeline]
    assert 'RandomFlip' not in types  # digits are never mirrored
    assert load(SAR_DEMO).model.decode_head.sar_loss == dict(
        type='SemanticAnchorLoss')  # the paper's defaults, as in 0.x


@pytest.fixture(scope='module')
def scenes(tmp_path_factory):
    """Four 64x64 scenes per split in the DigitScenes-LT layout; random
    pixels and labels (classes 0-10): only the wiring is under test."""
    root = tmp_path_factory.mktemp('digitscenes')
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        for kind in ('img_dir', 'ann_dir'):
            (root / kind / split).mkdir(parents=True)
        for i in range(4):
            img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            label = rng.integers(0, 11, (64, 64), dtype=np.uint8)
            Image.fromarray(img).save(root / 'img_dir' / split / f'{i}.png')
            Image.fromarray(label).save(root / 'ann_dir' / split / f'{i}.png')
    return str(root)


@pytest.mark.parametrize('path', [DEMO, SAR_DEMO])
def test_demo_trains_a_step_and_predicts_on_its_pipeline(path, scenes):
    cfg = load(path)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    train = DATASETS.build(dict(cfg.train_dataloader.dataset,
                                data_root=scenes))
    val = DATASETS.build(dict(cfg.val_dataloader.dataset, data_root=scenes))
    assert (len(train), len(val)) == (4, 4)
    assert len(train.metainfo['classes']) == \
        cfg.model.decode_head.get('head', cfg.model.decode_head).num_classes
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    batch = pseudo_collate([train[0], train[1]])
    model.train()
    log_vars = model.train_step(batch, optim_wrapper)
    assert torch.isfinite(log_vars['loss'])
    assert ('decode.loss_sar_anchor_ce' in log_vars) == \
        (path == SAR_DEMO)
    model.eval()
    (pred, ) = model.val_step(pseudo_collate([val[0]]))
    assert pred.pred_sem_seg.data.shape == (1, 64, 64)
    assert pred.gt_sem_seg.data.shape == (1, 64, 64)
    assert 0 <= int(pred.gt_sem_seg.data.min()) and \
        int(pred.gt_sem_seg.data.max()) <= 10


def test_a_bare_pytest_collects_this_suite_only():
    # With mmseg 1.x the 0.x suite's files (mmcv-full 1.x imports) stay out.
    ids = bare_collection()
    assert ids and all(i.startswith('tests/mmseg1x/') for i in ids)
    assert 'tests/mmseg1x/test_configs.py::test_a_bare_pytest_collects_' \
        'this_suite_only' in ids


@pytest.mark.parametrize('path', SAR_CONFIGS)
def test_exported_config_text_is_the_twins(path):
    # mmengine keeps the run's config in meta['cfg'], and its inferencers
    # build the model from it when given weights only: tools/export_plain.py
    # rewrites it as the twin's, without sar.
    from sar.checkpoints import sar_to_plain_config_text
    text = sar_to_plain_config_text(load(path).pretty_text)
    plain = Config.fromstring(text, file_format='.py').to_dict()
    base = Config.fromstring(load(twin_of(path)).pretty_text,
                             file_format='.py').to_dict()
    # The twins import sar for the glue's shims; the exported config does
    # not need them (it loads in mmseg without sar).
    assert 'custom_imports' not in plain
    assert base.pop('custom_imports') == IMPORTS
    assert plain == base
