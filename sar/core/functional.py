"""Semantic Anchor Regularization as pure functions (plain torch, no mmseg).

Reference: Ge et al., "Beyond Prototypes: Semantic Anchor Regularization for
Better Representation Learning", AAAI 2024, arXiv:2312.11872.

Shape shorthand, used in every docstring below:
    B: batch, C: classes (one anchor each), D: feature channels,
    h x w: spatial size of the decode feature map.
"""
import math

import torch
import torch.nn.functional as F

ANCHOR_INITS = ('gaussian', 'orthogonal', 'etf')
DISTANCES = ('mse', 'cosine')


def init_anchors(num_classes, dim, method='gaussian', generator=None):
    """Pre-defined anchors ``A0``, one per class (the paper's random centers).

    Args:
        num_classes (int): C.
        dim (int): D.
        method (str): 'gaussian' draws N(0, 1) entries as the paper does;
            'orthogonal' gives mutually orthogonal rows (needs C <= D);
            'etf' gives a simplex equiangular tight frame, every pair at
            cosine -1/(C-1) (needs C <= D). The last two are scaled to row
            norm sqrt(D), the expected norm of a Gaussian anchor.
        generator (torch.Generator, optional): source of randomness; the
            global one by default, so the global seed decides the anchors.

    Shape:
        returns (C, D) float32.
    """
    if method not in ANCHOR_INITS:
        raise ValueError(f'anchor_init must be one of {ANCHOR_INITS}, '
                         f'got {method!r}')
    gauss = torch.randn(num_classes, dim, generator=generator)
    if method == 'gaussian':
        return gauss
    if num_classes > dim:
        raise ValueError(
            f'anchor_init={method!r} needs at least as many feature channels '
            f'as classes (got C={num_classes} > D={dim}); use '
            f"anchor_init='gaussian'")
    # Orthonormal rows from the QR decomposition of a Gaussian matrix.
    q, r = torch.linalg.qr(gauss.t())  # q (D, C)
    q = q * torch.sign(torch.diagonal(r))  # make the decomposition unique
    rows = q.t()
    if method == 'etf':
        centred = rows - rows.mean(dim=0, keepdim=True)
        rows = centred * math.sqrt(num_classes / max(num_classes - 1, 1))
    return rows * math.sqrt(dim)


