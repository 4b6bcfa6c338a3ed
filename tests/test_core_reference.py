"""The whole regularizer against a slow, independent restatement of the spec.

``Reference`` below re-derives every step of SAR_SPEC section 1 from plain
tensor operations: the projector as explicit matrix products with batch
statistics taken by hand, the auxiliary CE and its weights one anchor at a
time, the gate, the EMA, nearest label resizing by explicit source indices,
and the pull as the one-hot label map times the anchor matrix. Both run side
by side for several optimizer steps in float64 with non-default
hyperparameters, a gate that opens, closes and reopens, and labels that
need resizing by a non-integer ratio; every output, every state buffer and
every gradient must agree.
"""
import math

import pytest
import torch
import torch.nn as nn

from sar.core import SemanticAnchorRegularizer

C, D, B = 4, 6, 2
h, w, H, W = 5, 4, 13, 11  # non-integer ratios 2.6 and 2.75
IGNORE = 7
HP = dict(pull_weight=0.37, anchor_ce_weight=0.6, filter_conf=0.7,
          update_conf=0.55, ema_momentum=0.9, ignore_index=IGNORE)
EPS = 1e-5  # BatchNorm's default eps
BN_MOMENTUM = 0.1  # BatchNorm's default momentum
BORDER_P = 0.62  # between update_conf (0.55) and filter_conf (0.7)
# Boost added to the anchors' own-class logits at each step, and the gate
# the spec implies where it is known: 'off' misclassifies every anchor,
# 'on' classifies every anchor at p ~ 1, 'border' puts the least confident
# anchor at p = BORDER_P, 'mid' is whatever a boost of 1.5 gives.
SCHEDULE = ['off', 'on', 'border', 'mid', 'on', 'off', 'on']
KNOWN_GATES = {0: False, 1: True, 2: True, 4: True, 5: False, 6: True}


def nearest_source(out_size, in_size):
    """Source index of each output index under torch's legacy 'nearest'."""
    scale = in_size / out_size
    return [min(int(math.floor(i * scale)), in_size - 1)
            for i in range(out_size)]


def resize_by_hand(labels, size):
    """(B, 1, H, W) -> (B, h, w) by explicit source rows and columns."""
    rows = nearest_source(size[0], labels.shape[2])
    cols = nearest_source(size[1], labels.shape[3])
    out = torch.empty(labels.shape[0], size[0], size[1], dtype=torch.long)
    for b in range(labels.shape[0]):
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                out[b, i, j] = labels[b, 0, r, c]
    return out


def batch_norm_by_hand(x, gamma, beta, running_mean, running_var):
    """Training-mode BN over the C rows of x (C, D); updates the running
    statistics in place as BatchNorm does (unbiased variance)."""
    n = x.shape[0]
    mean = x.sum(0) / n
    var = ((x - mean) ** 2).sum(0) / n
    with torch.no_grad():
        running_mean.mul_(1 - BN_MOMENTUM).add_(BN_MOMENTUM * mean)
        running_var.mul_(1 - BN_MOMENTUM).add_(
            BN_MOMENTUM * var * n / (n - 1))
    return (x - mean) / torch.sqrt(var + EPS) * gamma + beta


