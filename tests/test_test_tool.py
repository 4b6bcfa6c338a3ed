"""tools/test.py (and train.py) against mmseg 0.30's test.py behaviour.

Formatted results never harm a user's folder; the metric JSON is written
where and as mmseg writes it; the config's multi-process settings apply.
Every case runs the real tool in a subprocess on the generated shapes data,
with a test-only data set whose ``format_results`` writes one PNG per image
(as Cityscapes' does) and that reports the process settings it was built
under.
"""
import glob
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmcv.utils import Config
from mmseg.models import build_segmentor

from conftest import DEMO_BASELINE, ROOT

PY = sys.executable
PLUGINS = osp.join(ROOT, 'tests', 'plugins')
CONFIG_NAME = 'probe_cfg'
NAMES = ['0000.png', '0001.png', '0002.png', '0003.png']  # the test split

FORMATTED_SHAPES = '''
"""Test-only: shapes data with a per-image PNG formatter and a probe."""
import multiprocessing
import os
import os.path as osp

import cv2
import numpy as np
from mmseg.datasets import DATASETS, CustomDataset
from PIL import Image


@DATASETS.register_module()
class FormattedShapesDataset(CustomDataset):

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # What setup_multi_processes(cfg) set before the data set was built.
        print(f'probe: cv2 threads {cv2.getNumThreads()}, start method '
              f'{multiprocessing.get_start_method(allow_none=True)}')

    def format_results(self, results, imgfile_prefix, indices=None,
                       **kwargs):
        files = []
        for result, idx in zip(results, indices):
            name = osp.basename(self.img_infos[idx]['filename'])
            files.append(osp.join(imgfile_prefix, name))
            Image.fromarray(result.astype(np.uint8)).save(files[-1])
        return files

    def evaluate(self, results, metric='mIoU', logger=None,
                 imgfile_prefix=None, **kwargs):
        if metric == ['cityscapes']:
            names = sorted(os.listdir(imgfile_prefix))
            assert names == sorted(osp.basename(f) for f in results)
            return dict(formatted=len(names))
        return super().evaluate(results, metric, logger, **kwargs)
'''


@pytest.fixture(scope='module')
def prepared(tmp_path_factory, shapes_root):
    """(config path, checkpoint path, plugin folder)."""
    root = tmp_path_factory.mktemp('test_tool')
    plugin = root / 'plugin'
    plugin.mkdir()
    (plugin / 'formatted_shapes.py').write_text(FORMATTED_SHAPES)
    # Values no machine has by default: fork is Linux's start method, and
    # cv2 uses as many threads as cores unless told.
    config = root / f'{CONFIG_NAME}.py'
    config.write_text(f'''_base_ = r'{DEMO_BASELINE}'
custom_imports = dict(imports=['formatted_shapes'],
                      allow_failed_imports=False)
data = dict(
    train=dict(dataset=dict(type='FormattedShapesDataset',
                            data_root=r'{shapes_root}')),
    val=dict(data_root=r'{shapes_root}'),
    test=dict(type='FormattedShapesDataset', data_root=r'{shapes_root}'))
runner = dict(max_iters=1)
checkpoint_config = dict(interval=1)
log_config = dict(interval=1)
opencv_num_threads = 3
mp_start_method = 'forkserver'
''')
    torch.manual_seed(0)
    model = build_segmentor(Config.fromfile(DEMO_BASELINE).model)
    checkpoint = root / 'model.pth'
    torch.save(dict(state_dict=model.state_dict(), meta={}), checkpoint)
    return str(config), str(checkpoint), str(plugin)


def tool(prepared, cwd, *flags, script='test.py'):
    """Run tools/<script> as a user does, from ``cwd``; never raises."""
    config, checkpoint, plugin = prepared
    args = [config] if script == 'train.py' else [config, checkpoint]
    env = dict(os.environ, PYTHONPATH=f'{plugin}{os.pathsep}{PLUGINS}',
               OMP_NUM_THREADS='1')
    return subprocess.run([PY, osp.join(ROOT, 'tools', script), *args,
                           *flags], cwd=str(cwd), env=env,
                          capture_output=True, text=True, timeout=600)


def ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


