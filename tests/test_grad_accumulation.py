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

from conftest import DEMO_SAR

M = 0.999  # the paper's EMA momentum, the config's default


def force_gate_open(monkeypatch):
    import sar.core.regularizer as regularizer
    monkeypatch.setattr(regularizer, 'gate_open', lambda logits, *args: (
        torch.ones((), dtype=torch.bool, device=logits.device)))


def watch(sar):
    """Per call of the SAR loss (one micro-batch): E, S and the counter
    after the call, the pull, and whether backward reached the call's pull
    and anchor CE."""
    calls = []
    embedded = []
    sar.projector.register_forward_hook(
        lambda mod, args, out: embedded.append(out.detach().clone()))

    def after(module, args, out):
        call = dict(E=embedded[-1], S=module.semantic_anchors.clone(),
                    iters=int(module.iters_since_init),
                    pull=float(out['loss_sar_pull']), backward=set())
        for key in ('loss_sar_pull', 'loss_sar_anchor_ce'):
            out[key].register_hook(
                lambda grad, key=key: call['backward'].add(key)
                if grad.abs().sum() > 0 else None)
        calls.append(call)

    sar.register_forward_hook(after)
    return calls


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


def moved_fraction(before, after, target):
    """How far S moved toward E: (1 - m) for one EMA step."""
    return float((after - before).norm() / (target - before).norm())


@pytest.mark.parametrize('cumulative_iters', [1, 4])
def test_sar_advances_once_per_optimizer_step(tmp_path, shapes_root,
                                              monkeypatch, cumulative_iters):
    force_gate_open(monkeypatch)
    n = cumulative_iters
    calls = train(tmp_path, shapes_root, 2 * n, n)
    assert len(calls) == 2 * n
    first, second = calls[0], calls[n]
    # The premise: the micro-batches of a step see the same E.
    for i, call in enumerate(calls):
        assert torch.equal(call['E'], calls[i // n * n]['E'])
    assert not torch.equal(first['E'], second['E'])
    # The first step copies E; the second moves S by 1 - m toward its E,
    # as without accumulation (before the fix: 1 - m**4 = 0.003994).
    assert torch.equal(first['S'], first['E'].to(first['S'].dtype))
    fraction = moved_fraction(calls[n - 1]['S'], calls[-1]['S'], second['E'])
    assert fraction == pytest.approx(1 - M, rel=1e-4)
    assert [c['iters'] for c in calls] == [0] * n + [1] * n
    # Every micro-batch pulled and got the gradients of its pull and of
    # its anchor CE.
    for call in calls:
        assert call['pull'] > 0
        assert call['backward'] == {'loss_sar_pull', 'loss_sar_anchor_ce'}