class Reference:
    """SAR_SPEC section 1, step by step, with its own copies of the weights."""

    def __init__(self, reg, linear):
        p = reg.projector

        def leaf(t):
            return t.detach().clone().requires_grad_()

        self.params = {
            'fc1.weight': leaf(p.fc1.weight), 'fc1.bias': leaf(p.fc1.bias),
            'norm1.weight': leaf(p.norm1.weight),
            'norm1.bias': leaf(p.norm1.bias),
            'fc2.weight': leaf(p.fc2.weight), 'fc2.bias': leaf(p.fc2.bias),
            'norm2.weight': leaf(p.norm2.weight),
            'norm2.bias': leaf(p.norm2.bias),
            'proj.weight': leaf(p.proj.weight),
            'norm3.weight': leaf(p.norm3.weight),
            'norm3.bias': leaf(p.norm3.bias)}
        self.running = {f'norm{i}.{s}':
                        getattr(getattr(p, f'norm{i}'), s).detach().clone()
                        for i in (1, 2, 3) for s in ('running_mean',
                                                     'running_var')}
        self.cls_weight = leaf(linear.weight)
        self.cls_bias = leaf(linear.bias)
        self.a0 = reg.init_anchors.detach().clone()
        self.semantic = torch.zeros(C, D, dtype=torch.float64)
        self.initialised = False
        self.iters_since_init = -1

    def embed(self):
        P, R = self.params, self.running
        x = self.a0
        x = x @ P['fc1.weight'].t() + P['fc1.bias']
        x = batch_norm_by_hand(x, P['norm1.weight'], P['norm1.bias'],
                               R['norm1.running_mean'], R['norm1.running_var'])
        x = torch.clamp(x, min=0)
        x = x @ P['fc2.weight'].t() + P['fc2.bias']
        x = batch_norm_by_hand(x, P['norm2.weight'], P['norm2.bias'],
                               R['norm2.running_mean'], R['norm2.running_var'])
        x = torch.clamp(x, min=0)
        x = x @ P['proj.weight'].t()  # the 1x1 conv, no bias
        x = batch_norm_by_hand(x, P['norm3.weight'], P['norm3.bias'],
                               R['norm3.running_mean'], R['norm3.running_var'])
        return torch.clamp(x, min=0)

    def step(self, feats, labels, boost_of, pull_mode, distance):
        e = self.embed()
        logits = e @ self.cls_weight.t() + self.cls_bias
        logits = logits + boost_of(logits.detach()) * torch.eye(
            C, dtype=torch.float64)
        # Auxiliary CE, one anchor at a time.
        ces, kept = [], []
        for i in range(C):
            log_p = logits[i, i] - torch.logsumexp(logits[i], dim=0)
            ces.append(-log_p)
            kept.append(log_p if log_p.exp() <= HP['filter_conf'] else None)
        norm = sum(lp for lp in kept if lp is not None)
        aux = sum((lp / norm * ce for lp, ce in zip(kept, ces)
                   if lp is not None), torch.zeros((), dtype=torch.float64))
        aux = HP['anchor_ce_weight'] * aux
        # Gate: every anchor right and every CE below -log(update_conf).
        right = all(int(logits[i].argmax()) == i for i in range(C))
        sure = all(ce.item() < -math.log(HP['update_conf']) for ce in ces)
        gate = right and sure
        if gate:
            m = HP['ema_momentum']
            self.semantic = (m * self.semantic + (1 - m) * e.detach()
                             if self.initialised else e.detach().clone())
            self.initialised = True
        if self.initialised:
            self.iters_since_init += 1
        # Pull: one-hot label map times the anchor matrix.
        small = resize_by_hand(labels, (h, w))
        valid = small != IGNORE
        onehot = torch.zeros(B, h, w, C, dtype=torch.float64)
        for c in range(C):
            onehot[..., c] = (small == c).double()
        target = (onehot @ self.semantic).permute(0, 3, 1, 2)
        if distance == 'mse':
            per_pixel = ((feats - target) ** 2).sum(1) / D
        else:
            cos = (feats * target).sum(1) / (
                feats.norm(dim=1).clamp(min=1e-6) *
                target.norm(dim=1).clamp(min=1e-6))
            per_pixel = 1 - cos
        pull = (per_pixel * valid).sum() / valid.sum()
        pulling = gate if pull_mode == 'gate' else self.initialised
        pull = HP['pull_weight'] * pull * float(pulling)
        acc = sum(int(logits[i].argmax()) == i for i in range(C)) / C
        return dict(pull=pull, anchor_ce=aux, anchor_acc=acc, gate=gate)

    def leaves(self):
        return list(self.params.values()) + [self.cls_weight, self.cls_bias]


def make_boost(kind):
    """The boost for one step, as a function of the unboosted logits."""
    def boost_of(logits):
        if kind == 'off':
            return -30.0
        if kind == 'on':
            return 30.0
        if kind == 'mid':
            return 1.5
        # 'border': bisect for the boost that puts min_i p_i at BORDER_P.
        eye = torch.eye(C, dtype=logits.dtype)
        lo, hi = -50.0, 50.0
        for _ in range(200):
            mid = (lo + hi) / 2
            p = torch.softmax(logits + mid * eye, dim=1).diagonal().min()
            lo, hi = (mid, hi) if p < BORDER_P else (lo, mid)
        return (lo + hi) / 2
    return boost_of


