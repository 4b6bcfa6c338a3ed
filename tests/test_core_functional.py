"""The SAR math in plain torch: closed forms, a loop reference, gradients."""
import math

import pytest
import torch
import torch.nn.functional as F

from sar.core import (anchor_ce, downsample_labels, ema_update, gate_open,
                      init_anchors, pull_loss)

IGNORE = 255


def reference_pull(feats, labels, anchors, ignore_index, distance):
    """The spec's formula, one pixel at a time."""
    total, count = 0.0, 0
    B, D, h, w = feats.shape
    for b in range(B):
        for i in range(h):
            for j in range(w):
                y = int(labels[b, i, j])
                if y == ignore_index:
                    continue
                f, s = feats[b, :, i, j], anchors[y]
                if distance == 'mse':
                    total = total + ((f - s) ** 2).sum() / D
                else:
                    total = total + 1 - (f @ s) / (f.norm() * s.norm())
                count += 1
    return total / max(count, 1)


def reference_anchor_ce(logits, filter_conf):
    C = logits.shape[0]
    ces, logps = [], []
    for i in range(C):
        logp = logits[i, i] - torch.logsumexp(logits[i], dim=0)
        ces.append(-logp)
        logps.append(logp if logp.exp() <= filter_conf else None)
    kept = [lp for lp in logps if lp is not None]
    if not kept:
        return torch.zeros((), dtype=logits.dtype)
    norm = sum(kept)
    return sum(lp / norm * ce for lp, ce in zip(logps, ces) if lp is not None)


@pytest.mark.parametrize('distance', ['mse', 'cosine'])
@pytest.mark.parametrize('shape,ignore_frac', [((1, 3, 2, 2), 0.0),
                                               ((2, 5, 3, 4), 0.3),
                                               ((3, 4, 1, 5), 0.8)])
