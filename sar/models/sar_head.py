"""``SARHead``: adds Semantic Anchor Regularization to any mmseg decode head.

The wrapped head is built from the registry and runs unchanged. During
training its ``cls_seg`` is intercepted to read the feature map right before
dropout and the classifier; at test time the wrapper is the wrapped head.
State-dict keys: the wrapped head's under ``head.``, SAR's under
``sar_loss.`` (dropped when exporting to a plain model).
"""
import inspect

from mmcv.runner import BaseModule
from mmseg.models.builder import HEADS, build_head, build_loss
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from torch import nn

from ..core.regularizer import check_label_values

# What EncoderDecoder / CascadeEncoderDecoder and mmseg's tools read off a
# decode head, forwarded to the wrapped one.
_FORWARDED = ('num_classes', 'out_channels', 'align_corners', 'ignore_index',
              'threshold', 'channels', 'in_channels', 'in_index',
              'input_transform', 'norm_cfg', 'conv_seg')


def _check_supported(head):
    kind = type(head).__name__
    has_classifier = isinstance(getattr(head, 'conv_seg', None), nn.Conv2d)
    plain_cls_seg = type(head).cls_seg is BaseDecodeHead.cls_seg
    if not (isinstance(head, BaseDecodeHead) and has_classifier
            and plain_cls_seg):
        raise TypeError(
            f'SARHead cannot wrap {kind}: SAR classifies its anchors with the '
            'head\'s 1x1 classifier `conv_seg` and reads features through '
            'BaseDecodeHead.cls_seg, which this head '
            + ('does not have' if not has_classifier else 'overrides') +
            '. Supported: heads derived from mmseg BaseDecodeHead that '
            'classify pixels with `cls_seg`/`conv_seg` (FCN, PSP, ASPP, '
            'DepthwiseSeparableASPP, UPer, OCR, SegFormer, ...). For '
            'CascadeEncoderDecoder wrap the last head of the list.')
    if head.out_channels != head.num_classes:
        raise ValueError(
            f'SARHead cannot wrap {kind} with out_channels='
            f'{head.out_channels} != num_classes={head.num_classes}: the '
            'anchors need one classifier output per class; set '
            'out_channels=num_classes (softmax segmentation).')


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
        if dict(head).get('type') in ('SARHead', SARHead):
            raise TypeError(
                'SARHead cannot wrap another SARHead: a model takes SAR once. '
                "Give the inner head's config as `head` (in a config over a "
                'SAR config, use the base model\'s decode_head.head)')
        self.head = build_head(head)
        _check_supported(self.head)
        sar_loss = dict(sar_loss)
        ignore = self.head.ignore_index
        # The head's pixels and SAR's are the same pixels: one ignore index.
        for key, value in (('num_classes', self.head.num_classes),
                           ('channels', self.head.conv_seg.in_channels),
                           ('ignore_index', -1 if ignore is None else ignore)):
            if key in sar_loss and sar_loss[key] != value:
                raise ValueError(
                    f'SARHead: sar_loss.{key}={sar_loss[key]} disagrees with '
                    f'the wrapped {type(self.head).__name__} ({key} '
                    f'{value}); remove sar_loss.{key}: it is taken from '
                    f'the head')
        sar_loss.setdefault('num_classes', self.head.num_classes)
        sar_loss.setdefault('channels', self.head.conv_seg.in_channels)
        sar_loss.setdefault('ignore_index', -1 if ignore is None else ignore)
        sar_loss.setdefault('norm_cfg', self.head.norm_cfg)
        self.sar_loss = build_loss(sar_loss)
        self._register_load_state_dict_pre_hook(self._wrap_plain_head_keys)

    @staticmethod
    def _wrap_plain_head_keys(state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        """Move a plain decode head's keys under ``head.`` before loading.

        A checkpoint of the same model without SAR (an mmseg zoo model, say)
        holds the head as ``<prefix>conv_seg.weight`` etc.; here it lives
        under ``<prefix>head.``. mmcv loads non-strictly and would only warn,
        leaving the head random, so the keys are moved in place (mmcv and
        torch pass the same dict on to the children). A checkpoint already
        in this layout is left alone; the SAR state then stays as built.
        """
        ours = [k for k in state_dict if k.startswith(prefix)]
        if not ours or any(k.startswith(f'{prefix}head.') for k in ours):
            return
        metadata = getattr(state_dict, '_metadata', None)
        for key in ours:
            rest = key[len(prefix):]
            if rest.startswith('sar_loss.'):
                continue
            state_dict[f'{prefix}head.{rest}'] = state_dict.pop(key)
        if metadata is not None:
            for name in [n for n in metadata if n.startswith(prefix)]:
                rest = name[len(prefix):]
                if rest.split('.')[0] not in ('head', 'sar_loss'):
                    metadata[f'{prefix}head.{rest}'] = metadata[name]

    def __getattr__(self, name):
        if name in _FORWARDED:
            return getattr(self._modules['head'], name)
        return super().__getattr__(name)

    def forward(self, inputs, *args, **kwargs):
        return self.head(inputs, *args, **kwargs)

    def forward_test(self, *args, **kwargs):
        """Exactly the wrapped head's ``forward_test``."""
        return self.head.forward_test(*args, **kwargs)

    def _classify_anchors(self, embedded):
        """(C, D) embedded anchors -> (C, C) logits by the head's classifier.

        The classifier is called directly: no dropout on this path.
        """
        conv = self.head.conv_seg
        logits = conv(embedded[:, :, None, None].to(conv.weight.dtype))
        return logits.flatten(1)

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
        captured = []
        classify = self.head.cls_seg

        def cls_seg(feat):
            captured.append(feat)
            return classify(feat)

        self.head.cls_seg = cls_seg
        try:
            losses = self.head.forward_train(*args, **kwargs)
        finally:
            del self.head.cls_seg
        if not captured:
            raise RuntimeError(
                f'SARHead: {type(self.head).__name__}.forward_train never '
                'called cls_seg, so no features reached the SAR loss; this '
                'head is not supported.')
        sar_losses = self.sar_loss(captured[-1], gt_semantic_seg,
                                   self._classify_anchors, check_labels=False)
        clash = set(sar_losses) & set(losses)
        if clash:
            raise KeyError(f'SARHead: loss keys {sorted(clash)} exist in '
                           'the wrapped head too; set sar_loss.loss_name')
        losses.update(sar_losses)
        return losses
