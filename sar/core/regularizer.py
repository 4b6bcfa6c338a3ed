"""The stateful part of SAR: anchors, projector, gate and EMA (plain torch).

Shape shorthand: B batch, C classes, D feature channels, h x w feature map.
"""
import torch
import torch.nn as nn

from . import dist as sar_dist
from .functional import (ANCHOR_INITS, DISTANCES, anchor_ce, class_sums,
                         downsample_labels, ema_update, gate_open,
                         init_anchors, prototype_update, pull_loss)

PULL_MODES = ('gate', 'after_init')
ANCHOR_SOURCES = ('embedded', 'prototype')


class AnchorProjector(nn.Module):
    """Embeds the pre-defined anchors among the head features.

    Linear-norm-ReLU, Linear-norm-ReLU, 1x1 conv (no bias)-norm-ReLU. The C
    anchors are the batch of every norm layer; the ReLU keeps the embedding
    non-negative like the post-ReLU features it joins. The 1x1 conv on a
    (C, D) matrix is a bias-free Linear, and is stored as one.

    Args:
        dim (int): D.
        norm_layer (callable): ``norm_layer(D)`` returns a norm module that
            accepts (C, D, 1, 1), e.g. ``nn.BatchNorm2d`` or SyncBatchNorm.

    Shape:
        anchors (C, D) -> (C, D).
    """

    def __init__(self, dim, norm_layer=nn.BatchNorm2d):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.norm1 = norm_layer(dim)
        self.fc2 = nn.Linear(dim, dim)
        self.norm2 = norm_layer(dim)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.norm3 = norm_layer(dim)

    def forward(self, anchors):
        x = anchors
        for linear, norm in ((self.fc1, self.norm1), (self.fc2, self.norm2),
                             (self.proj, self.norm3)):
            x = norm(linear(x)[:, :, None, None]).flatten(1).relu()
        return x


