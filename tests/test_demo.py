"""The demo's report pieces on tiny inputs: table, summary line, log
reading, picture, and the choice of pictured scenes; the fairness of its
two configs and commands, and the order in which it runs its tools (with
stand-ins for the tools)."""
import json
import os
import os.path as osp

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from sar.evaluation.report import (class_iou, comparison_table, gate_summary,
                                   merge_train_logs, read_train_log,
                                   summary_line)
from sar.evaluation.visualize import colorize, comparison_figure
from tool_modules import load_tool


@pytest.mark.parametrize('base, sar, line', [
    (41.2, 47.85, 'mIoU baseline 41.20 SAR 47.85 (gain +6.65)'),
    (50, 49.5, 'mIoU baseline 50.00 SAR 49.50 (gain -0.50)'),
    (41.204, 47.856, 'mIoU baseline 41.20 SAR 47.86 (gain +6.66)'),
    (10, 10, 'mIoU baseline 10.00 SAR 10.00 (gain +0.00)'),
])
def test_summary_line(base, sar, line):
    assert summary_line(base, sar) == line


def metric(ious):
    """An mmseg evaluation dict (fractions) for classes a, b, c."""
    out = {f'IoU.{c}': v for c, v in zip('abc', ious)}
    out.update({f'Acc.{c}': 0.5 for c in 'abc'})
    out.update(mIoU=round(sum(ious) / 3, 4), mAcc=0.5, aAcc=0.9)
    return out


def test_comparison_table_rows_and_gain():
    metrics = {'baseline': metric([0.9, 0.5, 0.1]),
               'SAR': metric([0.9, 0.6, 0.4])}
    assert class_iou(metrics['SAR'], 'abc') == dict(a=90.0, b=60.0, c=40.0)
    text, rows = comparison_table(metrics, 'abc', head=['b'], tail=['c'])
    assert rows['baseline'] == dict(a=90.0, b=50.0, c=10.0, head=50.0,
                                    tail=10.0, mIoU=50.0)
    assert rows['SAR'] == dict(a=90.0, b=60.0, c=40.0, head=60.0, tail=40.0,
                               mIoU=63.33)
    lines = text.splitlines()
    assert 'baseline IoU' in lines[1] and 'SAR IoU' in lines[1]
    tail_row = next(row for row in lines if 'tail mean (c)' in row)
    assert '10.00' in tail_row and '40.00' in tail_row and '+30.00' in \
        tail_row
    miou_row = next(row for row in lines if '| mIoU' in row)
    assert '+13.33' in miou_row
    with pytest.raises(ValueError):
        comparison_table({'a': metrics['SAR']}, 'abc', ['a'], ['b'])


def test_gate_summary_from_an_mmseg_log(tmp_path):
    log = tmp_path / 'x.log.json'
    entries = [dict(env_info='...', seed=1)]
    for it, gate, acc in ((50, 0.0, 0.3), (100, 0.0, 0.7), (150, 0.2, 1.0),
                          (200, 1.0, 1.0)):
        entries.append({'mode': 'train', 'iter': it, 'decode.sar.gate_open':
                        gate, 'decode.sar.anchor_acc': acc,
                        'decode.loss_sar_pull': 0.01 * gate})
    entries.append({'mode': 'val', 'iter': 200, 'mIoU': 0.5})
    log.write_text('\n'.join(json.dumps(e) for e in entries) + '\n')
    read = read_train_log(str(log))
    assert [e['iter'] for e in read] == [50, 100, 150, 200]
    assert gate_summary(read) == dict(first_open_iter=150,
                                      open_fraction=0.3,
                                      last_anchor_acc=1.0, last_pull=0.01)
    closed = [dict(e, **{'decode.sar.gate_open': 0.0}) for e in read]
    assert gate_summary(closed)['first_open_iter'] is None
    assert gate_summary([{'mode': 'train', 'iter': 1}]) == dict(
        first_open_iter=None, open_fraction=None, last_anchor_acc=None,
        last_pull=None)


def test_a_resumed_runs_logs_merge_and_the_runs_read_them(tmp_path):
    from sar.mmseg0x.runs import train_log

    # Killed at 7 with the checkpoint of 5: the second session repeats 6-7.
    first = [dict(iter=i, mode='train', loss=1.0) for i in range(1, 8)]
    second = [dict(iter=i, mode='train', loss=2.0) for i in range(6, 10)]
    merged = merge_train_logs([first, [], second])
    assert [(e['iter'], e['loss']) for e in merged] == \
        [(i, 1.0) for i in range(1, 6)] + [(i, 2.0) for i in range(6, 10)]
    assert merge_train_logs([]) == []
    # The 0.x runs module finds both sessions' files, oldest first by name.
    for name, entries in (('20261207_020000', second),
                          ('20261207_010000', first)):
        (tmp_path / f'{name}.log.json').write_text(
            '\n'.join(json.dumps(e) for e in entries) + '\n')
    assert train_log(str(tmp_path)) == merged


def test_colorize():
    palette = [[0, 0, 0], [10, 20, 30]]
    out = colorize(np.array([[0, 1], [255, 1]]), palette)
    assert out.dtype == np.uint8
    assert out.tolist() == [[[0, 0, 0], [10, 20, 30]],
                            [[255, 255, 255], [10, 20, 30]]]


