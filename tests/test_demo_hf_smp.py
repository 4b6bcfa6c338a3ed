"""`make demo-transformers` / `make demo-smp` (tools/demo_hf_smp.py): the
IoU it computes from predictions, and its report, with a stand-in for the
two trainings (the trainings themselves: test_transformers_glue.py and
test_smp_glue.py)."""
import json
import math
import os
import os.path as osp

import numpy as np
import pytest

from conftest import ROOT
from sar.evaluation.iou import iou_metrics
from sar.evaluation.report import summary_line
from tool_modules import load_tool


def test_iou_by_hand():
    labels = np.array([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 0, 2]])
    out = iou_metrics(pred, labels, ['a', 'b', 'c'])
    # a: inter 1, union 3 (two true, one more predicted); b: 2 of 3;
    # c: 1 of 2. The two ignored pixels count for nothing.
    assert out['IoU.a'] == pytest.approx(1 / 3)
    assert out['IoU.b'] == pytest.approx(2 / 3)
    assert out['IoU.c'] == pytest.approx(1 / 2)
    assert out['mIoU'] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)


def test_a_class_in_neither_map_is_left_out_of_the_mean():
    labels = np.array([0, 0, 1])
    out = iou_metrics(labels, labels, ['a', 'b', 'c'])
    assert math.isnan(out['IoU.c'])
    assert out['mIoU'] == 1.0


def test_predictions_outside_the_classes_are_refused():
    with pytest.raises(ValueError, match='outside 0..1'):
        iou_metrics(np.array([0, 2]), np.array([0, 1]), ['a', 'b'])
    with pytest.raises(ValueError, match='shape'):
        iou_metrics(np.zeros((2, 2)), np.zeros((4, )), ['a', 'b'])


def test_the_report_scores_both_predictions_and_ends_with_the_line(
        tmp_path, monkeypatch, capsys):
    tool = load_tool('demo_hf_smp')
    from sar.data.arrays import read_split
    from sar.data.digitscenes import DIGITSCENES_CLASSES
    data, work = str(tmp_path / 'data'), str(tmp_path / 'work')
    trained = []

    def stand_in(args, start):
        # What the two trainings leave: SAR predicts the truth, the
        # baseline misses digit 9 (background instead).
        _, labels = read_split(args.data_dir, 'val')
        for method in tool.METHODS:
            folder = osp.join(args.work_dir, method)
            os.makedirs(folder)
            pred = np.where(labels == 255, 0, labels)
            if method == 'baseline':
                pred = np.where(pred == DIGITSCENES_CLASSES.index('9'), 0,
                                pred)
            np.save(osp.join(folder, 'pred.npy'), pred.astype(np.uint8))
            log = [dict(iter=50, loss=1.0)]
            if method == 'SAR':
                log = [dict(iter=50, loss=1.0, **{'sar.gate_open': 0.0}),
                       dict(iter=100, loss=0.5, loss_sar_pull=0.25,
                            **{'sar.gate_open': 0.5, 'sar.anchor_acc': 1.0})]
            with open(osp.join(folder, 'log.json'), 'w') as f:
                json.dump(log, f)
        trained.append(args.framework)

    monkeypatch.setattr(tool, 'train_all', stand_in)
    tool.main(['smp', '--data-dir', data, '--work-dir', work,
               '--num-train', '20', '--num-val', '12'])
    out = capsys.readouterr().out.strip().splitlines()
    assert trained == ['smp']
    _, labels = read_split(data, 'val')
    truth = np.where(labels == 255, 0, labels)
    classes = list(DIGITSCENES_CLASSES)
    nine = classes.index('9')
    base = iou_metrics(np.where(truth == nine, 0, truth), labels, classes)
    assert out[-1] == summary_line(100 * base['mIoU'], 100.0)
    assert base['mIoU'] < 1  # the val split holds a 9: the two differ
    assert any('anchor gate first open by step 100' in line and
               'last pull loss 0.2500' in line for line in out)


@pytest.mark.parametrize('argv, says', [
    (['transformers', '--optimizer', 'adam'], '--optimizer is for smp'),
    (['smp', '--num-train', '20'], 'would rewrite the data of `make demo`'),
])
def test_arguments_that_would_mislead_are_refused(argv, says, capsys):
    tool = load_tool('demo_hf_smp')
    with pytest.raises(SystemExit):
        tool.parse_args(argv)
    assert says in capsys.readouterr().err
    assert tool.parse_args(['smp']).optimizer == 'sgd'