def grad_or_zero(leaf):
    # An all-filtered auxiliary CE, or a pull while the gate is closed, is
    # an exact zero: autograd may give a zero gradient or none at all,
    # which are the same here.
    return torch.zeros_like(leaf) if leaf.grad is None else leaf.grad


def scene(seed):
    g = torch.Generator().manual_seed(seed)
    feats = torch.rand(B, D, h, w, generator=g, dtype=torch.float64)
    labels = torch.randint(0, C, (B, 1, H, W), generator=g)
    labels[torch.rand(B, 1, H, W, generator=g) < 0.25] = IGNORE
    return feats, labels


@pytest.mark.parametrize('pull_mode', ['gate', 'after_init'])
@pytest.mark.parametrize('distance', ['mse', 'cosine'])
def test_regularizer_equals_reference_over_steps(pull_mode, distance):
    torch.manual_seed(0)
    reg = SemanticAnchorRegularizer(C, D, pull_mode=pull_mode,
                                    distance=distance, **HP).double()
    linear = nn.Linear(D, C).double()
    ref = Reference(reg, linear)
    feats0, _ = scene(100)
    feats = feats0.clone().requires_grad_()
    ref_feats = feats0.clone().requires_grad_()
    opt = torch.optim.SGD([feats, *reg.parameters(), *linear.parameters()],
                          lr=0.1)
    ref_opt = torch.optim.SGD([ref_feats, *ref.leaves()], lr=0.1)
    gates, pulls, projector_reached = [], [], []
    for step, kind in enumerate(SCHEDULE):
        _, labels = scene(step)
        boost_of = make_boost(kind)
        eye = torch.eye(C, dtype=torch.float64)

        def classifier(e, boost_of=boost_of):
            logits = linear(e)
            return logits + boost_of(logits.detach()) * eye

        out = reg(feats, labels, classifier)
        want = ref.step(ref_feats, labels, boost_of, pull_mode, distance)
        where = f'step {step} ({kind})'
        assert bool(out['gate_open']) is want['gate'], where
        assert out['pull'].item() == pytest.approx(want['pull'].item(),
                                                   rel=1e-10, abs=1e-12), where
        assert out['anchor_ce'].item() == pytest.approx(
            want['anchor_ce'].item(), rel=1e-10, abs=1e-12), where
        assert out['anchor_acc'].item() == pytest.approx(want['anchor_acc'])
        assert bool(reg.initialised) is ref.initialised, where
        assert int(reg.iters_since_init) == ref.iters_since_init, where
        assert out['iters_since_init'].item() == ref.iters_since_init
        torch.testing.assert_close(reg.semantic_anchors, ref.semantic,
                                   rtol=1e-10, atol=1e-12, msg=where)

        opt.zero_grad()
        ref_opt.zero_grad()
        (out['pull'] + out['anchor_ce']).backward()
        (want['pull'] + want['anchor_ce']).backward()
        torch.testing.assert_close(grad_or_zero(feats),
                                   grad_or_zero(ref_feats), rtol=1e-9,
                                   atol=1e-12, msg=where)
        pairs = [(p, ref.params[n], n)
                 for n, p in reg.projector.named_parameters()]
        pairs += [(linear.weight, ref.cls_weight, 'classifier.weight'),
                  (linear.bias, ref.cls_bias, 'classifier.bias')]
        for ours, theirs, name in pairs:
            torch.testing.assert_close(grad_or_zero(ours),
                                       grad_or_zero(theirs), rtol=1e-9,
                                       atol=1e-12, msg=f'{where}: {name}')
        for name, value in ref.running.items():
            torch.testing.assert_close(
                reg.projector.state_dict()[name], value, rtol=1e-10,
                atol=1e-12, msg=f'{where}: {name}')
        projector_reached.append(
            float(reg.projector.fc1.weight.grad.abs().sum()) > 0)
        opt.step()
        ref_opt.step()
        gates.append(want['gate'])
        pulls.append(want['pull'].item())

    # The schedule did what it is for: the gate opened, closed and reopened,
    # and the pull was exercised (non-zero where it should be).
    assert {i: gates[i] for i in KNOWN_GATES} == KNOWN_GATES
    assert pulls[1] > 0 and pulls[2] > 0
    assert (pulls[5] > 0) is (pull_mode == 'after_init')
    assert any(projector_reached)  # the CE gradients were compared non-zero
