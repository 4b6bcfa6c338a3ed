"""DigitScenes-LT: determinism, class profile, disjoint glyphs, mmseg loading.

CPU, seconds: a small instance of the generator (the demo's arguments but
fewer and smaller scenes).
"""
import glob
import hashlib
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
from mmcv.utils import Config
from PIL import Image

from conftest import ROOT
from sar.data import (DIGITSCENES_CLASSES, head_tail_classes, load_glyphs,
                      longtail_counts, make_digitscenes, split_glyphs)

ARGS = dict(num_train=100, num_val=20, size=48, digits_per_scene=3,
            imbalance_ratio=20.0, val_per_class=20, seed=3)


@pytest.fixture(scope='module')
def scenes(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('digitscenes'))
    return root, make_digitscenes(root, **ARGS)


def digests(root):
    files = sorted(glob.glob(osp.join(root, '**', '*.*'), recursive=True))
    return {osp.relpath(f, root): hashlib.sha256(open(f, 'rb').read())
            .hexdigest() for f in files}


def label_pixels(root, split):
    counts = np.zeros(11, np.int64)
    for path in glob.glob(osp.join(root, 'ann_dir', split, '*.png')):
        counts += np.bincount(np.asarray(Image.open(path)).ravel(),
                              minlength=11)
    return counts


@pytest.mark.parametrize('total, ratio, classes, expected', [
    (100, 1.0, 10, [10] * 10),
    (13, 1.0, 10, [2, 2, 2, 1, 1, 1, 1, 1, 1, 1]),
    (70, 4.0, 3, [40, 20, 10]),     # shares 1, 1/2, 1/4
    (51, 50.0, 2, [50, 1]),         # shares 1, 1/50
])
def test_longtail_counts_by_hand(total, ratio, classes, expected):
    assert longtail_counts(total, ratio, classes).tolist() == expected


def test_longtail_counts_follow_the_exponential_profile():
    counts = longtail_counts(6000, 50.0)
    assert counts.sum() == 6000
    share = 50.0**(-np.arange(10) / 9)
    exact = 6000 * share / share.sum()
    assert np.abs(counts - exact).max() < 1
    assert np.all(np.diff(counts) < 0)
    assert counts[0] / counts[-1] == pytest.approx(50, rel=0.03)
    with pytest.raises(ValueError):
        longtail_counts(10, 0.5)


def test_same_arguments_same_bytes(scenes, tmp_path):
    root, meta = scenes
    again = make_digitscenes(str(tmp_path), **ARGS)
    assert again == meta
    first, second = digests(root), digests(str(tmp_path))
    assert len(first) == 2 * (100 + 20) + 1  # img + ann PNGs, meta.json
    assert first == second
    other = make_digitscenes(str(tmp_path / 'other'), **dict(ARGS, seed=4))
    assert other['train']['glyph_indices'] != meta['train']['glyph_indices']


def test_existing_data_is_reused_and_other_arguments_rewrite(tmp_path):
    args = dict(ARGS, num_train=10, num_val=10)
    make_digitscenes(str(tmp_path), **args)
    before = digests(str(tmp_path))
    make_digitscenes(str(tmp_path), **args)
    assert digests(str(tmp_path)) == before
    meta = make_digitscenes(str(tmp_path), **dict(args, num_train=20))
    assert len(glob.glob(str(tmp_path / 'img_dir' / 'train' / '*.png'))) == 20
    assert meta['args']['num_train'] == 20


