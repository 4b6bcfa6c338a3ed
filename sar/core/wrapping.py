"""How SAR wraps a decode head, the same for every mmseg generation.

Plain torch: both generation glues (:mod:`sar.mmseg0x`, :mod:`sar.mmseg1x`)
wrap a head built by their own registry and call these functions, so that
the checks, refusals and the feature capture are one code, not one copy per
generation.

Shape shorthand: C classes, D the classifier's input channels, B batch,
h x w the decode feature map.
"""
import contextlib
import inspect
import math

from torch import nn

from .regularizer import SemanticAnchorRegularizer, check_label_values

# Norm types (mmcv's names, the same in mmcv 1.x and 2.x) that cannot
# normalise the projector's (C, D, 1, 1) input, and why. BN/BN2d, SyncBN
# and GN can.
UNFIT_NORMS = {
    'LN': 'normalises the last axis, not the channels',
    'IN': 'normalises each anchor over its own 1x1 map (torch: "Expected '
          'more than 1 spatial element")',
    'IN1d': 'expects (N, C, L) input',
    'IN2d': 'normalises each anchor over its own 1x1 map',
    'IN3d': 'expects 5-d input',
    'BN1d': 'expects (N, C) or (N, C, L) input',
    'BN3d': 'expects 5-d input',
}

# What a segmentor and mmseg's tools read off a decode head (both
# generations), forwarded by the wrapper to the wrapped head.
FORWARDED = ('num_classes', 'out_channels', 'align_corners', 'ignore_index',
             'threshold', 'channels', 'in_channels', 'in_index',
             'input_transform', 'norm_cfg', 'conv_seg')


def projector_norm_cfg(norm_cfg):
    """The projector's norm config, refused at build time if unfit.

    The projector feeds its norm layers (C, D, 1, 1) with the C anchors as
    the batch: BN, SyncBN and GN fit; LN and IN (and 1-d/3-d BN) do not.

    Args:
        norm_cfg (dict | None): an mmcv norm config; None means BN.

    Returns:
        dict: a copy, ready for mmcv's ``build_norm_layer``.
    """
    norm_cfg = dict(norm_cfg or dict(type='BN'))
    kind = norm_cfg['type']
    if kind in UNFIT_NORMS:
        raise ValueError(
            f'SemanticAnchorLoss: norm_cfg type {kind!r} cannot serve the '
            f'anchor projector: it {UNFIT_NORMS[kind]}. The projector '
            'takes the wrapped head\'s norm_cfg unless told otherwise; set '
            "sar_loss=dict(norm_cfg=dict(type='BN')) (or 'SyncBN' under "
            "DDP, or 'GN')")
    return norm_cfg


def check_loss_settings(loss_weight, loss_name):
    """Refuse a loss weight or key prefix that mmseg would mishandle."""
    if not (math.isfinite(loss_weight) and loss_weight >= 0):
        raise ValueError(
            f'SemanticAnchorLoss: loss_weight must be a finite number '
            f'>= 0, got {loss_weight}; 1.0 keeps the paper\'s weights')
    if not loss_name.startswith('loss_'):
        raise ValueError(
            f"SemanticAnchorLoss: loss_name must start with 'loss_' for "
            f'mmseg to optimise it, got {loss_name!r}')


def loss_outputs(out, loss_name, loss_weight):
    """The regularizer's outputs as mmseg loss entries and diagnostics.

    ``<loss_name>_pull`` and ``<loss_name>_anchor_ce`` are losses (present
    in every iteration); the diagnostics' names lack "loss", so that mmseg
    (both generations) logs them without adding them to the total.
    """
    return {
        f'{loss_name}_pull': loss_weight * out['pull'],
        f'{loss_name}_anchor_ce': loss_weight * out['anchor_ce'],
        'sar.anchor_acc': out['anchor_acc'],
        'sar.gate_open': out['gate_open'],
        'sar.iters_since_init': out['iters_since_init'],
        'sar.anchor_max_cos': out['anchor_max_cos'],
        'sar.nonfinite': out['nonfinite'],
    }


def refuse_nested(head_cfg, wrapper_name='SARHead'):
    """A model takes SAR once: refuse a SARHead config inside another."""
    kind = dict(head_cfg).get('type')
    if kind == wrapper_name or getattr(kind, '__name__', None) == wrapper_name:
        raise TypeError(
            'SARHead cannot wrap another SARHead: a model takes SAR once. '
            "Give the inner head's config as `head` (in a config over a "
            'SAR config, use the base model\'s decode_head.head)')


