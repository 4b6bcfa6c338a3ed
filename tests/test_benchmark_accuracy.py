"""The accuracy benchmark: aggregation over seeds on hand-made numbers, its
figures on tiny arrays, and tools/benchmark_accuracy.py end to end in
--smoke mode (the output structure, not its numbers or timings)."""
import json
import math
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.container import BarContainer
from PIL import Image

from conftest import ROOT
from sar.evaluation.benchmark import (class_iou_bars, format_mean_std,
                                      markdown_table, mean_std, pca_row,
                                      seed_row, summarize_seeds)
from tool_modules import load_tool


@pytest.mark.parametrize('values, mean, std, n', [
    ([10, 20, 30], 20.0, 10.0, 3),  # var (100 + 0 + 100) / (3 - 1)
    ([1, 3], 2.0, math.sqrt(2), 2),  # var (1 + 1) / 1
    ([4, 4, 4], 4.0, 0.0, 3),
    ([10, None, float('nan'), 30], 20.0, math.sqrt(200), 2),
    ([5], 5.0, None, 1),  # one seed: no spread to report
    ([None, float('nan')], None, None, 0),
    ([], None, None, 0),
])
def test_mean_std(values, mean, std, n):
    got = mean_std(values)
    assert got['n'] == n
    assert got['mean'] == (None if mean is None else pytest.approx(mean))
    assert got['std'] == (None if std is None else pytest.approx(std))


def test_format_mean_std():
    assert format_mean_std(dict(mean=47.854, std=1.2, n=3)) == '47.85 +- 1.20'
    assert format_mean_std(dict(mean=0.12345, std=None, n=1), 3) == '0.123'
    assert format_mean_std(dict(mean=None, std=None, n=0)) == 'n/a'
    assert format_mean_std(dict(mean=150.0, std=70.71, n=2), 0) == \
        '150 +- 71'


def evaluation(ious, miou):
    """An mmseg evaluation dict (fractions) for classes a, b, c, d."""
    out = {f'IoU.{c}': v for c, v in zip('abcd', ious)}
    out.update({f'Acc.{c}': 0.5 for c in 'abcd'})
    out.update(mIoU=miou, mAcc=0.5, aAcc=0.9)
    return out


def test_seed_row_head_and_tail_from_mmseg_iou():
    # d has no IoU (NaN in mmseg's dict): left out of the tail mean, as
    # mmseg leaves it out of mIoU, whose value is taken as is.
    row = seed_row(evaluation([0.9, 0.5, 0.2, float('nan')], 0.5333),
                   'abcd', head=['a', 'b'], tail=['c', 'd'])
    assert row['iou']['a'] == 90.0 and row['iou']['c'] == 20.0
    assert math.isnan(row['iou']['d'])
    assert row['head'] == pytest.approx(70.0)  # (90 + 50) / 2
    assert row['tail'] == pytest.approx(20.0)  # 20 alone
    assert row['mIoU'] == pytest.approx(53.33)
    other = seed_row(evaluation([0.9, 0.5, 0.2, 0.4], 0.5), 'abcd',
                     head=['a'], tail=['b', 'c', 'd'])
    assert other['head'] == pytest.approx(90.0)
    assert other['tail'] == pytest.approx(110 / 3)  # (50 + 20 + 40) / 3
    nothing = seed_row(evaluation([0.9, 0.5, float('nan'), float('nan')],
                                  0.7), 'abcd', ['a'], ['c', 'd'])
    assert math.isnan(nothing['tail'])


def test_summarize_seeds_over_two_seeds():
    rows = [
        dict(iou=dict(a=90.0, b=40.0), mIoU=50.0, head=70.0, tail=30.0,
             compactness=0.5, gate_first_open_iter=100),
        dict(iou=dict(a=80.0, b=float('nan')), mIoU=60.0, head=80.0,
             tail=20.0, compactness=0.3, gate_first_open_iter=None),
    ]
    summary = summarize_seeds(rows, ['a', 'b'])
    assert set(summary) == {'iou', 'mIoU', 'head', 'tail', 'compactness',
                            'gate_first_open_iter'}
    assert summary['mIoU'] == dict(mean=55.0, std=pytest.approx(
        math.sqrt(50)), n=2)  # var (25 + 25) / 1
    assert summary['compactness']['mean'] == pytest.approx(0.4)
    assert summary['compactness']['std'] == pytest.approx(math.sqrt(0.02))
    # The gate opened in one seed only: its mean is that seed's, no std.
    assert summary['gate_first_open_iter'] == dict(mean=100.0, std=None,
                                                   n=1)
    assert summary['iou']['a'] == dict(mean=85.0, std=pytest.approx(
        math.sqrt(50)), n=2)
    assert summary['iou']['b'] == dict(mean=40.0, std=None, n=1)
    with pytest.raises(ValueError):
        summarize_seeds([], ['a'])


