"""Every hyperparameter of the regularizer matters, by the amount it should.

One setting changes at a time against a scenario whose outcome is known in
closed form: the classifier returns logits that give each anchor a chosen
own-class probability, and the expected losses, gate and anchors are
computed by hand from the spec.
"""
import math

import pytest
import torch

from sar.core import SemanticAnchorRegularizer

C, D = 3, 4


def logits_for(probs):
    """(C, C) logits whose row i gives class i probability probs[i] and
    splits the rest evenly, so argmax is i whenever probs[i] > 1/C."""
    rows = []
    for i, p in enumerate(probs):
        own = math.log(p * (C - 1) / (1 - p))
        rows.append([own if j == i else 0.0 for j in range(C)])
    return torch.tensor(rows, dtype=torch.float64)


def scene():
    g = torch.Generator().manual_seed(1)
    feats = torch.rand(2, D, 3, 3, generator=g, dtype=torch.float64)
    labels = torch.tensor([[[0, 1, 2], [2, 2, 1], [0, 255, 1]],
                           [[1, 1, 0], [255, 2, 2], [0, 0, 255]]])
    return feats.requires_grad_(), labels


def run(probs, steps=1, **kwargs):
    """Regularizer outputs after ``steps`` calls with fixed logits."""
    torch.manual_seed(0)
    reg = SemanticAnchorRegularizer(C, D, **kwargs).double()
    feats, labels = scene()
    fixed = logits_for(probs).requires_grad_()
    outs, embedded = [], []
    for _ in range(steps):
        # The embedded anchors only enter as a zero, to keep a graph to the
        # projector; the logits are the chosen ones.
        outs.append(reg(feats, labels,
                        lambda e: fixed + 0.0 * e[:, :C].sum()))
        embedded.append(reg.embed_anchors().detach())
    return reg, outs[-1], feats, labels, fixed, embedded


def pull_by_hand(feats, labels, anchors, ignore):
    ignore = set(ignore) if isinstance(ignore, (set, tuple)) else {ignore}
    total, n = 0.0, 0
    for b in range(labels.shape[0]):
        for i in range(labels.shape[1]):
            for j in range(labels.shape[2]):
                y = int(labels[b, i, j])
                if y in ignore:
                    continue
                diff = feats[b, :, i, j].detach() - anchors[y]
                total += float((diff ** 2).sum()) / D
                n += 1
    return total / n


def ce_by_hand(probs, filter_conf):
    kept = [math.log(p) for p in probs if p <= filter_conf]
    ces = [-math.log(p) for p in probs if p <= filter_conf]
    return sum(lp / sum(kept) * ce for lp, ce in zip(kept, ces)) if kept \
        else 0.0


OPEN = (0.95, 0.85, 0.6)  # every anchor right; opens at update_conf < 0.6
BASE = dict(update_conf=0.5)


@pytest.mark.parametrize('factor', [0.0, 0.37, 3.0])
def test_pull_weight_scales_the_pull_only(factor):
    _, a, *_ = run(OPEN, **BASE)
    _, b, *_ = run(OPEN, **BASE, pull_weight=0.1 * factor)
    assert a['pull'].item() > 0
    assert b['pull'].item() == pytest.approx(factor * a['pull'].item(),
                                             rel=1e-12, abs=1e-15)
    assert b['anchor_ce'].item() == a['anchor_ce'].item()


@pytest.mark.parametrize('factor', [0.0, 0.6, 2.5])
def test_anchor_ce_weight_scales_the_auxiliary_ce_only(factor):
    _, a, *_ = run(OPEN, **BASE)
    _, b, *_ = run(OPEN, **BASE, anchor_ce_weight=factor)
    assert a['anchor_ce'].item() == pytest.approx(ce_by_hand(OPEN, 0.9))
    assert b['anchor_ce'].item() == pytest.approx(factor * ce_by_hand(OPEN,
                                                                      0.9))
    assert b['pull'].item() == a['pull'].item()


@pytest.mark.parametrize('update_conf,opens', [
    (0.8, False),   # the paper's value: anchor 2 at p = 0.6 is not sure
    (0.61, False),  # just above the least confident anchor
    (0.59, True),   # just below it
    (0.5, True)])
