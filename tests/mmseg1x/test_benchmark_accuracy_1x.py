"""tools/benchmark_accuracy.py under mmseg 1.x: configs/mmseg1x/demo's
pair through the project's tools (mmseg 1.x's own), read back through
sar.mmseg1x.runs, in --smoke mode (the output structure, not its numbers
or timings)."""
import json
import os.path as osp
import subprocess

import pytest
from PIL import Image

from helpers1x import PY, ROOT
from sar.mmseg1x import runs
from tool_modules import load_tool


@pytest.fixture(scope='module')
def tool():
    return load_tool('benchmark_accuracy')


def test_the_methods_are_the_1x_demo_pair_and_its_keys(tool):
    assert tool.RUNS is runs
    assert tool.METHODS['baseline'][0] == runs.DEMO_CONFIGS['baseline']
    assert tool.METHODS['prototype'] == (
        runs.DEMO_CONFIGS['SAR'],
        ['model.decode_head.sar_loss.anchor_source=prototype'])
    smoke = tool.parse_args(['--smoke'])
    assert tool.cfg_options('SAR', smoke, '/d') == [
        'train_dataloader.dataset.data_root=/d',
        'val_dataloader.dataset.data_root=/d',
        'test_dataloader.dataset.data_root=/d',
        'train_dataloader.batch_size=2']
    cmd = runs.train_command('c.py', 'w', 0, 4, ['a=1'])
    assert {'a=1', 'train_cfg.max_iters=4', 'randomness.seed=0'} <= set(cmd)


def test_smoke_run_reads_mmseg_1x_results(tmp_path):
    work, out = tmp_path / 'work', tmp_path / 'out'
    proc = subprocess.run(
        [PY, 'tools/benchmark_accuracy.py', '--smoke', '--methods', 'SAR',
         'prototype', '--work-dir', str(work), '--out-dir', str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((out / 'benchmark_accuracy.json').read_text())
    assert result['settings']['iters'] == 4
    assert result['settings']['configs']['SAR'] == runs.DEMO_CONFIGS['SAR']
    assert list(result['methods']) == ['SAR', 'prototype']
    for method, entry in result['methods'].items():
        (row, ) = entry['per_seed']
        run_dir = str(work / method / 'seed_0')
        # The table reads mmseg 1.x's own evaluation and training log.
        metric = runs.read_metrics(run_dir)
        assert row['mIoU'] == pytest.approx(100 * metric['mIoU'])
        assert set(row['iou']) == set(result['classes'])
        assert [e['iter'] for e in runs.train_log(run_dir)] == [1, 2, 3, 4]
        features = json.loads(
            (work / method / 'seed_0' / 'features' / 'features.json')
            .read_text())
        assert row['separability_ratio'] == features['separability_ratio']
        assert features['anchors']['source'] == (
            'prototype' if method == 'prototype' else 'embedded')
    text = (out / 'benchmark_accuracy.md').read_text()
    assert '| SAR | ' in text and '| prototype | ' in text
    for name in ('class_iou.png', 'features_pca.png'):
        width, height = Image.open(out / name).size
        assert width > 100 and height > 100