def test_pull_matches_loop_reference(shape, ignore_frac, distance):
    g = torch.Generator().manual_seed(sum(shape))
    B, D, h, w = shape
    C = 4
    feats = torch.randn(shape, generator=g, dtype=torch.float64)
    anchors = torch.randn(C, D, generator=g, dtype=torch.float64)
    labels = torch.randint(0, C, (B, h, w), generator=g)
    labels[torch.rand(B, h, w, generator=g) < ignore_frac] = IGNORE
    got = pull_loss(feats, labels, anchors, IGNORE, distance)
    want = reference_pull(feats, labels, anchors, IGNORE, distance)
    assert torch.allclose(got.double(), torch.as_tensor(want).double(),
                          rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('distance', ['mse', 'cosine'])
def test_pull_is_zero_when_features_are_their_anchors(distance):
    anchors = torch.rand(3, 6) + 0.1
    labels = torch.tensor([[[0, 1], [2, IGNORE]]])
    feats = anchors[labels.clamp(max=2)].permute(0, 3, 1, 2).clone()
    feats[0, :, 1, 1] = 100.0  # an ignored pixel far from everything
    assert pull_loss(feats, labels, anchors, IGNORE, distance).item() == \
        pytest.approx(0.0, abs=1e-6)


def test_pull_closed_form_value():
    # One valid pixel at distance 2 in every one of D=4 channels:
    # ||f - s||^2 / D = 4 * 4 / 4 = 4.
    anchors = torch.zeros(2, 4)
    feats = torch.full((1, 4, 1, 2), 2.0)
    labels = torch.tensor([[[1, IGNORE]]])
    assert pull_loss(feats, labels, anchors, IGNORE).item() == 4.0


@pytest.mark.parametrize('distance', ['mse', 'cosine'])
def test_all_ignored_gives_zero_with_graph(distance):
    feats = torch.randn(2, 3, 2, 2, requires_grad=True)
    labels = torch.full((2, 2, 2), IGNORE)
    loss = pull_loss(feats, labels, torch.randn(4, 3), IGNORE, distance)
    assert loss.item() == 0.0 and not torch.isnan(loss)
    assert loss.requires_grad
    loss.backward()
    assert torch.equal(feats.grad, torch.zeros_like(feats))


def test_pull_never_reaches_anchors():
    anchors = torch.randn(3, 4, requires_grad=True)
    feats = torch.randn(1, 4, 2, 2, requires_grad=True)
    labels = torch.randint(0, 3, (1, 2, 2))
    pull_loss(feats, labels, anchors, IGNORE).backward()
    assert anchors.grad is None
    assert feats.grad.abs().sum() > 0


@pytest.mark.parametrize('distance', ['mse', 'cosine'])
@pytest.mark.parametrize('ignore_frac', [0.0, 0.5])
def test_pull_gradcheck(ignore_frac, distance):
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(2, 3, 2, 3, dtype=torch.float64, generator=g,
                        requires_grad=True)
    labels = torch.randint(0, 4, (2, 2, 3), generator=g)
    labels[torch.rand(2, 2, 3, generator=g) < ignore_frac] = IGNORE
    anchors = torch.randn(4, 3, dtype=torch.float64, generator=g)
    assert torch.autograd.gradcheck(
        lambda f: pull_loss(f, labels, anchors, IGNORE, distance).double(),
        (feats, ))


def test_mse_pull_gradient_equals_autograd_of_the_formula():
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(2, 5, 3, 3, generator=g, requires_grad=True)
    labels = torch.randint(0, 3, (2, 3, 3), generator=g)
    labels[0, 0] = IGNORE
    anchors = torch.randn(3, 5, generator=g)
    pull_loss(feats, labels, anchors, IGNORE).backward()
    feats2 = feats.detach().clone().requires_grad_()
    valid = labels != IGNORE
    target = anchors[labels.clamp(max=2)].permute(0, 3, 1, 2)
    per_pixel = ((feats2 - target) ** 2).sum(1)
    (per_pixel[valid].sum() / (5 * valid.sum())).backward()
    assert torch.allclose(feats.grad, feats2.grad, atol=1e-6)


# Auxiliary CE: (logits, filter_conf, expected loss) computed by hand.
# Row i holds anchor i's logits. With two classes and logits (a, 0), (0, b):
# p_0 = sigmoid(a), p_1 = sigmoid(b).
LN = math.log


def _hand(p0, p1, keep0=True, keep1=True):
    lp = [LN(p0) if keep0 else 0.0, LN(p1) if keep1 else 0.0]
    ce = [-LN(p0), -LN(p1)]
    norm = sum(lp) if (keep0 or keep1) else 1.0
    return sum(w / norm * c for w, c in zip(lp, ce))


def _sig(x):
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize('a,b,conf,expected', [
    (0.0, 0.0, 0.9, _hand(0.5, 0.5)),                    # both uncertain
    (1.0, -2.0, 0.9, _hand(_sig(1.0), _sig(-2.0))),       # unequal weights
    (5.0, 0.0, 0.9, _hand(_sig(5.0), 0.5, keep0=False)),  # anchor 0 filtered
    (5.0, 6.0, 0.9, 0.0),                                # all filtered
    (5.0, 6.0, 1.0, _hand(_sig(5.0), _sig(6.0))),        # nothing filtered
])
def test_anchor_ce_matches_hand_computation(a, b, conf, expected):
    logits = torch.tensor([[a, 0.0], [0.0, b]], dtype=torch.float64)
    loss, ce = anchor_ce(logits, conf)
    assert loss.item() == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert ce.tolist() == pytest.approx([-LN(_sig(a)), -LN(_sig(b))])


@pytest.mark.parametrize('seed', range(4))
def test_anchor_ce_matches_loop_reference(seed):
    g = torch.Generator().manual_seed(seed)
    C = 2 + seed * 3
    logits = torch.randn(C, C, dtype=torch.float64, generator=g) * 3
    logits += torch.eye(C, dtype=torch.float64) * seed
    got, _ = anchor_ce(logits, 0.9)
    assert got.item() == pytest.approx(
        float(reference_anchor_ce(logits, 0.9)), rel=1e-7, abs=1e-10)


def test_anchor_ce_all_filtered_keeps_graph():
    logits = (torch.eye(3) * 20).requires_grad_()
    loss, _ = anchor_ce(logits, 0.9)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros(3, 3))


def test_anchor_ce_gradcheck():
    # Weights not detached (the release's choice): the gradient is the true
    # derivative of the loss. (Detached weights are not, by design.)
    logits = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: anchor_ce(x, 0.9)[0],
                                    (logits, ))


def test_detached_weights_change_the_gradient_not_the_value():
    logits = torch.randn(3, 3, requires_grad=True)
    l1, _ = anchor_ce(logits, 1.0, False)
    l2, _ = anchor_ce(logits, 1.0, True)
    assert l1.item() == pytest.approx(l2.item())
    g1 = torch.autograd.grad(l1, logits)[0]
    g2 = torch.autograd.grad(l2, logits)[0]
    assert not torch.allclose(g1, g2)


@pytest.mark.parametrize('logits,conf,expected', [
    ([[3.0, 0.0], [0.0, 3.0]], 0.8, True),    # p = 0.953 each
    ([[3.0, 0.0], [0.0, 1.0]], 0.8, False),   # p_1 = 0.731 < 0.8
    ([[3.0, 0.0], [0.0, 1.0]], 0.7, True),
    ([[0.0, 3.0], [0.0, 3.0]], 0.01, False),  # anchor 0 misclassified
    ([[1.0, 1.2], [0.0, 3.0]], 0.01, False),  # misclassified, any conf
])
def test_gate_opens_exactly_when_all_right_and_confident(logits, conf,
                                                         expected):
    logits = torch.tensor(logits)
    _, ce = anchor_ce(logits, 0.9)
    assert bool(gate_open(logits, ce, conf)) is expected


