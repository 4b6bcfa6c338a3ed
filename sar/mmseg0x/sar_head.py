"""``SARHead``: adds Semantic Anchor Regularization to any mmseg 0.x head.

The wrapped head is built from the registry and runs unchanged. During
training its ``cls_seg`` is intercepted to read the feature map right before
dropout and the classifier; at test time the wrapper is the wrapped head.
State-dict keys: the wrapped head's under ``head.``, SAR's under
``sar_loss.`` (dropped when exporting to a plain model). The checks, the
interception and the training step are :mod:`sar.core.wrapping`'s, shared
with the 1.x glue.
"""
from mmcv.runner import BaseModule
from mmseg.models.builder import HEADS, build_head
from mmseg.models.decode_heads.decode_head import BaseDecodeHead

from ..core import wrapping


@HEADS.register_module()
class SARHead(wrapping.HeadWrapperMixin, BaseModule):
    """Decode-head wrapper adding the SAR losses in training only.

    Args:
        head (dict): config of any mmseg decode head classifying with
            ``cls_seg``/``conv_seg``, e.g. ``dict(type='FCNHead', ...)``.
        sar_loss (dict): config of :class:`SemanticAnchorLoss`; its
            ``num_classes``, ``channels``, ``ignore_index`` and ``norm_cfg``
            default to the wrapped head's.
        init_cfg (dict, optional): mmcv init config of the wrapper itself.
    """

    def __init__(self, head, sar_loss=dict(type='SemanticAnchorLoss'),
                 init_cfg=None):
        super().__init__(init_cfg)
        # HEADS and LOSSES share mmseg's MODELS registry in 0.30.
        self._wrap(head, sar_loss, build_head, BaseDecodeHead)

    def forward(self, inputs, *args, **kwargs):
        return self.head(inputs, *args, **kwargs)

    def forward_test(self, *args, **kwargs):
        """Exactly the wrapped head's ``forward_test``."""
        return self.head.forward_test(*args, **kwargs)

    def forward_train(self, *args, **kwargs):
        """The wrapped head's losses plus the SAR losses and diagnostics.

        Takes the wrapped head's ``forward_train`` arguments unchanged
        (``inputs, img_metas, gt_semantic_seg, train_cfg`` or, for cascade
        heads, ``inputs, prev_output, img_metas, gt_semantic_seg, train_cfg``).
        """
        labels = wrapping.bound_argument(self.head.forward_train,
                                         'gt_semantic_seg', args, kwargs)
        return self._losses_with_sar(
            labels, lambda: self.head.forward_train(*args, **kwargs))
