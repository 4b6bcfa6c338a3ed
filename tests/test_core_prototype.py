"""The prototype ablation (anchor_source='prototype'): anchors are EMAs of
per-class feature means, with SAR's pull and weights. Values by hand."""
import pytest
import torch

from sar.core import SemanticAnchorRegularizer, class_sums

C, D = 3, 2


def scene():
    # Two images of 2x2 features; class 2 never appears, 255 is ignored.
    feats = torch.tensor([[[[1., 2.], [3., 4.]], [[0., 0.], [1., 1.]]],
                          [[[5., 6.], [7., 8.]], [[2., 2.], [3., 3.]]]],
                         dtype=torch.float64).requires_grad_()
    labels = torch.tensor([[[0, 0], [1, 255]], [[1, 1], [0, 255]]])
    return feats, labels


def no_classifier(anchors):
    return torch.eye(C, dtype=anchors.dtype)  # labels every prototype right


def test_class_sums_by_hand():
    feats, labels = scene()
    sums, counts = class_sums(feats.detach(), labels, C, 255)
    # class 0: pixels (0,0,0) (0,0,1) (1,1,0) -> f = (1,0) (2,0) (7,3)
    # class 1: pixels (0,1,0) (1,0,0) (1,0,1) -> f = (3,1) (5,2) (6,2)
    assert counts.tolist() == [3, 3, 0]
    assert sums.tolist() == [[10, 3], [14, 5], [0, 0]]


def test_first_step_takes_the_means_then_follows_the_ema():
    torch.manual_seed(0)
    reg = SemanticAnchorRegularizer(C, D, anchor_source='prototype',
                                    ema_momentum=0.75).double()
    feats, labels = scene()
    out = reg(feats, labels, no_classifier)
    means = torch.tensor([[10 / 3, 1.], [14 / 3, 5 / 3], [0., 0.]],
                         dtype=torch.float64)
    torch.testing.assert_close(reg.semantic_anchors, means)
    assert reg.class_seen.tolist() == [True, True, False]
    assert out['gate_open'].item() == 0  # class 2 has no prototype
    assert out['anchor_ce'].item() == 0 and out['iters_since_init'] == 0
    # Pull: ||f - P[y]||^2 / D over the six labelled pixels, times 0.1.
    f = feats.detach().permute(0, 2, 3, 1)
    y = labels.clamp(max=2)
    per_pixel = ((f - means[y]) ** 2).sum(-1) / D
    want = 0.1 * per_pixel[labels != 255].mean()
    assert out['pull'].item() == pytest.approx(want.item(), rel=1e-12)
    # A second batch where class 1 is absent and class 2 appears once.
    feats2 = torch.full((1, D, 2, 2), 9.0, dtype=torch.float64)
    labels2 = torch.tensor([[[0, 0], [2, 255]]])
    reg(feats2, labels2, no_classifier)
    want = means.clone()
    want[0] = 0.75 * means[0] + 0.25 * torch.tensor([9., 9.])
    want[2] = torch.tensor([9., 9.])  # first sight: the mean itself
    torch.testing.assert_close(reg.semantic_anchors, want)
    assert reg.class_seen.all() and reg.iters_since_init.item() == 1


def test_classes_without_a_prototype_are_not_pulled():
    torch.manual_seed(0)
    reg = SemanticAnchorRegularizer(C, D, anchor_source='prototype').double()
    feats, labels = scene()
    reg.semantic_anchors.fill_(100.0)  # would dominate if class 2 counted
    reg.class_seen.copy_(torch.tensor([True, True, False]))
    reg.eval()  # no update: the pull uses the prototypes as they are
    labels = labels.clone()
    labels[0, 1, 1] = 2
    out = reg(feats, labels, no_classifier)
    f = feats.detach().permute(0, 2, 3, 1)
    keep = (labels == 0) | (labels == 1)
    want = 0.1 * (((f - 100.0) ** 2).sum(-1) / D)[keep].mean()
    assert out['pull'].item() == pytest.approx(want.item(), rel=1e-12)
    assert torch.equal(reg.semantic_anchors,
                       torch.full((C, D), 100.0, dtype=torch.float64))


def test_prototypes_have_no_projector_and_only_pull_features():
    reg = SemanticAnchorRegularizer(C, D, anchor_source='prototype')
    assert reg.projector is None and not list(reg.parameters())
    feats, labels = scene()
    out = reg(feats.float().detach().requires_grad_(), labels, no_classifier)
    assert set(out) == {'pull', 'anchor_ce', 'anchor_acc', 'gate_open',
                        'iters_since_init', 'anchor_max_cos', 'nonfinite'}
    with pytest.raises(RuntimeError, match='prototype'):
        reg.embed_anchors()
    with pytest.raises(ValueError, match='anchor_source'):
        SemanticAnchorRegularizer(C, D, anchor_source='features')
