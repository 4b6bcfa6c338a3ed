"""The collapse warning: when it fires, what it says, in each anchor mode.

Plain torch (sar.core only)."""
import math
import warnings

import pytest
import torch

from sar.core import SemanticAnchorRegularizer
from sar.core.regularizer import (max_pairwise_cosine,
                                  min_pairwise_distance_ratio)

C, D = 3, 8


def collapsed_regularizer(**kwargs):
    reg = SemanticAnchorRegularizer(C, D, **kwargs)
    with torch.no_grad():
        reg.init_anchors.copy_(reg.init_anchors[:1].expand(C, D))
        reg.projector.norm3.bias.fill_(1.0)  # identical rows, not zeros
    return reg


def test_collapsed_anchors_are_reported_and_warned_about():
    reg = collapsed_regularizer(collapse_patience=20)
    feats, labels = torch.rand(2, D, 4, 4), torch.randint(0, C, (2, 4, 4))
    cls = torch.nn.Linear(D, C)
    with pytest.warns(RuntimeWarning, match='collapsing onto each other'):
        for _ in range(20):
            out = reg(feats, labels, cls)
    assert out['anchor_max_cos'].item() == pytest.approx(1.0, abs=1e-6)
    # Once only.
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        for _ in range(20):
            reg(feats, labels, cls)


def test_healthy_anchors_raise_no_warning():
    reg = SemanticAnchorRegularizer(C, D, anchor_init='etf',
                                    collapse_patience=10)
    feats, labels = torch.rand(2, D, 4, 4), torch.randint(0, C, (2, 4, 4))
    with warnings.catch_warnings():
        warnings.simplefilter('error', RuntimeWarning)
        for _ in range(30):
            out = reg(feats, labels, torch.nn.Linear(D, C))
    assert out['anchor_max_cos'].item() < 0.99
    # and the diagnostic is the largest off-diagonal cosine of E
    e = torch.nn.functional.normalize(reg.embed_anchors().detach(), dim=1)
    cos = e @ e.t()
    want = cos[~torch.eye(C, dtype=torch.bool)].max()
    assert out['anchor_max_cos'].item() == pytest.approx(want.item(),
                                                         abs=1e-5)


def feed(reg, cosines):
    """Drive the watch with chosen per-step cosines; the warnings raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        for value in cosines:
            reg._watch_collapse(torch.tensor(value))
    return [w for w in caught if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize('start, length, warned', [
    (3, 105, True),    # 3..107: ends between the reads at 100 and 110
    (3, 99, False),    # one step short of the patience
    (95, 100, True),   # 95..194: spans two reads, seen at the read at 200
    (11, 100, True),   # 11..110: exactly the patience, ends on a read
])
def test_a_streak_ending_between_two_reads_is_still_seen(start, length,
                                                         warned):
    reg = SemanticAnchorRegularizer(C, D, collapse_patience=100)
    cosines = [1.0 if start <= step < start + length else 0.5
               for step in range(1, 221)]
    caught = feed(reg, cosines)
    assert bool(caught) == warned
    if warned:
        assert f'for {length} training steps' in str(caught[0].message)


def prototype_regularizer(prototypes, **kwargs):
    reg = SemanticAnchorRegularizer(len(prototypes), prototypes.shape[1],
                                    anchor_source='prototype',
                                    collapse_patience=10, **kwargs)
    reg.semantic_anchors.copy_(prototypes)
    reg.class_seen.fill_(True)
    return reg


def watch_prototypes(reg, steps=10):
    cos = max_pairwise_cosine(reg.semantic_anchors, reg.class_seen)
    return feed(reg, [cos.item()] * steps)


V = torch.tensor([1.0, 2.0, 0.5, 0.0])


def test_parallel_but_distant_prototypes_are_not_a_collapse_for_mse():
    # Non-negative features give means in one orthant: parallel prototypes
    # that the squared-distance pull still keeps far apart.
    reg = prototype_regularizer(torch.stack([V, 2 * V, 3 * V]))
    assert max_pairwise_cosine(reg.semantic_anchors).item() == \
        pytest.approx(1.0)
    ratio = min_pairwise_distance_ratio(reg.semantic_anchors,
                                        reg.class_seen)
    # |V| between neighbours over the mean norm 2|V|
    assert ratio.item() == pytest.approx(0.5)
    assert watch_prototypes(reg) == []


def test_merging_prototypes_get_a_message_of_their_own():
    reg = prototype_regularizer(torch.stack([V, V + 1e-3, 3 * V]))
    (caught, ) = watch_prototypes(reg)
    text = str(caught.message)
    assert 'prototype ablation' in text and 'merging' in text
    assert f'{math.sqrt(2 * (1 - 0.99)):.3f}' in text
    # Advice that only the embedded anchors can take is not given.
    assert 'anchor_init' not in text and 'anchor CE' not in text


def test_parallel_prototypes_collapse_for_the_cosine_pull():
    reg = prototype_regularizer(torch.stack([V, 2 * V, 3 * V]),
                                distance='cosine')
    (caught, ) = watch_prototypes(reg)
    assert 'prototype ablation' in str(caught.message)
    assert 'pairwise cosine above 0.99' in str(caught.message)


@pytest.mark.parametrize('present, expected', [
    ([True, True, True], 0.5),
    ([True, False, True], 2 / 2),  # V and 3V: 2|V| over the mean 2|V|
    ([True, False, False], math.inf),  # one prototype: nothing to merge
])
def test_distance_ratio_counts_present_prototypes_only(present, expected):
    anchors = torch.stack([V, 2 * V, 3 * V])
    ratio = min_pairwise_distance_ratio(anchors, torch.tensor(present))
    assert ratio.item() == pytest.approx(expected)
