"""SAR for segmentation_models.pytorch (smp) models.

``SARModel(smp.FPN(...))`` holds the smp model (``model``) and the core's
:class:`~sar.core.SemanticAnchorRegularizer` (``sar``); no smp code is
copied:

- Features: while a forward with labels runs, a forward pre-hook records
  the input of the module right after the decode feature: the decoder's
  trailing dropout where there is one (FPN, PSPNet; FPN's is in place, so
  the input is copied first), the dropout in front of the 1x1 classifier
  (DPT), else the classifier conv itself. Without labels the model runs
  alone and its output is bit-identical to the plain model's.
- Loss: ``model(images, labels)`` returns ``(output, sar)``: the model's
  output unchanged, and a dict whose ``loss`` (pull + anchor CE) the
  user's loop adds to its own segmentation loss, beside the entries of
  :func:`sar.core.wrapping.loss_outputs` for logging. :meth:`SARModel.step`
  does both with the user's criterion and returns one dict with ``loss``,
  what a LightningModule's ``training_step`` returns (no Lightning import).
- State: ``model.*`` and ``sar.*`` in the state_dict; ``model`` is the
  plain smp model (its state_dict or ``save_pretrained`` is a plain
  checkpoint, and a plain checkpoint loads into it).
- DDP: wrap the ``SARModel``; the SAR losses are computed in its forward
  and the state agrees across ranks through :mod:`sar.core.dist`.

Classifiers. smp heads classify with a conv (``segmentation_head[0]``,
DPT's ``segmentation_head.head[4]``). A 1x1 conv classifies an anchor
``a`` (C anchors of D channels) as ``W a + b``. Unet, Unet++, MAnet, PAN
and PSPNet classify with a 3x3 conv. An anchor is one D-vector, a 1x1
feature: what pixel configuration does it stand for? SAR pulls every
labelled pixel's feature to its class anchor; where the pull has done its
work, a region of class c is a constant map equal to ``S[c]``, and a kxk
conv (stride 1, 'same' padding) gives every interior pixel of it
``(sum over taps of W[:, :, i, j]) S[c] + b``. Classifying an anchor is
therefore classifying a constant map of it: the 1x1 conv with the kernel
summed over its taps. This is what the classifier will do to pulled
pixels, so the auxiliary CE trains the classifier (every tap, with equal
gradient) for the features the pull creates, and the gate opens only when
those would be classified right; for k = 1 it is the paper's computation
exactly. The centre tap alone would classify the anchor as a lone pixel in
a zero map, a configuration the pull never creates: its CE and its gate
would say nothing about how pulled pixels are classified, and the other
eight taps would get no anchor gradient. What the kernel sum does not
cover: pixels within k // 2 of a class boundary or of the image border
(zero padding) see mixed neighbourhoods; they are a thin band and the
pixel CE governs them as without SAR. Supported: 1x1 heads (FPN,
DeepLabV3, DeepLabV3+, UPerNet, Segformer, Linknet, and DPT, whose head
ends in dropout + 1x1 conv after its 3x3 conv-BN-ReLU) and kxk heads by
the kernel sum (Unet, Unet++, MAnet, PAN, PSPNet). Refused: heads with an
activation (their output is not the logits the anchor CE needs), strided,
dilated, grouped or non-'same' classifiers, binary heads (classes < 2).

Shape shorthand: B batch, H x W the input, C classes, D the classifier's
input channels, h x w the decode feature map, k the classifier's kernel.
"""
import torch.nn.functional as F
from segmentation_models_pytorch.base import SegmentationModel
from torch import nn

from ..core import SemanticAnchorRegularizer
from ..core.wrapping import loss_outputs

LOSS_NAME = 'loss_sar'
# The decoders that end in a dropout: the feature is that dropout's input.
DECODER_DROPOUT = ('FPN', 'PSPNet')


def find_layout(model):
    """The classifier conv of an smp model and the module whose input is
    the decode feature, or a refusal naming the reason.

    Returns:
        tuple: (classifier nn.Conv2d, feature nn.Module).
    """
    kind = type(model).__name__
    if not isinstance(model, SegmentationModel):
        raise TypeError(f'SARModel takes an smp segmentation model, got '
                        f'{kind}')
    head = model.segmentation_head
    inner = getattr(head, 'head', None)
    if isinstance(inner, nn.Sequential):  # DPT: ..., Dropout, 1x1 conv
        classifier, feature, activation = inner[-1], inner[-2], \
            head.activation
    elif isinstance(head, nn.Sequential):  # conv, upsampling, activation
        classifier, feature, activation = head[0], head[0], head[-1]
    else:
        raise TypeError(f'SAR does not know the segmentation head of {kind} '
                        f'({type(head).__name__})')
    if any(k.__name__ in DECODER_DROPOUT for k in type(model).__mro__):
        feature = model.decoder.dropout
    if not isinstance(getattr(activation, 'activation', activation),
                      nn.Identity):
        raise ValueError(
            f'SAR cannot serve {kind} with activation='
            f'{type(activation.activation).__name__}: the anchor CE and the '
            'gate read the classifier\'s logits, and the model would output '
            'something else; build it with activation=None')
    check_classifier(classifier, kind)
    return classifier, feature