def test_ema_first_copies_then_follows_momentum():
    S = torch.zeros(2, 3)
    initialised = torch.zeros((), dtype=torch.bool)
    e1, e2 = torch.ones(2, 3), torch.full((2, 3), 3.0)
    ema_update(S, e1, initialised, torch.tensor(False), 0.9)
    assert torch.equal(S, torch.zeros(2, 3)) and not initialised
    ema_update(S, e1, initialised, torch.tensor(True), 0.9)
    assert torch.equal(S, e1) and initialised
    ema_update(S, e2, initialised, torch.tensor(True), 0.9)
    assert torch.allclose(S, torch.full((2, 3), 0.9 * 1 + 0.1 * 3))
    ema_update(S, e1 * 100, initialised, torch.tensor(False), 0.9)
    assert torch.allclose(S, torch.full((2, 3), 1.2)) and initialised


def test_init_anchors_properties():
    torch.manual_seed(0)
    a = init_anchors(5, 8, 'gaussian')
    torch.manual_seed(0)
    assert torch.equal(a, init_anchors(5, 8, 'gaussian'))  # seed decides
    o = init_anchors(5, 8, 'orthogonal')
    gram = o @ o.t()
    assert torch.allclose(gram, torch.eye(5) * 8, atol=1e-4)
    e = init_anchors(5, 8, 'etf')
    cos = F.normalize(e, dim=1) @ F.normalize(e, dim=1).t()
    off = cos[~torch.eye(5, dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, -1 / 4), atol=1e-5)
    assert torch.allclose(e.norm(dim=1), torch.full((5, ), 8**0.5),
                          atol=1e-4)
    with pytest.raises(ValueError, match="anchor_init='gaussian'"):
        init_anchors(9, 8, 'etf')
    with pytest.raises(ValueError, match='must be one of'):
        init_anchors(3, 8, 'uniform')


def test_downsample_labels_nearest_keeps_ids():
    labels = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255],
                            [2, 2, 255, 255]]])[:, None]
    small = downsample_labels(labels, (2, 2))
    assert small.tolist() == [[[0, 1], [2, 255]]] and small.dtype == \
        torch.long


# Exact nearest resizing: (input size, output size, source rows, source
# columns), the sources worked out by hand as floor(i * in / out). Every
# case has a non-integer ratio; 'nearest-exact' (floor((i + 0.5) * in / out))
# would pick other rows or columns in each.
@pytest.mark.parametrize('in_size,out_size,rows,cols', [
    ((7, 5), (3, 2), [0, 2, 4], [0, 2]),
    ((13, 11), (5, 4), [0, 2, 5, 7, 10], [0, 2, 5, 8]),
    ((2, 3), (4, 5), [0, 0, 1, 1], [0, 0, 1, 1, 2]),  # upsampling
    ((9, 9), (4, 4), [0, 2, 4, 6], [0, 2, 4, 6]),
])
def test_downsample_labels_is_exact_nearest(in_size, out_size, rows, cols):
    H, W = in_size
    labels = (torch.arange(H)[:, None] * 16 + torch.arange(W)).view(1, H, W)
    want = [[r * 16 + c for c in cols] for r in rows]
    assert downsample_labels(labels, out_size).tolist() == [want]
    assert downsample_labels(labels[:, None], out_size).tolist() == [want]


def test_projector_equals_explicit_matrix_products():
    from sar.core import AnchorProjector
    torch.manual_seed(0)
    proj = AnchorProjector(5).double()
    with torch.no_grad():  # non-trivial affine parameters in every norm
        for norm in (proj.norm1, proj.norm2, proj.norm3):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(4, 5, dtype=torch.float64)

    def bn(z, norm):
        mean = z.mean(0)
        var = ((z - mean) ** 2).mean(0)
        return (z - mean) / torch.sqrt(var + norm.eps) * norm.weight + \
            norm.bias

    want = x
    want = bn(want @ proj.fc1.weight.t() + proj.fc1.bias, proj.norm1).relu()
    want = bn(want @ proj.fc2.weight.t() + proj.fc2.bias, proj.norm2).relu()
    want = bn(want @ proj.proj.weight.t(), proj.norm3).relu()
    got = proj(x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert proj.proj.bias is None
    assert (got == 0).any() and (got >= 0).all()  # the last ReLU acts
