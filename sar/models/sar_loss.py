"""``SemanticAnchorLoss``: the SAR core behind mmseg's loss registry."""
import math

from mmcv.cnn import build_norm_layer
from mmseg.models.builder import LOSSES

from ..core import SemanticAnchorRegularizer


# Norm types that cannot normalise the projector's (C, D, 1, 1) input, and
# why. BN/BN2d, SyncBN and GN can.
_UNFIT_NORMS = {
    'LN': 'normalises the last axis, not the channels',
    'IN': 'normalises each anchor over its own 1x1 map (torch: "Expected '
          'more than 1 spatial element")',
    'IN1d': 'expects (N, C, L) input',
    'IN2d': 'normalises each anchor over its own 1x1 map',
    'IN3d': 'expects 5-d input',
    'BN1d': 'expects (N, C) or (N, C, L) input',
    'BN3d': 'expects 5-d input',
}


def norm_factory(norm_cfg):
    """``dim -> nn.Module`` from an mmcv norm config, for the projector.

    The projector feeds its norm layers (C, D, 1, 1) with the C anchors as
    the batch: BN, SyncBN and GN fit; LN and IN (and 1-d/3-d BN) do not and
    are refused here, at build time, with the fix.
    """
    norm_cfg = dict(norm_cfg or dict(type='BN'))
    kind = norm_cfg['type']
    if kind in _UNFIT_NORMS:
        raise ValueError(
            f'SemanticAnchorLoss: norm_cfg type {kind!r} cannot serve the '
            f'anchor projector: it {_UNFIT_NORMS[kind]}. The projector '
            'takes the wrapped head\'s norm_cfg unless told otherwise; set '
            "sar_loss=dict(norm_cfg=dict(type='BN')) (or 'SyncBN' under "
            "DDP, or 'GN')")

    def build(dim):
        return build_norm_layer(norm_cfg, dim)[1]

    return build


@LOSSES.register_module()
class SemanticAnchorLoss(SemanticAnchorRegularizer):
    """Semantic Anchor Regularization as an mmseg loss.

    Called with the head's features, the labels and the head's classifier;
    returns mmseg loss entries ``<loss_name>_pull`` and
    ``<loss_name>_anchor_ce`` (present in every iteration: the pull loss is
    an exact zero while the gate is closed) and diagnostics ``sar.anchor_acc``,
    ``sar.gate_open``, ``sar.iters_since_init``, ``sar.anchor_max_cos``
    (largest cosine between two anchors) and ``sar.nonfinite`` (1 when the
    step's features or anchors held a NaN/Inf and SAR's state was left
    alone), whose names lack "loss" so that mmseg logs them without adding
    them to the total.

    Args:
        num_classes (int): C; SARHead fills it in from the wrapped head.
        channels (int): D; SARHead fills it in (the classifier's input).
        norm_cfg (dict, optional): norm layer of the projector; SARHead
            passes the wrapped head's ``norm_cfg`` (BN if it has none).
        loss_weight (float): scales both losses on top of their own weights.
        loss_name (str): prefix of the loss keys; must start with 'loss_' so
            mmseg adds them to the total.
        **kwargs: the hyperparameters of
            :class:`sar.core.SemanticAnchorRegularizer` (``pull_weight``,
            ``anchor_ce_weight``, ``filter_conf``, ``update_conf``,
            ``ema_momentum``, ``anchor_init``, ``distance``, ``pull_mode``,
            ``ignore_index``, ``detach_ce_weights``) with the paper's
            defaults.

    Shape:
        feats (B, D, h, w), labels (B, 1, H, W) long; classifier maps
        (C, D) -> (C, C).
    """

    def __init__(self,
                 num_classes,
                 channels,
                 norm_cfg=None,
                 loss_weight=1.0,
                 loss_name='loss_sar',
                 **kwargs):
        if not (math.isfinite(loss_weight) and loss_weight >= 0):
            raise ValueError(
                f'SemanticAnchorLoss: loss_weight must be a finite number '
                f'>= 0, got {loss_weight}; 1.0 keeps the paper\'s weights')
        if not loss_name.startswith('loss_'):
            raise ValueError(
                f"SemanticAnchorLoss: loss_name must start with 'loss_' for "
                f'mmseg to optimise it, got {loss_name!r}')
        super().__init__(
            num_classes, channels, norm_layer=norm_factory(norm_cfg), **kwargs)
        self.loss_weight = loss_weight
        self._loss_name = loss_name

    @property
    def loss_name(self):
        """Prefix of the loss keys, as in mmseg's loss contract."""
        return self._loss_name

    def forward(self, feats, labels, classifier, check_labels=True):
        out = super().forward(feats, labels, classifier, check_labels)
        return {
            f'{self.loss_name}_pull': self.loss_weight * out['pull'],
            f'{self.loss_name}_anchor_ce': self.loss_weight * out['anchor_ce'],
            'sar.anchor_acc': out['anchor_acc'],
            'sar.gate_open': out['gate_open'],
            'sar.iters_since_init': out['iters_since_init'],
            'sar.anchor_max_cos': out['anchor_max_cos'],
            'sar.nonfinite': out['nonfinite'],
        }
