"""Shared fixtures: tiny generated data and tiny model configs, CPU only."""
import os
import os.path as osp

import pytest
import torch

import sar  # registers SARHead and SemanticAnchorLoss

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO_BASELINE = osp.join(ROOT, 'configs/demo',
                         'fcn_hrtiny_1xb4-300_shapes-64x64.py')
DEMO_SAR = osp.join(ROOT, 'configs/demo',
                    'sar_fcn_hrtiny_1xb4-300_shapes-64x64.py')

# A bare `python -m pytest` (setup.cfg: testpaths = tests) runs the suite of
# the installed mmseg generation: tests/mmseg1x with mmseg 1.x, the files
# here with 0.x. Each suite's folder would otherwise load the other's
# conftest, and with it the wrong `conftest` module for its imports.
if sar.mmseg_generation() == 1:
    collect_ignore_glob = ['test_*.py']
else:
    collect_ignore = ['mmseg1x']

# Each suite's longest files (whole trainings in subprocesses), longest
# first, as --durations=0 measured them under two xdist workers. With
# --no-loadscope-reorder (the Makefile's test command) pytest-xdist hands
# files to its workers in collection order: started first, the longest no
# longer run on alone at the end while the other worker idles. Only the
# order changes; a file missing here costs time, never a result.
LONGEST_FIRST = (
    'tests/test_gpu_check.py',
    'tests/test_tools.py',
    'tests/test_benchmark_accuracy.py',
    'tests/test_test_tool.py',
    'tests/test_zoo_heads.py',
    'tests/test_newcomer.py',
    'tests/test_transformers_glue.py',
    'tests/test_smp_glue.py',
    # the mmseg 1.x suite
    'tests/mmseg1x/test_gpu_check_1x.py',
    'tests/mmseg1x/test_runner.py',
    'tests/mmseg1x/test_benchmark_accuracy_1x.py',
    'tests/mmseg1x/test_zoo_heads.py',
    'tests/mmseg1x/test_demo_1x.py',
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    # Stable: a file's tests stay together and in their own order.
    items.sort(key=lambda item: rank.get(item.nodeid.split('::')[0],
                                         len(rank)))


@pytest.fixture(autouse=True)
def _few_threads():
    # Two-core CI machines: keep each test from oversubscribing, also when
    # pytest-xdist runs one test per core.
    workers = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', 1))
    torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // workers)))


@pytest.fixture(scope='session')
def shapes_root(tmp_path_factory):
    from sar.data import make_shapes_dataset
    root = tmp_path_factory.mktemp('shapes')
    return make_shapes_dataset(str(root), num_train=8, num_val=4, size=32)


def tiny_batch(num_classes=4, B=2, size=32, seed=0, ignore=255):
    """img (B, 3, H, W), img_metas, gt (B, 1, H, W) for a train step."""
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(B, 3, size, size, generator=g)
    gt = torch.randint(0, num_classes, (B, 1, size, size), generator=g)
    gt[:, :, :2] = ignore
    metas = [dict(img_shape=(size, size, 3), ori_shape=(size, size, 3),
                  pad_shape=(size, size, 3), scale_factor=1.0, flip=False,
                  flip_direction=None) for _ in range(B)]
    return img, metas, gt
