"""The stateful part of SAR: anchors, projector, gate and EMA (plain torch).

Shape shorthand: B batch, C classes, D feature channels, h x w feature map.
"""
import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

from . import dist as sar_dist
from .functional import (ANCHOR_INITS, DISTANCES, anchor_ce, class_sums,
                         downsample_labels, ema_update, gate_open,
                         init_anchors, prototype_update, pull_loss)

PULL_MODES = ('gate', 'after_init')
ANCHOR_SOURCES = ('embedded', 'prototype')

# Optimizer steps taken in this process, counted by torch.optim's global
# post-step hook, registered when this module is imported (also where a
# regularizer arrives unpickled); see _new_step.
_optimizer_steps = [0]


def _count_optimizer_step(optimizer, args, kwargs):
    # A step GradScaler skips for an overflow is no step. It does not call a
    # plain optimizer then; a fused one (fused=True, Trainer's default
    # adamw_torch_fused) it calls with ``found_inf`` set, and the optimizer
    # skips its update. Reading the flag costs a host synchronisation, as
    # GradScaler's own check does for the plain ones.
    found_inf = getattr(optimizer, 'found_inf', None)
    if found_inf is not None and bool(found_inf):
        return
    _optimizer_steps[0] += 1


_optimizer_step_hook = register_optimizer_step_post_hook(
    _count_optimizer_step)


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
        collapse_cos (float): warn when the largest cosine between two
            anchors (``sar.anchor_max_cos``) stays above this ...
        collapse_patience (int): ... for this many training steps.

    One call is one micro-batch; the gate, the EMA and the counter advance
    once per optimizer step (see :meth:`_new_step`): under gradient
    accumulation the micro-batches of a step see the same embedded anchors,
    the first of them updates S, and all of them pull toward that S. The
    prototype ablation is the exception: its EMA takes each micro-batch's
    class means, and its counter counts calls.

    The state (anchors, projector, ``initialised``, ``iters_since_init``)
    loads from a checkpoint as one unit: if its shapes do not fit this
    model (fine-tuning to other classes or widths), none of it loads, and a
    warning says so (see :meth:`_load_from_state_dict`).

    Bad input: labels outside ``[0, C)`` that are not ``ignore_index`` raise
    a ValueError naming them. A batch with no labelled pixel, or with
    non-finite features or anchors, changes no state (gate reported closed,
    ``sar.nonfinite`` = 1 for the latter), so the buffers never hold a NaN.
    The anchor math runs in float32 or wider, also under autocast.
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
                 anchor_source='embedded',
                 collapse_cos=0.99,
                 collapse_patience=100):
        super().__init__()
        _check_settings(num_classes, channels, pull_weight, anchor_ce_weight,
                        filter_conf, update_conf, ema_momentum, anchor_init,
                        distance, pull_mode, anchor_source, collapse_cos)
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
        self.collapse_cos = collapse_cos
        self.collapse_patience = collapse_patience

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
        # Consecutive training steps with anchors above collapse_cos, kept
        # on the anchors' device and read on the host only every few steps.
        # Not a buffer: mmcv's checkpoints save non-persistent ones too.
        self._collapse_steps = None
        self._collapse_longest = None
        self._steps = 0
        self._collapse_warned = False
        # What the last training call saw of the weights (E and the anchors'
        # logits), and whether the current optimizer step's EMA update is
        # still to be made; see _new_step and _advance. Not buffers: after a
        # load, the next call starts a step.
        self._last_seen = None
        self._last_steps = None
        # Why the last load left the state as built, until a glue writes it
        # to its framework's log (pop_load_reports).
        self._load_report = None
        self._update_due = None
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

    def forward(self, feats, labels, classifier, check_labels=True):
        """Both SAR losses for one training batch.

        Args:
            feats (Tensor): f, features right before the classifier.
            labels (Tensor): ground truth at any resolution; resized
                (nearest) to the features.
            classifier (callable): maps (C, D) embedded anchors to (C, C)
                logits with the same weights that classify pixels.
            check_labels (bool): refuse labels outside ``[0, C)`` other than
                ``ignore_index`` (one host synchronisation); off only for a
                caller that has checked them already.

        Shape:
            feats (B, D, h, w), labels (B, 1, H, W) or (B, H, W) long.

        Returns:
            dict: ``pull`` and ``anchor_ce`` (weighted losses, every call;
            ``pull`` is a constant zero, not computed, while not pulling),
            ``anchor_acc``, ``gate_open``, ``iters_since_init``,
            ``anchor_max_cos``, ``nonfinite`` (diagnostics, no gradient).

        The gate, the EMA anchors and the counter change only in training
        mode: mmcv's val workflow calls ``forward_train`` in eval mode, where
        the projector's norms use running statistics and nothing is learnt.
        """
        if check_labels:
            check_label_values(labels, self.num_classes, self.ignore_index)
        # The anchor math in float32 whatever autocast region calls it; the
        # features keep their dtype and the pull accumulates in float32.
        with torch.autocast(feats.device.type, enabled=False):
            if self.anchor_source == 'prototype':
                out = self._forward_prototype(feats, labels, classifier)
            else:
                out = self._forward_embedded(feats, labels, classifier)
        if self.training:
            self._watch_collapse(out['anchor_max_cos'])
        return out

    def _collapsed(self, max_cos):
        """Whether this step's anchors count as collapsed: bool () tensor.

        The embedded anchors: nearly parallel (``max_cos`` above
        ``collapse_cos``), since the classifier separates directions. The
        prototypes: too close in the distance the pull uses. For 'cosine'
        that is the same test. For 'mse' two prototypes may be parallel yet
        far apart (features are non-negative, so their means often are):
        they collapse when their smallest distance, over the prototypes'
        mean norm, is below ``sqrt(2 (1 - collapse_cos))``, the distance
        of two unit vectors at cosine ``collapse_cos``.
        """
        if self.anchor_source == 'embedded' or self.distance == 'cosine':
            return max_cos > self.collapse_cos
        ratio = min_pairwise_distance_ratio(self.semantic_anchors,
                                            self.class_seen)
        return ratio < math.sqrt(2 * (1 - self.collapse_cos))

    def _forward_embedded(self, feats, labels, classifier):
        if self.training:
            self._agree_on_init_anchors()
        embedded = self.embed_anchors()
        logits = classifier(embedded)
        ce_loss, ce = anchor_ce(logits, self.filter_conf,
                                self.detach_ce_weights)
        with torch.no_grad():
            labels_small = downsample_labels(labels, feats.shape[2:])
            labelled = (labels_small != self.ignore_index).any()
            finite = (torch.isfinite(embedded).all()
                      & torch.isfinite(logits).all()
                      & torch.isfinite(feats).all())
            gate = gate_open(logits, ce, self.update_conf) & labelled & finite
            if self.training:
                # One collective for both flags, so every rank agrees on
                # both.
                new_step = self._new_step(embedded, logits)
                gate, new_step = sar_dist.all_gate(
                    torch.stack([gate, new_step])).unbind()
                self._advance(embedded, gate, new_step)
            else:
                gate = sar_dist.all_gate(gate)
            pulling = gate if self.pull_mode == 'gate' else self.initialised
            targets = torch.arange(self.num_classes, device=logits.device)
            acc = (logits.argmax(dim=1) == targets).float().mean()
            max_cos = max_pairwise_cosine(embedded)
        if bool(pulling):  # one host read; a closed gate costs no pull
            pull = pull_loss(feats, labels_small, self.semantic_anchors,
                             self.ignore_index, self.distance)
        else:
            pull = torch.zeros((), device=feats.device,
                               dtype=torch.promote_types(feats.dtype,
                                                         torch.float32))
        # No labelled pixel: no SAR loss at all (a zero with a graph).
        ce_loss = ce_loss * labelled.to(ce_loss.dtype)
        return dict(
            pull=self.pull_weight * pull,
            anchor_ce=self.anchor_ce_weight * ce_loss,
            anchor_acc=acc,
            gate_open=gate.float(),
            iters_since_init=self.iters_since_init.float(),
            anchor_max_cos=max_cos,
            nonfinite=(~finite).float())

    def _new_step(self, embedded, logits):
        """Whether the optimizer stepped since the last training call.

        Two signs, either of which starts a step. A ``torch.optim``
        optimizer stepped (torch's global post-step hook counts the steps of
        the process), which covers steps that change none of SAR's weights:
        lr 0 in a warm-up or at the end of a poly schedule, a frozen decode
        head. And E or the anchors' logits changed: they depend only on the
        projector's and the classifier's weights (in training the
        projector's norms take the statistics of the C anchors, not of the
        data), so they are bitwise the same for every micro-batch of an
        accumulated step and move when weights are updated by any means.
        Neither needs a word from the training loop (mmengine's
        ``accumulative_counts``, mmcv's ``GradientCumulativeOptimizerHook``,
        Trainer, a hand-written loop). An AMP step skipped for overflow
        changes no weight and is not counted (see _count_optimizer_step):
        it is no step. The first call of a process, and the first after a
        load, start one. Another optimizer of the same process that steps
        between the micro-batches of one step (a GAN's second optimizer)
        would start steps too.

        Shape:
            embedded (C, D), logits (C, C) -> bool ().
        """
        steps, last_steps = _optimizer_steps[0], self._last_steps
        self._last_steps = steps
        seen = (embedded.detach(), logits.detach())
        last, self._last_seen = self._last_seen, tuple(t.clone()
                                                       for t in seen)
        if last is None or last_steps != steps or any(
                (a.shape, a.dtype, a.device) != (b.shape, b.dtype, b.device)
                for a, b in zip(seen, last)):
            return torch.ones((), dtype=torch.bool, device=embedded.device)
        return torch.stack([(a != b).any() for a, b in zip(seen, last)]).any()

    def _advance(self, embedded, gate, new_step):
        """Gate, EMA and counter, once per optimizer step, in place.

        The step's EMA update is made by its first call with an open gate
        (its first micro-batch, unless that one had no labelled or finite
        pixel), so every later micro-batch of the step pulls toward the S
        that holds this step's E, as one big batch would. The counter moves
        when a step starts, and when S is first set. Without accumulation
        every call starts a step, and this is the plain per-iteration
        update.

        Args:
            embedded (Tensor): E.
            gate (Tensor): bool (), the agreed gate.
            new_step (Tensor): bool (), the agreed :meth:`_new_step`.

        Shape:
            embedded (C, D).
        """
        due = self._update_due
        due = new_step if due is None or due.device != new_step.device \
            else due | new_step
        update = gate & due
        was_set = self.initialised.clone()
        ema_update(self.semantic_anchors, embedded.detach(),
                   self.initialised, update, self.ema_momentum)
        sar_dist.mean_across_ranks(self.semantic_anchors)
        self.iters_since_init.add_(
            (self.initialised & (new_step | ~was_set)).long())
        self._update_due = due & ~update

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Load SAR's state as one unit, or none of it.

        ``initialised``, ``iters_since_init``, the anchors and the
        projector only make sense together. Fine-tuning from a SAR
        checkpoint into other classes or widths, the runner (strict=False)
        would skip the anchors for their shapes yet load
        ``initialised=True``: the pull would then draw features toward
        zero anchors, and the first open gate would blend E into zeros
        instead of copying it. So when any of this module's keys is missing
        from the checkpoint or has another shape, all of the checkpoint's
        keys under ``prefix`` are removed from ``state_dict`` and a warning
        names the shapes; the state stays as built. A checkpoint without
        any of them (a plain model's) changes nothing here.

        torch, mmcv 1.x and mmengine call this before descending into the
        projector and give the projector its keys from this same dict
        (mmcv) or from a copy of it taken after this call (torch,
        mmengine), so a removed key loads nowhere; strict loading then
        reports the keys as missing.
        """
        self._load_report = None  # only this load's
        given = {k[len(prefix):]: v for k, v in state_dict.items()
                 if k.startswith(prefix)}
        if given:
            problems = unfit_state(self.state_dict(keep_vars=True), given)
            if problems:
                for key in given:
                    del state_dict[prefix + key]
                self._load_report = unfit_state_message(prefix, problems)
                warnings.warn(self._load_report, UserWarning)
            else:
                self._last_seen = self._last_steps = None
                self._update_due = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _forward_prototype(self, feats, labels, classifier):
        """The prototype ablation; same arguments and keys as forward."""
        with torch.no_grad():
            labels_small = downsample_labels(labels, feats.shape[2:])
            finite = torch.isfinite(feats).all()
            if self.training:
                sums, counts = class_sums(feats.detach(), labels_small,
                                          self.num_classes, self.ignore_index)
                sar_dist.sum_across_ranks(sums)
                sar_dist.sum_across_ranks(counts)
                # A non-finite class mean is not taken (nor, on any rank,
                # after the sum): the prototypes stay finite.
                counts = torch.where(torch.isfinite(sums).all(dim=1), counts,
                                     torch.zeros_like(counts))
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
            max_cos = max_pairwise_cosine(self.semantic_anchors,
                                          self.class_seen)
        pull = pull_loss(feats, targets, self.semantic_anchors,
                         self.ignore_index, self.distance)
        return dict(
            pull=self.pull_weight * pull,
            anchor_ce=pull.new_zeros(()),  # no auxiliary CE; a stable key
            anchor_acc=acc,
            gate_open=self.class_seen.all().float(),
            iters_since_init=self.iters_since_init.float(),
            anchor_max_cos=max_cos,
            nonfinite=(~finite).float())

    def _watch_collapse(self, max_cos, every=10):
        """Warn once when the anchors stay collapsed (see :meth:`_collapsed`).

        Counted on the device every step, read on the host every ``every``
        steps, so training keeps no extra per-step synchronisation. The
        longest streak since the last read is kept, so a streak that ends
        between two reads is still seen.
        """
        over = self._collapsed(max_cos)
        if self._collapse_steps is None or \
                self._collapse_steps.device != over.device:
            self._collapse_steps = torch.zeros((), dtype=torch.long,
                                               device=over.device)
            self._collapse_longest = torch.zeros_like(self._collapse_steps)
        self._collapse_steps = torch.where(
            over, self._collapse_steps + 1,
            torch.zeros_like(self._collapse_steps))
        self._collapse_longest = torch.maximum(self._collapse_longest,
                                               self._collapse_steps)
        self._steps += 1
        if self._collapse_warned or self._steps % every:
            return
        steps = int(self._collapse_longest)
        self._collapse_longest = self._collapse_steps.clone()
        if steps >= self.collapse_patience:
            self._collapse_warned = True
            warnings.warn(self._collapse_message(steps, max_cos),
                          RuntimeWarning)

    def _collapse_message(self, steps, max_cos):
        if self.anchor_source == 'prototype':
            measure = (f'a pairwise cosine above {self.collapse_cos}'
                       if self.distance == 'cosine' else
                       'a smallest pairwise distance below '
                       f'{math.sqrt(2 * (1 - self.collapse_cos)):.3f} of '
                       'their mean norm')
            return (
                f'SAR (prototype ablation): the class prototypes have had '
                f'{measure} for {steps} training steps: they are merging, '
                f'and the pull draws the classes\' features together. '
                f'Prototypes follow the features, nothing keeps them apart '
                f'(the collapse SAR\'s anchors are built against); a lower '
                f'pull_weight slows it.')
        return (
            f'SAR: the anchors have had a pairwise cosine above '
            f'{self.collapse_cos} for {steps} training steps (now '
            f'{float(max_cos):.4f}): they are collapsing onto each other '
            f'and no longer separate the classes. Check the learning '
            f'rate and the anchor CE (sar.anchor_acc); '
            f"anchor_init='etf' or 'orthogonal' starts them apart.")


def unfit_state(expected, given):
    """Why a checkpoint's SAR state cannot load as one unit, if it cannot.

    Args:
        expected (Mapping[str, Tensor]): the module's own state dict.
        given (Mapping[str, Tensor]): the checkpoint's entries under the
            module's prefix, with the same (prefix-free) keys.

    Returns:
        list[str]: one line per key missing from ``given`` or of another
        shape there, in state-dict order (the anchors first); empty when
        the state fits. ``num_batches_tracked`` may be missing (torch fills
        it in for norm layers saved before it existed).
    """
    problems = []
    for key, value in expected.items():
        if key not in given:
            if not key.endswith('num_batches_tracked'):
                problems.append(f'{key} missing')
            continue
        shape = tuple(getattr(given[key], 'shape', ()))
        if shape != tuple(value.shape):
            problems.append(f'{key} {shape} in the checkpoint, '
                            f'{tuple(value.shape)} here')
    return problems


def pop_load_reports(module):
    """Why loads left SAR's state as built, for each regularizer in
    ``module``, since the last call: the warnings' texts, which a glue also
    writes to its framework's log (Python warnings do not reach it).
    """
    reports = []
    for m in module.modules():
        if isinstance(m, SemanticAnchorRegularizer) and m._load_report:
            reports.append(m._load_report)
            m._load_report = None
    return reports


def unfit_state_message(prefix, problems, shown=4):
    """The warning for a checkpoint whose SAR state does not fit."""
    listed = '; '.join(problems[:shown])
    if len(problems) > shown:
        listed += f'; and {len(problems) - shown} more'
    return (
        f"SAR: the checkpoint's SAR state ({prefix or 'the module'}*) does "
        f'not fit this model: {listed}. None of it is loaded: the anchors, '
        f'the projector, initialised and iters_since_init stay as built, '
        f'and SAR starts afresh, as it should when fine-tuning to other '
        f'classes or feature widths. The rest of the checkpoint loads as '
        f'usual.')


def min_pairwise_distance_ratio(anchors, present):
    """Smallest distance between two present anchors over their mean norm.

    Scale-free: 0 when two anchors coincide, about sqrt(2) for orthogonal
    anchors of equal norm. With fewer than two present anchors (or all at
    zero), ``inf``: nothing can collapse.

    Shape:
        anchors (C, D), present (C,) bool -> () float32 or wider.
    """
    x = anchors.float()
    dist = torch.cdist(x[None], x[None])[0]
    pair = ~torch.eye(dist.shape[0], dtype=torch.bool, device=dist.device)
    pair &= present[:, None] & present[None, :]
    inf = torch.full_like(dist, math.inf)
    smallest = torch.where(pair, dist, inf).min()
    weight = present.to(x.dtype)
    mean_norm = (x.norm(dim=1) * weight).sum() / weight.sum().clamp(min=1)
    return torch.where(mean_norm > 0, smallest / mean_norm.clamp(min=1e-12),
                       torch.full_like(smallest, math.inf))


def max_pairwise_cosine(anchors, present=None):
    """Largest cosine similarity between two different anchors.

    Args:
        anchors (Tensor): the anchors.
        present (Tensor, optional): bool, which rows take part (all by
            default); with fewer than two, the result is 0.

    Shape:
        anchors (C, D), present (C,) -> () float32 or wider.
    """
    unit = F.normalize(anchors.float(), dim=1, eps=1e-12)
    cos = unit @ unit.t()
    pair = ~torch.eye(cos.shape[0], dtype=torch.bool, device=cos.device)
    if present is not None:
        pair &= present[:, None] & present[None, :]
    # torch.where, not cos[pair]: a boolean index would read the mask on the
    # host (a device synchronisation every step).
    best = torch.where(pair, cos, torch.full_like(cos, -2.0)).max()
    return best if present is None else best.clamp(min=0.0)


def check_label_values(labels, num_classes, ignore_index):
    """Refuse labels that are neither a class nor ``ignore_index``.

    torch would fail later with an index error (CPU) or a device-side
    assert (CUDA) that names nothing; this names the values and the fix.

    Shape:
        labels (B, 1, H, W) or (B, H, W), integer.
    """
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        values = torch.unique(labels[bad]).tolist()
        shown = ', '.join(str(v) for v in values[:10])
        raise ValueError(
            f'SAR: labels hold {len(values)} value(s) that are neither a '
            f'class in [0, {num_classes - 1}] nor the ignore index '
            f'{ignore_index}: {shown}{" ..." if len(values) > 10 else ""}. '
            f'Fix the annotations, or the settings that map them: the '
            f"head's num_classes and ignore_index, the dataset's "
            f'reduce_zero_label, or a label map in the pipeline')


def _check_settings(num_classes, channels, pull_weight, anchor_ce_weight,
                    filter_conf, update_conf, ema_momentum, anchor_init,
                    distance, pull_mode, anchor_source, collapse_cos):
    """Build-time checks; each message names the key, the value, the fix."""
    if num_classes < 2:
        raise ValueError(
            f'SAR needs num_classes >= 2 (one anchor per class, each '
            f'classified against the others), got {num_classes}; for '
            f'binary segmentation use a softmax head with num_classes=2')
    if channels < 1:
        raise ValueError(f'channels must be >= 1, got {channels}')
    for key, value, options in (('anchor_init', anchor_init, ANCHOR_INITS),
                                ('distance', distance, DISTANCES),
                                ('pull_mode', pull_mode, PULL_MODES),
                                ('anchor_source', anchor_source,
                                 ANCHOR_SOURCES)):
        if value not in options:
            raise ValueError(f'{key} must be one of {options}, got '
                             f'{value!r}; set {key}={options[0]!r} for the '
                             f"paper's choice")
    for key, value, paper in (('pull_weight', pull_weight, 0.1),
                              ('anchor_ce_weight', anchor_ce_weight, 1.0)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f'{key} must be a finite number >= 0, got '
                             f'{value}; the paper uses {key}={paper}')
    for key, value, low_open, high_open, paper in (
            ('filter_conf', filter_conf, True, False, 0.9),
            ('update_conf', update_conf, True, True, 0.8),
            ('ema_momentum', ema_momentum, False, True, 0.999),
            ('collapse_cos', collapse_cos, False, False, 0.99)):
        low_ok = value > 0 if low_open else value >= 0
        high_ok = value < 1 if high_open else value <= 1
        if not (math.isfinite(value) and low_ok and high_ok):
            interval = ('(' if low_open else '[') + '0, 1' + \
                (')' if high_open else ']')
            raise ValueError(f'{key} must lie in {interval}, got {value}; '
                             f'the paper uses {key}={paper}')
