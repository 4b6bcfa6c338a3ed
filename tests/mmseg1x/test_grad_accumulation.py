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

from helpers1x import write_config

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


def moved_fraction(before, after, target):
    """How far S moved toward E: (1 - m) for one EMA step."""
    return float((after - before).norm() / (target - before).norm())


@pytest.mark.parametrize('counts', [1, 4])
def test_sar_advances_once_per_optimizer_step(tmp_path, shapes, monkeypatch,
                                              counts):
    force_gate_open(monkeypatch)
    n = counts
    calls = train(tmp_path, shapes, n)
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