def test_update_conf_decides_the_gate(update_conf, opens):
    reg, out, feats, labels, _, embedded = run(OPEN, update_conf=update_conf)
    assert bool(out['gate_open']) is opens
    assert bool(reg.initialised) is opens
    want = 0.1 * pull_by_hand(feats, labels, embedded[0], 255) if opens \
        else 0.0
    assert out['pull'].item() == pytest.approx(want, rel=1e-10, abs=1e-15)


@pytest.mark.parametrize('filter_conf', [1.0, 0.9, 0.8, 0.5])
def test_filter_conf_drops_confident_anchors_from_the_ce(filter_conf):
    # 0.9 drops anchor 0 (p 0.95), 0.8 drops anchors 0 and 1, 0.5 all.
    _, out, *_ = run(OPEN, filter_conf=filter_conf, **BASE)
    assert out['anchor_ce'].item() == pytest.approx(
        ce_by_hand(OPEN, filter_conf), rel=1e-12, abs=1e-15)
    # The gate does not depend on filter_conf.
    assert bool(out['gate_open'])


def test_filter_conf_values_differ_by_hand():
    # Guard against a table whose cases all coincide.
    values = {fc: ce_by_hand(OPEN, fc) for fc in (1.0, 0.9, 0.8, 0.5)}
    assert len(set(round(v, 12) for v in values.values())) == 4


@pytest.mark.parametrize('momentum', [0.999, 0.9, 0.5, 0.0])
def test_ema_momentum_weights_old_and_new_anchors(momentum):
    torch.manual_seed(0)
    reg = SemanticAnchorRegularizer(C, D, ema_momentum=momentum,
                                    update_conf=0.5).double()
    feats, labels = scene()
    fixed = logits_for(OPEN)
    embedded = []
    for _ in range(3):
        reg(feats, labels, lambda e: fixed + 0.0 * e[:, :C].sum())
        embedded.append(reg.embed_anchors().detach())
        with torch.no_grad():  # move the projector: a new E every step
            reg.projector.norm3.bias.add_(0.3)
    e1, e2, e3 = embedded
    want = momentum * (momentum * e1 + (1 - momentum) * e2) + \
        (1 - momentum) * e3
    assert not torch.allclose(e1, e2)
    torch.testing.assert_close(reg.semantic_anchors, want, rtol=1e-12,
                               atol=1e-12)


def test_detach_ce_weights_changes_the_gradient_as_the_formula_says():
    probs = (0.7, 0.5, 0.45)
    grads = {}
    for detach in (False, True):
        _, out, _, _, fixed, _ = run(probs, detach_ce_weights=detach)
        grads[detach] = torch.autograd.grad(out['anchor_ce'], fixed)[0]
    # By hand: w_i = log p_i / sum_j log p_j, loss = sum_i w_i ce_i, with
    # w as a constant (detached) or not.
    for detach in (False, True):
        logits = logits_for(probs).requires_grad_()
        log_p = torch.log_softmax(logits, dim=1).diagonal()
        weights = log_p / log_p.sum()
        if detach:
            weights = weights.detach()
        loss = (weights * -log_p).sum()
        want = torch.autograd.grad(loss, logits)[0]
        torch.testing.assert_close(grads[detach], want, rtol=1e-10,
                                   atol=1e-12)
    assert not torch.allclose(grads[False], grads[True])


@pytest.mark.parametrize('ignore_index', [255, 2, 0])
def test_ignore_index_removes_exactly_its_pixels(ignore_index):
    feats, labels = scene()
    if ignore_index != 255:  # 255 stays in the map: make it a real class
        labels = torch.where(labels == 255, torch.ones_like(labels), labels)
    torch.manual_seed(0)
    reg = SemanticAnchorRegularizer(C, D, update_conf=0.5,
                                    ignore_index=ignore_index).double()
    out = reg(feats, labels, lambda e: logits_for(OPEN) + 0.0 * e.sum())
    want = 0.1 * pull_by_hand(feats, labels, reg.semantic_anchors,
                              ignore_index)
    assert out['pull'].item() == pytest.approx(want, rel=1e-10)
    # Removing other pixels gives another value: the table can tell.
    other = 0.1 * pull_by_hand(feats, labels, reg.semantic_anchors,
                               {ignore_index, 1, 255})
    assert other != pytest.approx(want, rel=1e-6)