def test_comparison_figure_on_tiny_arrays(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
              for _ in range(2)]
    gts = [rng.integers(0, 3, (8, 8)) for _ in range(2)]
    preds = {'baseline': gts[::-1], 'SAR': gts}
    palette = [[0, 0, 0], [255, 0, 0], [0, 255, 0]]
    fig = comparison_figure(images, gts, preds, palette,
                            class_names=['bg', 'x', 'y'],
                            row_titles=['s0', 's1'])
    grid = [ax for ax in fig.axes if ax.get_images()]
    assert len(grid) == 2 * 4
    assert [ax.get_title() for ax in grid[:4]] == [
        'image', 'ground truth', 'baseline', 'SAR']
    assert np.array_equal(grid[3].get_images()[0].get_array(),
                          colorize(gts[0], palette))
    out = tmp_path / 'fig.png'
    fig.savefig(out, dpi=50)
    assert Image.open(out).size[0] > 0
    with pytest.raises(ValueError):
        comparison_figure(images, gts[:1], preds, palette)


def test_demo_pictures_the_first_scenes_with_tail_digits(tmp_path):
    ann = tmp_path / 'ann_dir' / 'val'
    ann.mkdir(parents=True)
    for name, top in (('00000.png', 3), ('00001.png', 9), ('00002.png', 1),
                      ('00003.png', 7), ('00004.png', 10)):
        Image.fromarray(np.array([[0, top]], np.uint8)).save(ann / name)
    demo = load_tool('demo')
    assert demo.tail_scenes(str(tmp_path), [7, 8, 9, 10], 2) == [
        '00001.png', '00003.png']
    assert demo.tail_scenes(str(tmp_path), [7, 8, 9, 10], 9) == [
        '00001.png', '00003.png', '00004.png']
    configs = set(demo.CONFIGS.values())
    assert all(osp.isfile(osp.join(ROOT, c)) for c in configs)


def test_baseline_and_sar_differ_only_in_the_decode_head():
    """A fair demo: same data, schedule, seed and backbone for both."""
    from mmcv.utils import Config
    demo = load_tool('demo')
    base, sar = (Config.fromfile(osp.join(ROOT, demo.CONFIGS[m]))._cfg_dict
                 .to_dict() for m in ('baseline', 'SAR'))
    assert base['model'].pop('decode_head')['type'] == 'FCNHead'
    assert sar['model'].pop('decode_head')['type'] == 'SARHead'
    sar.pop('custom_imports')
    assert sar == base


def test_demo_commands_give_both_methods_the_same_schedule():
    import argparse
    demo = load_tool('demo')
    args = argparse.Namespace(seed=7, iters=20)
    commands = {m: demo.train_command(c, f'w/{m}', args)
                for m, c in demo.CONFIGS.items()}
    for method, cmd in commands.items():
        assert cmd[:2] == ['tools/train.py', demo.CONFIGS[method]]
        assert cmd[2:4] == ['--work-dir', f'w/{method}']
    assert commands['baseline'][4:] == commands['SAR'][4:] == [
        '--no-validate', '--deterministic', '--seed', '7', '--cfg-options',
        'runner.max_iters=20', 'checkpoint_config.interval=20']
    assert demo.test_command('c.py', 'w') == [
        'tools/test.py', 'c.py', osp.join('w', 'latest.pth'), '--eval',
        'mIoU', '--work-dir', 'w']


# Stand-ins for tools/train.py and tools/test.py: the "training" leaves a
# mark and mmseg's log, the "test" writes an evaluation file recording
# whether the training had ended and its OMP_NUM_THREADS.
FAKE_TRAIN = '''
import json, os, sys, time
work = sys.argv[1]
time.sleep(float(sys.argv[2]))
open(os.path.join(work, 'x.log.json'), 'w').write(
    json.dumps({'mode': 'train', 'iter': 5}) + '\\n')
open(os.path.join(work, 'trained'), 'w').close()
'''
FAKE_TEST = '''
import json, os, sys
work = sys.argv[1]
metric = dict(mIoU=float(sys.argv[2]),
              trained=os.path.exists(os.path.join(work, 'trained')),
              threads=os.environ['OMP_NUM_THREADS'])
open(os.path.join(work, 'eval_1.json'), 'w').write(
    json.dumps(dict(metric=metric)))
'''


def test_each_method_is_tested_after_its_training(tmp_path, monkeypatch):
    import argparse
    demo = load_tool('demo')
    seconds = dict(baseline=0.1, SAR=1.5)  # the baseline ends first
    monkeypatch.setattr(demo, 'train_command', lambda config, work, args: [
        '-c', FAKE_TRAIN, work,
        str(seconds['SAR' if 'sar' in work else 'baseline'])])
    monkeypatch.setattr(demo, 'test_command', lambda config, work: [
        '-c', FAKE_TEST, work, '0.5' if 'sar' in work else '0.25'])
    works = {m: str(tmp_path / m.lower()) for m in demo.CONFIGS}
    args = argparse.Namespace(jobs=2, iters=5, progress_every=0.2, seed=None)
    metrics = demo.train_and_test_all(works, args, 0.0)
    assert metrics == dict(
        baseline=dict(mIoU=0.25, trained=True, threads=str(max(
            1, len(os.sched_getaffinity(0)) // 2))),
        SAR=dict(mIoU=0.5, trained=True, threads=metrics['SAR']['threads']))
    # The baseline was tested while SAR still trained: its evaluation is
    # older than SAR's training mark.
    assert os.path.getmtime(tmp_path / 'baseline' / 'eval_1.json') < \
        os.path.getmtime(tmp_path / 'sar' / 'trained')