def test_markdown_table():
    summaries = {
        'baseline': dict(mIoU=dict(mean=50.0, std=1.0, n=3),
                         gate=dict(mean=None, std=None, n=0)),
        'SAR': dict(mIoU=dict(mean=55.0, std=math.sqrt(50), n=2),
                    gate=dict(mean=125.0, std=35.36, n=2)),
    }
    text = markdown_table(summaries, [('mIoU', 'mIoU'),
                                      ('gate', 'gate (iter)', 0)])
    assert text.splitlines() == [
        '| method | mIoU | gate (iter) |',
        '| --- | --- | --- |',
        '| baseline | 50.00 +- 1.00 | n/a |',
        '| SAR | 55.00 +- 7.07 | 125 +- 35 |',
    ]


def test_class_iou_bars_on_tiny_arrays(tmp_path):
    mean = np.array([[90.0, 40.0, np.nan], [85.0, 50.0, 10.0]])
    std = np.array([[1.0, np.nan, np.nan], [2.0, 3.0, 0.5]])
    fig = class_iou_bars(mean, std, ['bg', 'x', 'y'], ['baseline', 'SAR'],
                         tail=['y'], title='t')
    (ax, ) = fig.axes
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bars) == 2
    assert [p.get_height() for p in bars[0]] == [90.0, 40.0, 0.0]  # NaN: 0
    assert [p.get_height() for p in bars[1]] == [85.0, 50.0, 10.0]
    # Each method's bars sit side by side within the class's slot.
    assert bars[0][0].get_x() < bars[1][0].get_x() < 0.5
    assert [t.get_text() for t in ax.get_xticklabels()] == ['bg', 'x', 'y']
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        'baseline', 'SAR', 'tail classes']
    assert ax.get_title() == 't'
    out = tmp_path / 'bars.png'
    fig.savefig(out, dpi=40)
    assert Image.open(out).size[0] > 0
    untailed = class_iou_bars(mean[:1], None, ['bg', 'x', 'y'], ['only'])
    assert [t.get_text() for t in untailed.axes[0].get_legend().get_texts()
            ] == ['only']
    with pytest.raises(ValueError):
        class_iou_bars(mean, std, ['bg', 'x'], ['baseline', 'SAR'])


def test_pca_row_draws_one_panel_per_method_with_its_stars():
    coords = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = np.array([0, 1, 1])
    stars = np.array([[0.5, 0.5], [1.0, 1.0]])
    fig = pca_row([
        dict(coords=coords, labels=labels, title='baseline',
             anchors=np.zeros((0, 2))),
        dict(coords=coords, labels=labels, title='SAR', anchors=stars),
        dict(coords=coords[:2], labels=labels[:2], title='prototype',
             anchors=stars, anchors_label='prototypes'),
    ], ['bg', 'x'], [[0, 0, 0], [255, 0, 0]])
    assert [ax.get_title() for ax in fig.axes] == ['baseline', 'SAR',
                                                   'prototype']
    legends = [[t.get_text() for t in ax.get_legend().get_texts()]
               for ax in fig.axes]
    assert legends == [['bg', 'x'], ['bg', 'x', 'semantic anchors'],
                       ['bg', 'x', 'prototypes']]
    # Points per class, then the stars; no stars for an empty set.
    assert [[len(c.get_offsets()) for c in ax.collections]
            for ax in fig.axes] == [[1, 2], [1, 2, 2], [1, 1, 2]]
    with pytest.raises(ValueError):
        pca_row([])


def test_flags_and_method_options():
    tool = load_tool('benchmark_accuracy')
    args = tool.parse_args([])
    assert (args.seeds, args.iters, args.methods, args.smoke) == (
        3, None, ['baseline', 'SAR', 'prototype'], False)
    assert args.out_dir == args.work_dir == 'work_dirs/benchmark_accuracy'
    smoke = tool.parse_args(['--smoke', '--out-dir', 'x'])
    assert (smoke.seeds, smoke.iters, smoke.out_dir) == (1, 4, 'x')
    assert tool.parse_args(['--smoke', '--seeds', '2']).seeds == 2
    assert tool.parse_args(['--skip-training']).skip_training
    # The ablation is the SAR config with one key switched, and its stars
    # are prototypes.
    assert tool.METHODS['prototype'][0] == tool.METHODS['SAR'][0]
    assert set(tool.STARS) == set(tool.METHODS)
    assert tool.STARS['prototype'] == 'prototypes'
    assert tool.STARS['SAR'] == 'semantic anchors'
    assert tool.STARS['baseline'] is None
    assert tool.cfg_options('prototype', args, tool.DATA) == [
        'model.decode_head.sar_loss.anchor_source=prototype']
    assert tool.cfg_options('baseline', args, tool.DATA) == []
    assert tool.cfg_options('SAR', smoke, '/d') == [
        'data.train.dataset.data_root=/d', 'data.val.data_root=/d',
        'data.test.data_root=/d', 'data.samples_per_gpu=2']
    for config, _ in tool.METHODS.values():
        assert osp.isfile(osp.join(ROOT, config))