def check_classifier(conv, kind='the model'):
    """Refuse a classifier conv whose anchor logits are not defined."""
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f'SAR expects {kind} to classify with an nn.Conv2d, '
                        f'found {type(conv).__name__}')
    k = conv.kernel_size
    same = conv.padding == (k[0] // 2, k[1] // 2) and k[0] % 2 and k[1] % 2
    if not (same and conv.stride == (1, 1) and conv.dilation == (1, 1)
            and conv.groups == 1):
        raise ValueError(
            f'SAR cannot classify anchors with the classifier of {kind} '
            f'(kernel {k}, stride {conv.stride}, padding {conv.padding}, '
            f'dilation {conv.dilation}, groups {conv.groups}): only odd '
            'kernels with stride 1, same padding, no dilation and no groups '
            'classify a constant map like one pixel')
    if conv.out_channels < 2:
        raise ValueError(
            f'SAR needs classes >= 2 (one anchor per class, each classified '
            f'against the others); {kind} has {conv.out_channels}. For '
            'binary segmentation use classes=2 with a softmax loss')


def classify_constant_map(conv, embedded):
    """(C, D) anchors -> (C, C) logits: the conv on a constant map of each.

    For a kxk 'same' conv an interior pixel of a constant map gets the
    kernel summed over its taps; for 1x1 this is ``W a + b``.
    """
    weight = conv.weight.sum(dim=(2, 3), keepdim=True)
    return F.conv2d(embedded[:, :, None, None].to(weight.dtype), weight,
                    conv.bias).flatten(1)


class SARModel(nn.Module):
    """An smp model with SAR in its training forward.

    Args:
        model (SegmentationModel): any supported smp model (see the module
            docstring), built with ``activation=None``.
        ignore_index (int): the label the user's loss ignores (smp has no
            loss of its own, so SAR cannot read it from the model).
        **settings: hyperparameters of
            :class:`sar.core.SemanticAnchorRegularizer`, paper defaults.

    Shape:
        images (B, 3, H, W); labels (B, H, W) long.
    """

    def __init__(self, model, ignore_index=255, **settings):
        super().__init__()
        classifier, _ = find_layout(model)
        for key in ('num_classes', 'channels'):
            if key in settings:
                raise ValueError(f'SARModel: {key} is the model\'s; leave '
                                 'it out')
        self.model = model
        self.sar = SemanticAnchorRegularizer(
            classifier.out_channels, classifier.in_channels,
            ignore_index=ignore_index, **settings).to(classifier.weight.device)

    def forward(self, images, labels=None):
        """The model's output; with labels, ``(output, sar)``.

        ``sar['loss']`` is SAR's pull plus anchor CE, to add to the user's
        segmentation loss; the other entries are for logging. The state
        advances only in training mode.
        """
        if labels is None:
            return self.model(images)
        classifier, feature = find_layout(self.model)
        captured = []

        def record(module, inputs):
            feat = inputs[0]
            captured.append(feat.clone()
                            if getattr(module, 'inplace', False) else feat)

        handle = feature.register_forward_pre_hook(record)
        try:
            output = self.model(images)
        finally:
            handle.remove()
        out = self.sar(captured[-1], labels,
                       lambda e: classify_constant_map(classifier, e))
        entries = loss_outputs(out, LOSS_NAME, 1.0)
        return output, dict(loss=out['pull'] + out['anchor_ce'], **entries)

    def step(self, images, labels, criterion):
        """One training step's losses: what ``training_step`` returns.

        Args:
            criterion (callable): the user's segmentation loss,
                ``criterion(output, labels)``, with the same ignore index.

        Returns:
            dict: ``loss`` (criterion + SAR), ``loss_seg`` and SAR's
            entries, all tensors (for ``self.log_dict``).
        """
        output, sar = self(images, labels)
        seg = criterion(output, labels)
        sar_loss = sar.pop('loss')
        return dict(loss=seg + sar_loss, loss_seg=seg, **sar)