def anchor_ce(logits, filter_conf=0.9, detach_weights=False):
    """Classifier-aware auxiliary cross-entropy of the embedded anchors.

    Anchor i is classified against label i. Anchors whose own-class
    probability already exceeds ``filter_conf`` get weight 0; the others are
    weighted ``w_i = log p_i / sum_j log p_j`` over the unfiltered j, so hard
    anchors weigh more and the weights sum to one.

    Args:
        logits (Tensor): classifier output for the embedded anchors.
        filter_conf (float): the paper's ``filter_conf``.
        detach_weights (bool): stop the gradient through ``w``; the authors'
            release lets it flow (False).

    Shape:
        logits (C, C) -> loss () and per-anchor CE (C,).
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    log_prob = F.log_softmax(logits.to(dtype), dim=1)
    own = torch.diagonal(log_prob)  # log p_i, (C,)
    ce = -own
    keep = own.exp() <= filter_conf
    weights = torch.where(keep, own, torch.zeros_like(own))
    if detach_weights:
        weights = weights.detach()
    # Sum of log-probabilities is negative whenever something is kept; when
    # nothing is, every weight is 0 and the loss is an exact 0 with a graph.
    norm = weights.sum()
    norm = torch.where(keep.any(), norm, torch.ones_like(norm))
    return (weights / norm * ce).sum(), ce


def gate_open(logits, ce, update_conf=0.8):
    """Whether the embedded anchors may update the semantic anchors.

    Open when every anchor is classified as its own class and every CE is
    below ``-log(update_conf)``.

    Shape:
        logits (C, C), ce (C,) -> bool tensor ().
    """
    labels = torch.arange(logits.shape[0], device=logits.device)
    correct = (logits.argmax(dim=1) == labels).all()
    confident = (ce < -math.log(update_conf)).all()
    return correct & confident


def ema_update(semantic, embedded, initialised, gate, momentum=0.999):
    """Gated EMA of the semantic anchors, without a host synchronisation.

    The first open gate copies ``embedded``; later ones follow
    ``S = m * S + (1 - m) * E``. A closed gate changes nothing.

    Args:
        semantic (Tensor): S, the semantic anchors, updated in place.
        embedded (Tensor): E, the embedded anchors (detached by the caller).
        initialised (Tensor): bool (), whether S holds a value; updated in
            place.
        gate (Tensor): bool (), see :func:`gate_open`.
        momentum (float): the paper's m.

    Shape:
        semantic (C, D), embedded (C, D).
    """
    embedded = embedded.to(semantic.dtype)
    followed = torch.lerp(semantic, embedded, 1.0 - momentum)
    target = torch.where(initialised, followed, embedded)
    semantic.copy_(torch.where(gate, target, semantic))
    initialised.logical_or_(gate)


class _MSEPull(torch.autograd.Function):
    """sum over valid pixels of ||f - S[y]||^2, saving nothing feature-sized.

    The plain autograd version keeps the (B, D, h, w) difference alive until
    backward; this one recomputes it per image in backward instead. The
    anchors are gathered as columns of S^T, which lands them directly in the
    (D, h*w) layout of one image's features (no strided permute).
    """

    @staticmethod
    def forward(ctx, feats, labels, valid, anchors):
        # Half-precision features are accumulated in float32 or wider.
        total = feats.new_zeros((), dtype=anchors.dtype)
        columns = anchors.t().contiguous()  # (D, C)
        for f, y, m in zip(feats, labels, valid):
            diff = columns.index_select(1, y.reshape(-1))  # (D, h*w)
            diff.sub_(f.reshape(diff.shape[0], -1)).square_()
            total += (diff.sum(dim=0) * m.reshape(-1)).sum()
        ctx.save_for_backward(feats, labels, valid, columns)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        feats, labels, valid, columns = ctx.saved_tensors
        grad = torch.empty_like(feats)
        for i, (f, y, m) in enumerate(zip(feats, labels, valid)):
            diff = columns.index_select(1, y.reshape(-1))
            torch.sub(f.reshape(diff.shape[0], -1).to(diff.dtype), diff,
                      out=diff)
            diff.mul_(m.reshape(1, -1) * (2 * grad_out))
            grad[i] = diff.view_as(f)
        return grad, None, None, None


def pull_loss(feats, labels, anchors, ignore_index=255, distance='mse'):
    """Pull every labelled pixel's feature toward its class anchor.

    Averaged over valid pixels, and over channels for 'mse'. The anchors are
    detached: features move toward anchors, never the reverse.

    Args:
        feats (Tensor): f, the decode head's last features.
        labels (Tensor): y, ground truth at the features' size.
        anchors (Tensor): S, the semantic anchors.
        ignore_index (int): label of pixels that take no part.
        distance (str): 'mse' (the paper's squared L2 / D) or 'cosine'
            (1 - cosine similarity).

    Shape:
        feats (B, D, h, w), labels (B, h, w) long, anchors (C, D) -> ().
        All-ignored input gives a zero that still carries a graph.
    """
    if distance not in DISTANCES:
        raise ValueError(f'distance must be one of {DISTANCES}, '
                         f'got {distance!r}')
    if (feats.shape[0] != labels.shape[0]
            or feats.shape[2:] != labels.shape[1:]):
        raise ValueError(f'feats {tuple(feats.shape)} and labels '
                         f'{tuple(labels.shape)} must share batch and h, w')
    dtype = torch.promote_types(feats.dtype, torch.float32)
    anchors = anchors.detach().to(dtype)
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    mask = valid.to(dtype)
    n_valid = mask.sum().clamp(min=1.0)
    if distance == 'mse':
        total = _MSEPull.apply(feats, safe, mask, anchors)
        return total / (feats.shape[1] * n_valid)
    target = F.embedding(safe, anchors).permute(0, 3, 1, 2)
    cos = F.cosine_similarity(feats.to(dtype), target, dim=1, eps=1e-6)
    return ((1.0 - cos) * mask).sum() / n_valid


def class_sums(feats, labels, num_classes, ignore_index=255):
    """Per-class sums and counts of pixel features, over labelled pixels.

    The ingredients of class prototypes (feature means per class), for the
    ``anchor_source='prototype'`` ablation; sums and counts rather than
    means so that processes can add theirs before dividing.

    Args:
        feats (Tensor): f, pixel features (detached by the caller).
        labels (Tensor): y, at the features' size.
        num_classes (int): C.
        ignore_index (int): label of pixels that take no part.

    Shape:
        feats (B, D, h, w), labels (B, h, w) long -> sums (C, D),
        counts (C,), both float32 or wider.
    """
    dtype = torch.promote_types(feats.dtype, torch.float32)
    y = labels.reshape(-1)
    valid = y != ignore_index
    y = torch.where(valid, y, torch.zeros_like(y))
    weight = valid.to(dtype)
    pixels = feats.transpose(0, 1).reshape(feats.shape[1], -1).t()  # (N, D)
    sums = torch.zeros(num_classes, feats.shape[1], dtype=dtype,
                       device=feats.device)
    sums.index_add_(0, y, pixels.to(dtype) * weight[:, None])
    counts = torch.zeros(num_classes, dtype=dtype, device=feats.device)
    counts.index_add_(0, y, weight)
    return sums, counts


def prototype_update(prototypes, seen, sums, counts, momentum=0.999):
    """EMA of class prototypes, for the classes present in this batch.

    A class seen for the first time takes its mean; later ones follow
    ``P = m * P + (1 - m) * mean``. Absent classes keep their prototype.

    Args:
        prototypes (Tensor): P, updated in place.
        seen (Tensor): bool (C,), whether P[c] holds a value; updated in
            place.
        sums (Tensor), counts (Tensor): see :func:`class_sums`.
        momentum (float): m.

    Shape:
        prototypes (C, D), seen (C,), sums (C, D), counts (C,).
    """
    present = counts > 0
    means = (sums / counts.clamp(min=1.0)[:, None]).to(prototypes.dtype)
    followed = torch.lerp(prototypes, means, 1.0 - momentum)
    target = torch.where(seen[:, None], followed, means)
    prototypes.copy_(torch.where(present[:, None], target, prototypes))
    seen.logical_or_(present)


def downsample_labels(labels, size):
    """Nearest-neighbour resize of a label map to the feature size.

    Shape:
        labels (B, 1, H, W) or (B, H, W) -> (B, h, w) long.
    """
    if labels.dim() == 3:
        labels = labels[:, None]
    if tuple(labels.shape[2:]) != tuple(size):
        labels = F.interpolate(labels.float(), size=size, mode='nearest')
    return labels[:, 0].long()