def check_wrappable(head, base_class):
    """Refuse a head SAR cannot read features from or classify anchors with.

    Args:
        head (nn.Module): the built decode head.
        base_class (type): the generation's ``BaseDecodeHead``; the head
            must derive from it and keep its ``cls_seg``.
    """
    kind = type(head).__name__
    has_classifier = isinstance(getattr(head, 'conv_seg', None), nn.Conv2d)
    plain_cls_seg = getattr(type(head), 'cls_seg', None) is \
        base_class.cls_seg
    if not (isinstance(head, base_class) and has_classifier
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


def loss_cfg_for_head(sar_loss, head):
    """``sar_loss`` with the settings that must be the head's filled in.

    ``num_classes``, ``channels`` (the classifier's input) and
    ``ignore_index`` are the head's: the head's pixels and SAR's are the
    same pixels. A value given that disagrees is refused; ``norm_cfg``
    defaults to the head's.

    Args:
        sar_loss (dict): the ``SemanticAnchorLoss`` config.
        head (nn.Module): the built decode head.

    Returns:
        dict: a new config.
    """
    sar_loss = dict(sar_loss)
    ignore = head.ignore_index
    for key, value in (('num_classes', head.num_classes),
                       ('channels', head.conv_seg.in_channels),
                       ('ignore_index', -1 if ignore is None else ignore)):
        if key in sar_loss and sar_loss[key] != value:
            raise ValueError(
                f'SARHead: sar_loss.{key}={sar_loss[key]} disagrees with '
                f'the wrapped {type(head).__name__} ({key} {value}); remove '
                f'sar_loss.{key}: it is taken from the head')
        sar_loss.setdefault(key, value)
    sar_loss.setdefault('norm_cfg', getattr(head, 'norm_cfg', None))
    return sar_loss


@contextlib.contextmanager
def capture_classifier_input(head):
    """Record every feature map ``head.cls_seg`` classifies, while inside.

    The feature is the one right before dropout and the classifier: what
    SAR pulls. ``cls_seg`` is shadowed on the instance and restored on
    exit, whatever happens inside.

    Yields:
        list: the (B, D, h, w) tensors, in call order.
    """
    captured = []
    classify = head.cls_seg

    def cls_seg(feat):
        captured.append(feat)
        return classify(feat)

    head.cls_seg = cls_seg
    try:
        yield captured
    finally:
        del head.cls_seg


def last_feature(captured, head):
    """The last captured feature map, or an error naming the head."""
    if not captured:
        raise RuntimeError(
            f'SARHead: {type(head).__name__} never called cls_seg in '
            'training, so no features reached the SAR loss; this head is '
            'not supported.')
    return captured[-1]


def classify_anchors(conv_seg, embedded):
    """(C, D) embedded anchors -> (C, C) logits by the head's classifier.

    The 1x1 classifier is called directly: no dropout on this path.
    """
    logits = conv_seg(embedded[:, :, None, None].to(conv_seg.weight.dtype))
    return logits.flatten(1)


def merge_losses(losses, sar_losses):
    """Add SAR's entries to the head's; a key in both is refused."""
    clash = set(sar_losses) & set(losses)
    if clash:
        raise KeyError(f'SARHead: loss keys {sorted(clash)} exist in the '
                       'wrapped head too; set sar_loss.loss_name')
    losses.update(sar_losses)
    return losses


def wrap_plain_head_keys(head_keys, state_dict, prefix):
    """A plain head's keys moved under ``head.``, in place.

    A checkpoint of the same model without SAR (an mmseg zoo model, say)
    holds the head as ``<prefix>conv_seg.weight`` etc.; in the wrapper it
    lives under ``<prefix>head.``. Both generations load non-strictly and
    would only warn, leaving the head random, so the keys are moved (the
    same dict is passed on to the children). The layout is told by the
    wrapped head's own keys: wrapped when some ``<prefix>head.<k>`` is
    there (left alone; the SAR state then stays as built), plain when some
    ``<prefix><k>`` is. So a checkpoint whose classifier was dropped for
    fine-tuning is still plain, and a head's own child called ``head``
    (mmseg 1.x's DDRHead has one) is not taken for the wrapper's.

    Args:
        head_keys (Iterable[str]): the wrapped head's state-dict keys.
        state_dict (dict): what is being loaded; its ``_metadata`` (module
            versions) is moved along.
        prefix (str): the wrapper's prefix in it.
    """
    head_keys = set(head_keys)
    if any(f'{prefix}head.{k}' in state_dict for k in head_keys) or \
            not any(f'{prefix}{k}' in state_dict for k in head_keys):
        return
    metadata = getattr(state_dict, '_metadata', None)
    for key in [k for k in state_dict if k.startswith(prefix)]:
        if not key.startswith(f'{prefix}sar_loss.'):
            state_dict[f'{prefix}head.{key[len(prefix):]}'] = \
                state_dict.pop(key)
    if metadata is not None:
        for name in [n for n in metadata if n.startswith(prefix)]:
            rest = name[len(prefix):]
            if rest != 'sar_loss' and not rest.startswith('sar_loss.'):
                metadata[f'{prefix}head.{rest}'] = metadata[name]


def norm_factory(norm_cfg, build_norm_layer):
    """``dim -> nn.Module`` from an mmcv norm config, for the projector.

    Unfit norm types are refused here, at build time, with the fix
    (:func:`projector_norm_cfg`).

    Args:
        norm_cfg (dict | None): an mmcv norm config; None means BN.
        build_norm_layer (callable): the generation's mmcv
            ``build_norm_layer(cfg, num_features) -> (name, module)``.
    """
    norm_cfg = projector_norm_cfg(norm_cfg)

    def build(dim):
        return build_norm_layer(norm_cfg, dim)[1]

    return build


class SemanticAnchorLossBase(SemanticAnchorRegularizer):
    """The regularizer under mmseg's loss contract, for both generations.

    Each generation registers a thin subclass that names its own mmcv's
    ``build_norm_layer``; ``norm_cfg`` becomes the projector's norm factory
    through it (:func:`norm_factory`). Returns the entries of
    :func:`loss_outputs`.

    Args:
        num_classes (int): C.
        channels (int): D.
        norm_cfg (dict, optional): an mmcv norm config for the projector;
            None means BN.
        loss_weight (float): scales both losses on top of their own weights.
        loss_name (str): prefix of the loss keys; must start with 'loss_'.
        **kwargs: the hyperparameters of
            :class:`sar.core.SemanticAnchorRegularizer`.

    Shape:
        feats (B, D, h, w), labels (B, 1, H, W) long; classifier maps
        (C, D) -> (C, C).
    """

    # The generation's mmcv.cnn.build_norm_layer, as a staticmethod.
    build_norm_layer = None

    def __init__(self, num_classes, channels, norm_cfg=None, loss_weight=1.0,
                 loss_name='loss_sar', **kwargs):
        check_loss_settings(loss_weight, loss_name)
        if self.build_norm_layer is None:
            raise TypeError(
                f'{type(self).__name__} needs build_norm_layer = '
                'staticmethod(mmcv.cnn.build_norm_layer) from its mmcv: use '
                "a generation's SemanticAnchorLoss (sar.SemanticAnchorLoss)")
        super().__init__(num_classes, channels,
                         norm_layer=norm_factory(norm_cfg,
                                                 self.build_norm_layer),
                         **kwargs)
        self.loss_weight = loss_weight
        self._loss_name = loss_name

    @property
    def loss_name(self):
        """Prefix of the loss keys, as in mmseg's loss contract."""
        return self._loss_name

    def forward(self, feats, labels, classifier, check_labels=True):
        out = super().forward(feats, labels, classifier, check_labels)
        return loss_outputs(out, self.loss_name, self.loss_weight)


class HeadWrapperMixin:
    """What both generations' ``SARHead`` do, over their own module base.

    Mixed in before the generation's ``BaseModule``: the wrapped head under
    ``head``, the SAR loss under ``sar_loss``, the attributes of
    :data:`FORWARDED` read through to the head, and the training step that
    adds SAR's losses to the head's.
    """

    def _wrap(self, head, sar_loss, build, base_class):
        """Build and check the head and the loss; see the module's checks.

        Args:
            head (dict): the wrapped head's config.
            sar_loss (dict): the ``SemanticAnchorLoss`` config.
            build (callable): the generation's registry build, cfg -> module.
            base_class (type): the generation's ``BaseDecodeHead``.
        """
        refuse_nested(head, type(self).__name__)
        self.head = build(head)
        check_wrappable(self.head, base_class)
        self.sar_loss = build(loss_cfg_for_head(sar_loss, self.head))
        self._register_load_state_dict_pre_hook(self._load_plain_head)

    def _load_plain_head(self, state_dict, prefix, *args):
        # Load-state-dict pre-hook (torch's signature; the rest unused).
        wrap_plain_head_keys(self._modules['head'].state_dict().keys(),
                             state_dict, prefix)

    def __getattr__(self, name):
        if name in FORWARDED:
            return getattr(self._modules['head'], name)
        return super().__getattr__(name)

    def _classify_anchors(self, embedded):
        return classify_anchors(self.head.conv_seg, embedded)

    def _losses_with_sar(self, labels, head_losses):
        """``head_losses()`` (the head's own loss call) plus SAR's entries.

        Args:
            labels (Tensor): the batch's labels, checked before the head's
                own loss, whose error for bad values names nothing (CPU) or
                is a device-side assert (CUDA).
            head_losses (callable): runs the wrapped head's training loss
                and returns its dict.

        Shape:
            labels (B, 1, H, W) long.
        """
        check_label_values(labels, self.sar_loss.num_classes,
                           self.sar_loss.ignore_index)
        with capture_classifier_input(self.head) as captured:
            losses = head_losses()
        feats = last_feature(captured, self.head)
        sar_losses = self.sar_loss(feats, labels, self._classify_anchors,
                                   check_labels=False)
        return merge_losses(losses, sar_losses)


def bound_argument(method, name, args, kwargs):
    """The value ``method(*args, **kwargs)`` would receive as ``name``.

    The wrappers take their head's training arguments unchanged (plain and
    cascade heads differ in them) and read the labels by name.
    """
    return inspect.signature(method).bind(*args, **kwargs).arguments[name]
