"""``SemanticAnchorLoss``: the SAR core in mmseg 1.x's MODELS registry."""
from mmcv.cnn import build_norm_layer
from mmseg.registry import MODELS

from ..core import wrapping


@MODELS.register_module()
class SemanticAnchorLoss(wrapping.SemanticAnchorLossBase):
    """Semantic Anchor Regularization as an mmseg 1.x loss.

    The same module, keys and diagnostics as the 0.x glue's: called with the
    head's features, the labels and the head's classifier, it returns
    ``<loss_name>_pull`` and ``<loss_name>_anchor_ce`` (every iteration)
    and the diagnostics ``sar.anchor_acc``, ``sar.gate_open``,
    ``sar.iters_since_init``, ``sar.anchor_max_cos`` and ``sar.nonfinite``,
    whose names lack "loss": mmengine's ``parse_losses`` logs them and
    leaves them out of the total.

    Args:
        num_classes (int): C; SARHead fills it in from the wrapped head.
        channels (int): D; SARHead fills it in (the classifier's input).
        norm_cfg (dict, optional): norm layer of the projector (mmcv 2.x
            names); SARHead passes the wrapped head's (BN if it has none).
            Unfit types are refused at build time with the fix.
        loss_weight (float): scales both losses on top of their own weights.
        loss_name (str): prefix of the loss keys; must start with 'loss_'.
        **kwargs: the hyperparameters of
            :class:`sar.core.SemanticAnchorRegularizer` with the paper's
            defaults.

    Shape:
        feats (B, D, h, w), labels (B, 1, H, W) long; classifier maps
        (C, D) -> (C, C).
    """

    build_norm_layer = staticmethod(build_norm_layer)
