"""The demo's plumbing under mmseg 1.x (sar.mmseg1x.runs): its commands run
mmseg's own tools on the demo's SAR config, and what they leave is read
back in the form the demo's report takes. Tiny DigitScenes-LT, 2
iterations."""
import json
import os
import os.path as osp
import shutil
import subprocess
import sys

import numpy as np
import pytest

from helpers1x import PY, ROOT

CLASSES = ('background', *'0123456789')


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
    """The demo's SAR config, trained 2 iterations and tested with the
    demo's commands on a tiny DigitScenes-LT: (runs, config, work dir)."""
    from sar.data import make_digitscenes
    from sar.mmseg1x import runs
    tmp = tmp_path_factory.mktemp('demo1x')
    data = str(tmp / 'digitscenes')
    make_digitscenes(data, num_train=16, num_val=4)
    config = str(tmp / 'sar.py')
    with open(config, 'w') as f:  # the demo's config on the tiny data
        f.write(f'_base_ = [{osp.join(ROOT, runs.DEMO_CONFIGS["SAR"])!r}]\n'
                'train_dataloader = dict(batch_size=2, dataset=dict('
                f'data_root={data!r}))\n'
                f'test_dataloader = dict(dataset=dict(data_root={data!r}))\n'
                'default_hooks = dict(logger=dict(interval=1))\n')
    work = str(tmp / 'work')
    for cmd in (runs.train_command(config, work, seed=3, iters=2), None):
        cmd = cmd or runs.test_command(config, work)
        proc = subprocess.run([PY, *cmd], cwd=ROOT, capture_output=True,
                              text=True,
                              env=dict(os.environ, OMP_NUM_THREADS='1'))
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return runs, config, work


def test_train_command_sets_seed_schedule_and_no_validation(demo_run):
    runs, config, work = demo_run
    cmd = runs.train_command('c.py', 'w', seed=3, iters=2)
    assert cmd[0] == osp.join(runs.TOOLS, 'train.py')
    assert cmd[1:4] == ['c.py', '--work-dir', 'w']
    assert {'randomness.seed=3', 'randomness.deterministic=True',
            'train_cfg.max_iters=2', 'param_scheduler.0.end=2',
            'val_cfg=None'} <= set(cmd[5:])
    # What ran: 2 iterations, a checkpoint at the end, no validation.
    assert runs.checkpoint(work).endswith('iter_2.pth')
    entries = runs.train_log(work)
    assert [e['iter'] for e in entries] == [1, 2]
    assert all('mIoU' not in e for e in entries)


def test_train_log_has_sars_diagnostics(demo_run):
    from sar.evaluation.report import gate_summary
    runs, _, work = demo_run
    entries = runs.train_log(work)
    assert {'decode.loss_sar_pull', 'decode.sar.gate_open',
            'decode.sar.anchor_acc'} <= set(entries[0])
    gate = gate_summary(entries)
    assert gate['last_anchor_acc'] == entries[-1]['decode.sar.anchor_acc']


def test_a_copied_and_resumed_run_is_read_in_its_own_folder(demo_run,
                                                            tmp_path):
    # mmengine's last_checkpoint names the original folder's file; a
    # resumed run writes a second timestamped scalars.json.
    runs, _, work = demo_run
    copy = str(tmp_path / 'copy')
    shutil.copytree(work, copy)
    assert runs.checkpoint(copy) == osp.join(copy, 'iter_2.pth')
    entries = runs.train_log(work)
    later = osp.join(copy, '99991231_000000', 'vis_data')
    os.makedirs(later)
    with open(osp.join(later, 'scalars.json'), 'w') as f:
        f.write(json.dumps(dict(entries[-1], loss=-1.0)) + '\n')
    assert runs.train_log(copy) == entries[:-1] + [dict(entries[-1],
                                                        loss=-1.0)]


def test_metrics_in_the_reports_form(demo_run):
    from sar.evaluation.report import comparison_table
    runs, _, work = demo_run
    metric = runs.read_metrics(work)
    assert set(f'IoU.{c}' for c in CLASSES) <= set(metric)
    values = [metric[f'IoU.{c}'] for c in CLASSES]
    assert all(0 <= v <= 1 or np.isnan(v) for v in values)
    assert 0 <= metric['mIoU'] <= 1
    # mmseg's mIoU is the mean of its per-class IoU (nan classes left out).
    assert metric['mIoU'] == pytest.approx(np.nanmean(values), abs=2e-4)
    _, rows = comparison_table(dict(baseline=metric, SAR=metric),
                               CLASSES, CLASSES[1:6], CLASSES[6:])
    assert rows['SAR']['mIoU'] == round(100 * metric['mIoU'], 2)


def test_class_table_reads_the_logged_table():
    from sar.mmseg1x.runs import class_table
    log = '''x - mmengine - INFO - per class results:
x - mmengine - INFO -
+------------+-------+-------+
|   Class    |  IoU  |  Acc  |
+------------+-------+-------+
| background | 75.33 | 100.0 |
|     0      |  nan  |  nan  |
+------------+-------+-------+
x - mmengine - INFO - Iter(test) [4/4]    aAcc: 75.3300  mIoU: 75.3300
'''
    table = class_table(log)
    assert table['background'] == {'IoU': 75.33, 'Acc': 100.0}
    assert np.isnan(table['0']['IoU']) and list(table) == ['background', '0']


def test_predict_gives_label_maps(demo_run):
    runs, config, work = demo_run
    data = osp.join(osp.dirname(work), 'digitscenes')
    path = osp.join(data, 'img_dir', 'val', '00000.png')
    (labels, ) = runs.predict(config, runs.checkpoint(work), [path])
    assert labels.shape == (64, 64)
    assert labels.min() >= 0 and labels.max() < len(CLASSES)


def test_demo_tool_picks_the_1x_commands():
    out = subprocess.run(
        [sys.executable, '-c', 'import sys; sys.path.insert(0, "tools"); '
         'import demo; print(demo.RUNS.__name__, demo.DEFAULT_WORK_DIR)'],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout
    # The last line: OneDL's mmseg prints "Could not import OneDL" on import.
    assert out.splitlines()[-1].split() == ['sar.mmseg1x.runs',
                                            'work_dirs/demo-mmseg1']