def test_train_is_long_tailed_and_val_balanced(scenes):
    root, meta = scenes
    train, val = meta['train'], meta['val']
    assert train['instances'] == longtail_counts(300, 20.0).tolist()
    assert train['instances'][0] / train['instances'][-1] == \
        pytest.approx(20, rel=0.1)
    assert val['instances'] == [6] * 10
    # Recorded pixel counts are those of the written label maps.
    assert label_pixels(root, 'train').tolist() == train['pixels']
    assert label_pixels(root, 'val').tolist() == val['pixels']
    # Pixels follow the instances: glyph areas vary per digit and scale,
    # but far less than the profile spans.
    pixels = np.array(train['pixels'][1:], np.float64)
    assert pixels.argmax() == 0 and pixels.argmin() == 9
    assert 20 / 2 < pixels[0] / pixels[-1] < 20 * 2
    per_instance = pixels / np.array(train['instances'])
    assert per_instance.max() / per_instance.min() < 2
    assert head_tail_classes(train['instances']) == (
        ['0', '1', '2', '3', '4'], ['5', '6', '7', '8', '9'])


def test_train_and_val_glyphs_are_disjoint(scenes):
    _, meta = scenes
    train = set(meta['train']['glyph_indices'])
    val = set(meta['val']['glyph_indices'])
    assert train and val and not train & val
    glyphs, digits = load_glyphs()
    assert glyphs.shape == (1797, 8, 8) and glyphs.max() == 1.0
    # Every digit appears in both splits; val only draws from its reserve.
    for split in (train, val):
        assert set(digits[sorted(split)]) == set(range(10))
    per_digit = np.bincount(digits[sorted(val)], minlength=10)
    assert per_digit.max() <= ARGS['val_per_class']


def test_split_glyphs_reserves_val_per_class():
    digits = np.repeat(np.arange(10), 5)
    train, val = split_glyphs(digits, val_per_class=2, seed=0)
    for d in range(10):
        assert len(val[d]) == 2 and len(train[d]) == 3
        assert set(digits[val[d]]) == {d} and set(digits[train[d]]) == {d}
        assert not set(val[d]) & set(train[d])
    with pytest.raises(ValueError):
        split_glyphs(digits, val_per_class=5)


def test_scenes_are_rgb_and_labels_in_range(scenes):
    root, _ = scenes
    img = np.asarray(Image.open(osp.join(root, 'img_dir', 'train',
                                         '00000.png')))
    label = np.asarray(Image.open(osp.join(root, 'ann_dir', 'train',
                                           '00000.png')))
    assert img.shape == (48, 48, 3) and img.dtype == np.uint8
    assert label.shape == (48, 48) and label.max() <= 10
    # Colour alone does not segment: background colours span the range.
    assert img.std() > 20


@pytest.mark.parametrize('split', ['train', 'val', 'test'])
def test_loads_through_mmseg_pipeline(scenes, split):
    from mmseg.datasets import build_dataset
    root, meta = scenes
    cfg = Config.fromfile(
        osp.join(ROOT, 'configs/_base_/datasets/digitscenes_lt.py'))
    data = cfg.data[split]
    data = data.get('dataset', data)
    data['data_root'] = root
    dataset = build_dataset(data)
    assert type(dataset).__name__ == 'DigitScenesDataset'
    assert dataset.CLASSES == DIGITSCENES_CLASSES and len(dataset) == \
        meta['train' if split == 'train' else 'val']['num_scenes']
    sample = dataset[0]
    if split == 'train':
        img = sample['img'].data
        gt = sample['gt_semantic_seg'].data
        assert img.shape == (3, 48, 48) and gt.shape == (1, 48, 48)
        assert 0 <= int(gt.min()) and int(gt.max()) <= 10
        assert sample['img_metas'].data['flip'] is False
    else:
        assert sample['img'][0].shape == (3, 64, 64)  # test scale 64x64
        gt = dataset.get_gt_seg_map_by_idx(0)
        assert gt.shape == (48, 48) and gt.max() <= 10


def test_sar_datasets_imports_without_mmseg_and_sklearn():
    code = '''
import sys
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('mmseg', 'mmcv', 'sklearn', 'matplotlib'):
            raise ImportError('hidden')
sys.meta_path.insert(0, Hide())
import sar.data
assert not hasattr(sar.data, 'DigitScenesDataset')
assert sar.data.longtail_counts(3, 1.0, 3).tolist() == [1, 1, 1]
print('datasets-only ok')
'''
    run = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert 'datasets-only ok' in run.stdout
