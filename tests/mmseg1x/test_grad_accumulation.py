"""Gradient accumulation under mmengine's runner (mmseg 1.x): SAR advances
once per optimizer step (spec section 3).

mmengine's Runner trains the suite's tiny HRNet FCN with SAR on the shapes
data with ``optim_wrapper.accumulative_counts=4``, in this process, so that
the test can watch every micro-batch. The gate is held open (its data
conditions still apply): the accounting is under test, not the gate's
criterion.
"""
import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from accumulation import (assert_sar_advanced_once_per_step,
                          force_gate_open, watch)
from helpers1x import write_config

@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    from sar.data import make_shapes_dataset
    root = tmp_path_factory.mktemp('shapes')
    return make_shapes_dataset(str(root), num_train=8, num_val=2, size=32)


def train(tmp_path, root, counts):
    iters = 2 * counts
    cfg = Config.fromfile(write_config(tmp_path / f'sar{counts}.py', root,
                                       iters=iters))
    cfg.optim_wrapper.accumulative_counts = counts
    cfg.train_cfg.val_interval = 10 * iters  # no validation
    cfg.work_dir = str(tmp_path / f'work{counts}')
    cfg.experiment_name = f'{tmp_path.name}_accumulate{counts}'
    runner = Runner.from_cfg(cfg)
    calls = watch(runner.model.decode_head.sar_loss)
    runner.train()
    return calls


@pytest.mark.parametrize('counts', [1, 4])
def test_sar_advances_once_per_optimizer_step(tmp_path, shapes, monkeypatch,
                                              counts):
    force_gate_open(monkeypatch)
    assert_sar_advanced_once_per_step(train(tmp_path, shapes, counts),
                                      counts)
