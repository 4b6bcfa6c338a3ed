"""``SARHead``: adds Semantic Anchor Regularization to any mmseg 1.x head.

The wrapped head is built from mmseg's MODELS registry and runs unchanged:
``loss`` is the head's ``loss`` with its ``cls_seg`` intercepted to read the
feature map right before dropout and the classifier, plus SAR's entries;
``predict`` and ``forward`` are the head's. State-dict keys as in the 0.x
glue: the head's under ``head.``, SAR's under ``sar_loss.``. The checks,
the interception and the training step are :mod:`sar.core.wrapping`'s,
shared with the 0.x glue.

Shape shorthand: B batch, H x W the padded input.
"""
import torch
from mmengine.model import BaseModule
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.registry import MODELS

from ..core import wrapping


def stack_labels(batch_data_samples):
    """The batch's semantic labels as one tensor.

    mmseg's data preprocessor pads every sample's ``gt_sem_seg`` to the
    batch's input size, so they stack as the heads' own loss stacks them.

    Args:
        batch_data_samples (list[SegDataSample]): with ``gt_sem_seg``.

    Shape:
        each ``gt_sem_seg.data`` (1, H, W) -> (B, 1, H, W) long.
    """
    return torch.stack([s.gt_sem_seg.data for s in batch_data_samples])


def check_padded_labels(labels, batch_data_samples, num_classes,
                        ignore_index):
    """Refuse labels that only the data preprocessor's padding made bad.

    ``SegDataPreProcessor`` pads every label map to the batch size with its
    ``seg_pad_val`` (255 by default). With a head whose ``ignore_index`` is
    another value, the padding is neither a class nor ignored; the generic
    check would blame the annotations. This names ``seg_pad_val``.

    Args:
        labels (Tensor): the stacked labels.
        batch_data_samples (list[SegDataSample]): their samples, whose
            ``padding_size`` (left, right, top, bottom) the preprocessor
            set.

    Shape:
        labels (B, 1, H, W) long.
    """
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
    if not bool(bad.any()):
        return
    padded = torch.zeros_like(bad)
    for mask, sample in zip(padded, batch_data_samples):
        left, right, top, bottom = sample.metainfo.get('padding_size',
                                                       (0, 0, 0, 0))
        height, width = mask.shape[-2:]
        # An empty slice where a side has no padding (height - 0: etc.).
        mask[..., :top, :] = True
        mask[..., height - bottom:, :] = True
        mask[..., :, :left] = True
        mask[..., :, width - right:] = True
    values = torch.unique(labels[bad & padded]).tolist()
    if values:
        shown = ', '.join(str(v) for v in values[:10])
        raise ValueError(
            f'SAR: the batch padding holds label(s) {shown}, neither a class '
            f'in [0, {num_classes - 1}] nor the head\'s ignore_index '
            f'{ignore_index}: SegDataPreProcessor pads label maps with its '
            f'seg_pad_val. Set model.data_preprocessor.seg_pad_val='
            f"{ignore_index} (the head's ignore_index), or the head's "
            f'ignore_index to the seg_pad_val')


@MODELS.register_module()
class SARHead(wrapping.HeadWrapperMixin, BaseModule):
    """Decode-head wrapper adding the SAR losses in training only.

    For ``CascadeEncoderDecoder`` (OCRNet) wrap the last head of the list;
    it is called as a cascade head (with ``prev_output``) and passes that
    on.

    Args:
        head (dict): config of any mmseg 1.x decode head classifying with
            ``cls_seg``/``conv_seg``, e.g. ``dict(type='FCNHead', ...)``.
        sar_loss (dict): config of :class:`SemanticAnchorLoss`; its
            ``num_classes``, ``channels``, ``ignore_index`` and ``norm_cfg``
            default to the wrapped head's.
        init_cfg (dict, optional): mmengine init config of the wrapper.
    """

    def __init__(self, head, sar_loss=dict(type='SemanticAnchorLoss'),
                 init_cfg=None):
        super().__init__(init_cfg)
        self._wrap(head, sar_loss, MODELS.build, BaseDecodeHead)

    def forward(self, inputs, *args, **kwargs):
        """Exactly the wrapped head's ``forward`` (logits)."""
        return self.head(inputs, *args, **kwargs)

    def predict(self, *args, **kwargs):
        """Exactly the wrapped head's ``predict``: no SAR work."""
        return self.head.predict(*args, **kwargs)

    def loss(self, *args, **kwargs):
        """The wrapped head's losses plus the SAR losses and diagnostics.

        Takes the wrapped head's ``loss`` arguments unchanged
        (``inputs, batch_data_samples, train_cfg`` or, for cascade heads,
        ``inputs, prev_output, batch_data_samples, train_cfg``); the labels
        are the samples' ``gt_sem_seg``.
        """
        samples = wrapping.bound_argument(self.head.loss,
                                          'batch_data_samples', args, kwargs)
        labels = stack_labels(samples)
        check_padded_labels(labels, samples, self.sar_loss.num_classes,
                            self.sar_loss.ignore_index)
        return self._losses_with_sar(
            labels, lambda: self.head.loss(*args, **kwargs))