def metric_json(cwd, scale):
    (path, ) = glob.glob(osp.join(str(cwd), 'work_dirs', CONFIG_NAME,
                                  f'eval_{scale}_scale_*.json'))
    with open(path) as f:
        return json.load(f)


def test_format_only_refuses_a_non_empty_named_folder(prepared, tmp_path):
    mine = tmp_path / 'mine'
    mine.mkdir()
    (mine / 'keep.txt').write_text('precious')
    proc = tool(prepared, tmp_path, '--format-only', '--eval-options',
                f'imgfile_prefix={mine}')
    assert proc.returncode != 0
    assert f"imgfile_prefix '{mine}' (from --eval-options) is not empty" \
        in proc.stderr
    assert os.listdir(mine) == ['keep.txt']
    assert (mine / 'keep.txt').read_text() == 'precious'
    # Refused before the data set (and so the model) was built.
    assert 'probe:' not in proc.stdout


def test_cityscapes_eval_refuses_a_non_empty_default_folder(
        prepared, tmp_path):
    default = tmp_path / '.format_cityscapes'
    default.mkdir()
    (default / 'old.png').write_bytes(b'results of an earlier run')
    proc = tool(prepared, tmp_path, '--eval', 'cityscapes')
    assert proc.returncode != 0
    assert "imgfile_prefix '.format_cityscapes' (mmseg's default) is not " \
        'empty' in proc.stderr
    assert os.listdir(default) == ['old.png']
    assert 'probe:' not in proc.stdout


def test_format_only_creates_and_keeps_a_named_folder(prepared, tmp_path):
    new = tmp_path / 'new' / 'results'
    out = ok(tool(prepared, tmp_path, '--format-only', '--eval-options',
                  f'imgfile_prefix={new}'))
    assert sorted(os.listdir(new)) == NAMES
    assert f'formatted results in {new}' in out


def test_cityscapes_eval_keeps_a_named_empty_folder(prepared, tmp_path):
    mine = tmp_path / 'mine'
    mine.mkdir()
    ok(tool(prepared, tmp_path, '--eval', 'cityscapes', '--eval-options',
            f'imgfile_prefix={mine}'))
    assert sorted(os.listdir(mine)) == NAMES
    assert metric_json(tmp_path, 'single')['metric'] == {'formatted': 4}


def test_cityscapes_aug_test_removes_only_its_own_folder(prepared,
                                                         tmp_path):
    out = ok(tool(prepared, tmp_path, '--eval', 'cityscapes', '--aug-test'))
    assert not osp.exists(tmp_path / '.format_cityscapes')
    # mmseg's place and name for a multi-scale result without --work-dir.
    got = metric_json(tmp_path, 'multi')
    assert got == {'config': prepared[0], 'metric': {'formatted': 4}}
    assert not glob.glob(str(tmp_path / 'work_dirs' / CONFIG_NAME /
                             'eval_single_scale_*.json'))
    assert 'probe: cv2 threads 3, start method forkserver' in out


def test_miou_json_without_work_dir(prepared, tmp_path):
    out = ok(tool(prepared, tmp_path, '--eval', 'mIoU'))
    metric = metric_json(tmp_path, 'single')['metric']
    assert 0.0 <= metric['mIoU'] <= 1.0 and 'aAcc' in metric
    assert 'probe: cv2 threads 3, start method forkserver' in out


def test_train_applies_multi_process_settings(prepared, tmp_path):
    out = ok(tool(prepared, tmp_path, '--work-dir', str(tmp_path / 'work'),
                  '--no-validate', script='train.py'))
    assert 'probe: cv2 threads 3, start method forkserver' in out
    assert osp.isfile(tmp_path / 'work' / 'iter_1.pth')


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU path')
def test_fp16_config_is_tested_in_fp32_without_cuda(prepared, tmp_path):
    # mmcv's wrap_fp16_model would cast the images to half, which CPU
    # convolutions refuse: "Input type (c10::Half) and bias type (float)".
    out = ok(tool(prepared, tmp_path, '--eval', 'mIoU', '--cfg-options',
                  'fp16.loss_scale=512.'))
    assert 'fp16 is set but there is no CUDA device: testing in fp32' in out
    assert metric_json(tmp_path, 'single')['metric']['mIoU'] >= 0
