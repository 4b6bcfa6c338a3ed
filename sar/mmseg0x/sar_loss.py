"""``SemanticAnchorLoss``: the SAR core behind mmseg 0.x's loss registry."""
from mmcv.cnn import build_norm_layer
from mmseg.models.builder import LOSSES

from ..core import wrapping


@LOSSES.register_module()
class SemanticAnchorLoss(wrapping.SemanticAnchorLossBase):
    """Semantic Anchor Regularization as an mmseg loss.

    Called with the head's features, the labels and the head's classifier;
    returns mmseg loss entries ``<loss_name>_pull`` and
    ``<loss_name>_anchor_ce`` (present in every iteration: the pull loss is
    an exact zero while not pulling) and diagnostics ``sar.anchor_acc``,
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
            Unfit types are refused at build time with the fix.
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

    build_norm_layer = staticmethod(build_norm_layer)
