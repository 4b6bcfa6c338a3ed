"""``SARHead``: adds Semantic Anchor Regularization to any mmseg 0.x head.

The wrapped head is built from the registry and runs unchanged. During
training its ``cls_seg`` is intercepted to read the feature map right before
dropout and the classifier; at test time the wrapper is the wrapped head.
State-dict keys: the wrapped head's under ``head.``, SAR's under
``sar_loss.`` (dropped when exporting to a plain model). The checks and the
interception are :mod:`sar.core.wrapping`'s, shared with the 1.x glue.
"""
import inspect

from mmcv.runner import BaseModule
from mmseg.models.builder import HEADS, build_head, build_loss
from mmseg.models.decode_heads.decode_head import BaseDecodeHead

from ..core import wrapping
from ..core.regularizer import check_label_values


@HEADS.register_module()
class SARHead(BaseModule):
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
        wrapping.refuse_nested(head, type(self).__name__)
        self.head = build_head(head)
        wrapping.check_wrappable(self.head, BaseDecodeHead)
        self.sar_loss = build_loss(
            wrapping.loss_cfg_for_head(sar_loss, self.head))
        self._register_load_state_dict_pre_hook(
            wrapping.wrap_plain_head_keys)

    def __getattr__(self, name):
        if name in wrapping.FORWARDED:
            return getattr(self._modules['head'], name)
        return super().__getattr__(name)

    def forward(self, inputs, *args, **kwargs):
        return self.head(inputs, *args, **kwargs)

    def forward_test(self, *args, **kwargs):
        """Exactly the wrapped head's ``forward_test``."""
        return self.head.forward_test(*args, **kwargs)

    def _classify_anchors(self, embedded):
        return wrapping.classify_anchors(self.head.conv_seg, embedded)

    def forward_train(self, *args, **kwargs):
        """The wrapped head's losses plus the SAR losses and diagnostics.

        Takes the wrapped head's ``forward_train`` arguments unchanged
        (``inputs, img_metas, gt_semantic_seg, train_cfg`` or, for cascade
        heads, ``inputs, prev_output, img_metas, gt_semantic_seg, train_cfg``).
        """
        bound = inspect.signature(self.head.forward_train).bind(
            *args, **kwargs)
        gt_semantic_seg = bound.arguments['gt_semantic_seg']
        # Before the head's own loss, whose error for such labels names
        # nothing (CPU) or is a device-side assert (CUDA).
        check_label_values(gt_semantic_seg, self.sar_loss.num_classes,
                           self.sar_loss.ignore_index)
        with wrapping.capture_classifier_input(self.head) as captured:
            losses = self.head.forward_train(*args, **kwargs)
        feats = wrapping.last_feature(captured, self.head)
        sar_losses = self.sar_loss(feats, gt_semantic_seg,
                                   self._classify_anchors, check_labels=False)
        return wrapping.merge_losses(losses, sar_losses)