def test_smoke_run_writes_table_json_and_pictures(tmp_path):
    work = tmp_path / 'work'
    out = tmp_path / 'out'
    proc = subprocess.run(
        [sys.executable, 'tools/benchmark_accuracy.py', '--smoke',
         '--methods', 'baseline', 'SAR', '--work-dir', str(work),
         '--out-dir', str(out)], cwd=ROOT, capture_output=True, text=True,
        timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    result = json.loads((out / 'benchmark_accuracy.json').read_text())
    assert result['settings']['methods'] == ['baseline', 'SAR']
    assert result['settings']['seeds'] == [0]
    assert result['settings']['iters'] == 4
    assert result['settings']['smoke'] is True
    assert result['classes'] == ['background'] + [str(d) for d in range(10)]
    assert sorted(result['head'] + result['tail'], key=int) == [
        str(d) for d in range(10)]
    assert list(result['methods']) == ['baseline', 'SAR']
    for method, entry in result['methods'].items():
        (row, ) = entry['per_seed']
        assert row['seed'] == 0
        assert set(row['iou']) == set(result['classes'])
        assert 0 <= row['mIoU'] <= 100
        assert row['compactness'] > 0 and row['separability'] > 0
        features = json.loads((work / method / 'seed_0' / 'features' /
                               'features.json').read_text())
        assert row['separability_ratio'] == features['separability_ratio']
        assert row['separability_ratio'] == pytest.approx(
            row['separability'] / features['mean_distance_to_class_mean'])
        summary = entry['summary']
        for key in ('mIoU', 'head', 'tail', 'compactness', 'separability',
                    'separability_ratio', 'gate_first_open_iter'):
            assert set(summary[key]) == {'mean', 'std', 'n'}
        assert summary['mIoU'] == dict(mean=row['mIoU'], std=None, n=1)
        assert summary['compactness']['mean'] == row['compactness']
        assert set(summary['iou']) == set(result['classes'])
        # What the table reads comes from mmseg's own evaluation file.
        (evaluation, ) = (work / method / 'seed_0').glob('eval_*.json')
        metric = json.loads(evaluation.read_text())['metric']
        assert row['mIoU'] == pytest.approx(100 * metric['mIoU'])
    # Four iterations, logged every one: the baseline has no gate at all.
    assert result['methods']['baseline']['per_seed'][0][
        'gate_first_open_iter'] is None

    lines = (out / 'benchmark_accuracy.md').read_text().splitlines()
    assert lines[0] == '# DigitScenes-LT accuracy benchmark'
    header = lines.index('| method | mIoU | head IoU | tail IoU | '
                         'compactness (lower: tighter) | separability | '
                         'separability ratio (higher: further apart) | '
                         'gate first open (iter) |')
    assert lines[header + 2].startswith('| baseline | ')
    assert lines[header + 3].startswith('| SAR | ')
    assert lines[header + 3].count('|') == 9
    assert '![per-class IoU](class_iou.png)' in lines
    for name in ('class_iou.png', 'features_pca.png'):
        width, height = Image.open(out / name).size
        assert width > 100 and height > 100
    assert result['files']['pca_png'] == str(out / 'features_pca.png')

    # --skip-training tests and measures the same checkpoints again: the
    # training logs are kept and the numbers come back the same.
    (log, ) = (work / 'SAR' / 'seed_0').glob('*.log.json')
    logged = log.read_text()
    again = subprocess.run(
        [sys.executable, 'tools/benchmark_accuracy.py', '--smoke',
         '--methods', 'SAR', '--work-dir', str(work), '--out-dir',
         str(out), '--skip-training'], cwd=ROOT, capture_output=True,
        text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    assert log.read_text() == logged
    rerun = json.loads((out / 'benchmark_accuracy.json').read_text())
    assert rerun['settings']['skip_training'] is True
    (old, ), (new, ) = (result['methods']['SAR']['per_seed'],
                        rerun['methods']['SAR']['per_seed'])
    assert new['train_s'] is None
    for key in ('mIoU', 'separability', 'separability_ratio',
                'gate_first_open_iter'):
        assert new[key] == old[key], key


def test_skip_training_needs_an_earlier_run(tmp_path):
    tool = load_tool('benchmark_accuracy')
    args = tool.parse_args(['--smoke', '--skip-training', '--work-dir',
                            str(tmp_path)])
    with pytest.raises(RuntimeError, match='needs the checkpoint'):
        tool.one_run('baseline', 0, args, tool.DATA, 1)
