"""Plain-torch core of Semantic Anchor Regularization (no mmseg needed)."""
from .functional import (anchor_ce, class_sums, downsample_labels,
                         ema_update, gate_open, init_anchors, prototype_update,
                         pull_loss)
from .regularizer import AnchorProjector, SemanticAnchorRegularizer

__all__ = [
    'init_anchors', 'anchor_ce', 'gate_open', 'ema_update', 'pull_loss',
    'downsample_labels', 'class_sums', 'prototype_update', 'AnchorProjector',
    'SemanticAnchorRegularizer'
]
