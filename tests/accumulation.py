"""What both suites' gradient-accumulation tests share
(tests/test_grad_accumulation.py, tests/mmseg1x/test_grad_accumulation.py):
holding SAR's gate open, watching every micro-batch of the SAR loss, and
the checks that SAR advanced once per optimizer step (spec section 3)."""
import pytest
import torch

M = 0.999  # the paper's EMA momentum, the config's default


def force_gate_open(monkeypatch):
    """Every anchor counts as classified right and confidently: the gate's
    data conditions (labelled, finite pixels) still apply."""
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


def moved_fraction(before, after, target):
    """How far S moved toward E: (1 - m) for one EMA step."""
    return float((after - before).norm() / (target - before).norm())


def assert_sar_advanced_once_per_step(calls, n):
    """``calls`` of :func:`watch` over two optimizer steps of ``n``
    micro-batches each, with the gate held open."""
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