class SemanticAnchorRegularizer(nn.Module):
    """Semantic Anchor Regularization for one classifier.

    Holds the pre-defined anchors ``A0``, the projector ``P``, the semantic
    (EMA) anchors ``S`` and the gate state, and returns the two SAR losses
    for a batch of features and labels.

    Args:
        num_classes (int): C.
        channels (int): D, the feature channels the classifier reads.
        pull_weight (float): the paper's ``trade_off`` (0.1).
        anchor_ce_weight (float): the paper's ``trade_off_ce`` (1.0).
        filter_conf (float): anchors this confident get no CE weight (0.9).
        update_conf (float): the gate needs every anchor's own-class
            probability above this (0.8).
        ema_momentum (float): m of the semantic-anchor EMA (0.999).
        anchor_init (str): 'gaussian' (paper), 'orthogonal' or 'etf'.
        distance (str): 'mse' (paper) or 'cosine'.
        pull_mode (str): 'gate' pulls only in gate-open iterations, as the
            authors' release does; 'after_init' keeps pulling toward the
            last semantic anchors once they exist.
        ignore_index (int): label that takes no part in the pull loss.
        detach_ce_weights (bool): stop the gradient through the auxiliary
            CE weights (the release does not).
        norm_layer (callable): norm factory of the projector, see
            :class:`AnchorProjector`.
        anchor_source (str): 'embedded' (the paper: S is the EMA of the
            classifier-aware embedded anchors); 'prototype', the ablation
            SAR argues against: S[c] is the EMA (``ema_momentum``) of the
            mean feature of class c over the labelled pixels of each batch,
            summed over ranks. It has no projector, no auxiliary CE (an
            exact zero) and no gate: a pixel is pulled, with the same
            ``pull_weight`` and ``distance``, once its class has a
            prototype. ``sar.gate_open`` then reports whether every class
            has one, ``sar.anchor_acc`` how the classifier labels them.
    """

    def __init__(self,
                 num_classes,
                 channels,
                 pull_weight=0.1,
                 anchor_ce_weight=1.0,
                 filter_conf=0.9,
                 update_conf=0.8,
                 ema_momentum=0.999,
                 anchor_init='gaussian',
                 distance='mse',
                 pull_mode='gate',
                 ignore_index=255,
                 detach_ce_weights=False,
                 norm_layer=nn.BatchNorm2d,
                 anchor_source='embedded'):
        super().__init__()
        if num_classes < 2:
            raise ValueError(
                f'SAR needs num_classes >= 2 (one anchor per class, each '
                f'classified against the others), got {num_classes}; for '
                f'binary segmentation use a softmax head with num_classes=2')
        if pull_mode not in PULL_MODES:
            raise ValueError(f'pull_mode must be one of {PULL_MODES}, '
                             f'got {pull_mode!r}')
        if distance not in DISTANCES:
            raise ValueError(f'distance must be one of {DISTANCES}, '
                             f'got {distance!r}')
        if anchor_source not in ANCHOR_SOURCES:
            raise ValueError(f'anchor_source must be one of '
                             f'{ANCHOR_SOURCES}, got {anchor_source!r}')
        if anchor_init not in ANCHOR_INITS:
            raise ValueError(f'anchor_init must be one of {ANCHOR_INITS}, '
                             f'got {anchor_init!r}')
        for name, value in (('filter_conf', filter_conf),
                            ('update_conf', update_conf),
                            ('ema_momentum', ema_momentum)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f'{name} must lie in [0, 1], got {value}')
        if not 0.0 < update_conf:
            raise ValueError('update_conf must be > 0')
        self.num_classes = num_classes
        self.channels = channels
        self.pull_weight = pull_weight
        self.anchor_ce_weight = anchor_ce_weight
        self.filter_conf = filter_conf
        self.update_conf = update_conf
        self.ema_momentum = ema_momentum
        self.anchor_init = anchor_init
        self.distance = distance
        self.pull_mode = pull_mode
        self.ignore_index = ignore_index
        self.detach_ce_weights = detach_ce_weights
        self.anchor_source = anchor_source

        # Prototypes need no projector; leaving it out keeps DDP free of
        # parameters that never get a gradient.
        self.projector = AnchorProjector(channels, norm_layer) \
            if anchor_source == 'embedded' else None
        self.register_buffer('init_anchors',
                             init_anchors(num_classes, channels, anchor_init))
        self.register_buffer('semantic_anchors',
                             torch.zeros(num_classes, channels))
        self.register_buffer('initialised', torch.zeros((), dtype=torch.bool))
        # Iterations since the semantic anchors were first set; -1 before.
        self.register_buffer('iters_since_init',
                             torch.full((), -1, dtype=torch.long))
        # A0 comes from each process's own generator; it is made rank 0's at
        # the first training step (see _agree_on_init_anchors).
        self._init_anchors_agreed = False
        if anchor_source == 'prototype':
            self.register_buffer('class_seen',
                                 torch.zeros(num_classes, dtype=torch.bool))

    def embed_anchors(self):
        """E = P(A0). Shape: (C, D)."""
        if self.projector is None:
            raise RuntimeError("anchor_source='prototype' embeds no anchors; "
                               'its anchors are semantic_anchors')
        return self.projector(self.init_anchors)

    def _agree_on_init_anchors(self):
        """Make A0 rank 0's on every rank, once per process.

        Under ``--diff_seed`` every rank draws its own A0 and DDP (with
        mmseg's ``broadcast_buffers=False``) never broadcasts buffers, so
        each rank would embed different anchors. A checkpoint loaded on
        every rank already agrees; broadcasting again is harmless.
        """
        if not self._init_anchors_agreed:
            sar_dist.broadcast_from_first(self.init_anchors)
            self._init_anchors_agreed = True

    def forward(self, feats, labels, classifier):
        """Both SAR losses for one training batch.

        Args:
            feats (Tensor): f, features right before the classifier.
            labels (Tensor): ground truth at any resolution; resized
                (nearest) to the features.
            classifier (callable): maps (C, D) embedded anchors to (C, C)
                logits with the same weights that classify pixels.

        Shape:
            feats (B, D, h, w), labels (B, 1, H, W) or (B, H, W) long.

        Returns:
            dict: ``pull`` and ``anchor_ce`` (weighted losses, every call),
            ``anchor_acc``, ``gate_open``, ``iters_since_init``
            (diagnostics, no gradient).

        The gate, the EMA anchors and the counter change only in training
        mode: mmcv's val workflow calls ``forward_train`` in eval mode, where
        the projector's norms use running statistics and nothing is learnt.
        """
        if self.anchor_source == 'prototype':
            return self._forward_prototype(feats, labels, classifier)
        if self.training:
            self._agree_on_init_anchors()
        embedded = self.embed_anchors()
        logits = classifier(embedded)
        ce_loss, ce = anchor_ce(logits, self.filter_conf,
                                self.detach_ce_weights)
        with torch.no_grad():
            gate = sar_dist.all_gate(gate_open(logits, ce, self.update_conf))
            if self.training:
                ema_update(self.semantic_anchors, embedded.detach(),
                           self.initialised, gate, self.ema_momentum)
                sar_dist.mean_across_ranks(self.semantic_anchors)
                self.iters_since_init.add_(self.initialised.long())
            pulling = gate if self.pull_mode == 'gate' else self.initialised
            labels_small = downsample_labels(labels, feats.shape[2:])
        pull = pull_loss(feats, labels_small, self.semantic_anchors,
                         self.ignore_index, self.distance)
        targets = torch.arange(self.num_classes, device=logits.device)
        acc = (logits.detach().argmax(dim=1) == targets).float().mean()
        return dict(
            pull=self.pull_weight * pull * pulling.to(pull.dtype),
            anchor_ce=self.anchor_ce_weight * ce_loss,
            anchor_acc=acc,
            gate_open=gate.float(),
            iters_since_init=self.iters_since_init.float())

    def _forward_prototype(self, feats, labels, classifier):
        """The prototype ablation; same arguments and keys as forward."""
        with torch.no_grad():
            labels_small = downsample_labels(labels, feats.shape[2:])
            if self.training:
                sums, counts = class_sums(feats.detach(), labels_small,
                                          self.num_classes, self.ignore_index)
                sar_dist.sum_across_ranks(sums)
                sar_dist.sum_across_ranks(counts)
                prototype_update(self.semantic_anchors, self.class_seen,
                                 sums, counts, self.ema_momentum)
                self.initialised.copy_(self.class_seen.any())
                self.iters_since_init.add_(self.initialised.long())
            # Pixels of a class without a prototype yet take no part.
            valid = labels_small != self.ignore_index
            safe = torch.where(valid, labels_small,
                               torch.zeros_like(labels_small))
            known = valid & self.class_seen[safe]
            targets = torch.where(known, labels_small,
                                  torch.full_like(labels_small,
                                                  self.ignore_index))
            logits = classifier(self.semantic_anchors)
            classes = torch.arange(self.num_classes, device=logits.device)
            right = logits.argmax(dim=1) == classes
            acc = (right & self.class_seen).float().mean()
        pull = pull_loss(feats, targets, self.semantic_anchors,
                         self.ignore_index, self.distance)
        return dict(
            pull=self.pull_weight * pull,
            anchor_ce=pull.new_zeros(()),  # no auxiliary CE; a stable key
            anchor_acc=acc,
            gate_open=self.class_seen.all().float(),
            iters_since_init=self.iters_since_init.float())
