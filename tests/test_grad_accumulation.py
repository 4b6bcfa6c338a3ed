"""Gradient accumulation under mmcv's runner (mmseg 0.30): SAR advances once
per optimizer step (spec section 3).

mmseg's ``train_segmentor`` runs the demo SAR model on the tiny shapes data
with mmcv's ``GradientCumulativeOptimizerHook(cumulative_iters=4)``, in this
process, so that the test can watch every micro-batch. The gate is held
open (its data conditions still apply): the accounting is under test, not
the gate's criterion.
"""
import pytest
import torch
from mmcv.cnn.utils import revert_sync_batchnorm
from mmcv.utils import Config

from accumulation import (assert_sar_advanced_once_per_step,
                          force_gate_open, watch)
from conftest import DEMO_SAR


def train(tmp_path, root, iters, cumulative_iters):
    from mmseg.apis import train_segmentor
    from mmseg.datasets import build_dataset
    from mmseg.models import build_segmentor
    cfg = Config.fromfile(DEMO_SAR)
    cfg.data.samples_per_gpu = 2
    cfg.data.train.dataset.data_root = root
    cfg.runner.max_iters = iters
    cfg.checkpoint_config = None
    cfg.log_config.interval = 1
    cfg.optimizer_config = dict(type='GradientCumulativeOptimizerHook',
                                cumulative_iters=cumulative_iters) \
        if cumulative_iters > 1 else dict()
    cfg.work_dir = str(tmp_path / f'accumulate{cumulative_iters}')
    cfg.gpu_ids = [0]
    cfg.device = 'cpu'
    cfg.seed = 0
    torch.manual_seed(0)
    model = revert_sync_batchnorm(build_segmentor(cfg.model))
    model.init_weights()
    calls = watch(model.decode_head.sar_loss)
    train_segmentor(model, [build_dataset(cfg.data.train)], cfg)
    return calls


@pytest.mark.parametrize('cumulative_iters', [1, 4])
def test_sar_advances_once_per_optimizer_step(tmp_path, shapes_root,
                                              monkeypatch, cumulative_iters):
    force_gate_open(monkeypatch)
    n = cumulative_iters
    assert_sar_advanced_once_per_step(
        train(tmp_path, shapes_root, 2 * n, n), n)
