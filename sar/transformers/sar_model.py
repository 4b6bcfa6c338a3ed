"""SAR for Hugging Face transformers' semantic-segmentation models.

``add_sar(model)`` turns a ``SegformerForSemanticSegmentation``,
``UperNetForSemanticSegmentation`` or ``DPTForSemanticSegmentation`` into
its SAR class (``SARSegformerForSemanticSegmentation``, ...), in place: a
subclass that adds one submodule, ``sar`` (the core's
:class:`~sar.core.SemanticAnchorRegularizer`), and wraps ``forward``. No
model code is copied:

- Features: in a training forward with ``labels``, a forward pre-hook on
  the module right after the decode feature (the dropout in front of the
  classifier, or the classifier where there is none) records its input:
  the feature map before dropout and the classifier, as the paper takes it.
  The hook lives only for that call; inference runs the model's own code
  with nothing attached, so its outputs are bit-identical.
- Loss: the model's own ``loss`` (its CE with its own ignore index) plus
  SAR's pull and anchor CE, returned as the output's ``loss``, so
  ``Trainer`` needs no ``compute_loss``. The anchors are classified by the
  decode head's own 1x1 classifier (no dropout on that path). SAR's
  ignore index is the model's (``config.semantic_loss_ignore_index``, or
  ``config.loss_ignore_index`` for UperNet).
- Diagnostics: each training forward adds its SAR entries
  (:func:`sar.core.wrapping.loss_outputs`) to running sums on the model,
  without a host synchronisation; :func:`pop_diagnostics` returns their
  means since the last call (``SARLogCallback`` puts them in Trainer's
  logs).
- State: ``sar.*`` in the model's state_dict, and SAR's settings as
  ``config.sar`` (config.json), so ``save_pretrained`` / ``from_pretrained``
  of the SAR class and Trainer's checkpoints carry it. A checkpoint without
  SAR (or with SAR state that does not fit) loads into the SAR class with
  all of SAR's state fresh, as one unit; :func:`remove_sar` gives back the
  plain model, whose checkpoints hold nothing of SAR. (transformers 5.24's
  Trainer resumes with a plain ``load_state_dict`` of the saved file, whose
  keys ``save_pretrained`` wrote in the hub's old names for some models:
  SegFormer's encoder and MLP projections then do not load on resume, with
  or without SAR; huggingface/transformers#43701. SAR's keys are never
  renamed and do load. UperNet and DPT keep their names.)
- DDP (torchrun, Accelerate, Trainer): the SAR losses are computed inside
  ``forward``, so DDP sees their gradients; the gate, the EMA anchors and
  the pre-defined anchors agree across ranks through :mod:`sar.core.dist`.

Refused, with the reason: models whose classes come from query
classifiers (Mask2Former, MaskFormer, OneFormer), binary heads
(``num_labels < 2``) and any model not listed in :data:`SUPPORTED`.

Shape shorthand: B batch, H x W the input, C = num_labels classes, D the
classifier's input channels, h x w the decode feature map.
"""
import inspect
from collections import namedtuple

import torch
from torch import nn
from transformers import (DPTForSemanticSegmentation,
                          SegformerForSemanticSegmentation,
                          UperNetForSemanticSegmentation)
from transformers.conversion_mapping import (
    get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping)

from ..core import SemanticAnchorRegularizer
from ..core.regularizer import check_label_values
from ..core.wrapping import classify_anchors, loss_outputs

# Where each supported model keeps what SAR needs, as module paths:
# ``classifier`` the 1x1 conv that classifies pixels, ``feature`` the module
# whose input is the feature SAR pulls (the dropout in front of the
# classifier where there is one), ``ignore`` the config key of the model's
# own ignore index.
HeadLayout = namedtuple('HeadLayout', 'classifier feature ignore')
SUPPORTED = {
    'SegformerForSemanticSegmentation': HeadLayout(
        'decode_head.classifier', 'decode_head.dropout',
        'semantic_loss_ignore_index'),
    'UperNetForSemanticSegmentation': HeadLayout(
        'decode_head.classifier', 'decode_head.classifier',
        'loss_ignore_index'),
    # head.head: 3x3 conv, BN, ReLU, Dropout, 1x1 conv, Upsample
    'DPTForSemanticSegmentation': HeadLayout(
        'head.head.4', 'head.head.3', 'semantic_loss_ignore_index'),
}

QUERY_CLASSIFIERS = ('Mask2Former', 'MaskFormer', 'OneFormer')
LOSS_NAME = 'loss_sar'


def _layout(model_class):
    """The :class:`HeadLayout` of the nearest supported class in the MRO."""
    for klass in model_class.__mro__:
        if klass.__name__ in SUPPORTED:
            return SUPPORTED[klass.__name__]
    return None


def check_supported(model):
    """Refuse a model SAR cannot serve, naming the reason; its layout.

    Args:
        model (PreTrainedModel): a transformers model.

    Returns:
        HeadLayout: where its classifier and feature are.
    """
    kind = type(model).__name__
    if isinstance(model, SARMixin):
        raise TypeError(f'{kind} has SAR already: a model takes SAR once')
    if any(kind.startswith(name) for name in QUERY_CLASSIFIERS):
        raise TypeError(
            f'SAR cannot serve {kind}: it classifies mask queries, not '
            'pixels. SAR pulls each pixel\'s feature toward its class '
            'anchor and classifies the anchors with the classifier that '
            'classifies pixels; a query classifier sees query embeddings '
            'and the masks come from dot products with pixel embeddings, '
            'so there is no per-pixel class classifier for the anchors. '
            f'Supported: {", ".join(sorted(SUPPORTED))}')
    layout = _layout(type(model))
    if layout is None:
        raise TypeError(
            f'SAR does not know where {kind} keeps its pixel classifier. '
            f'Supported: {", ".join(sorted(SUPPORTED))}')
    modules = dict(model.named_modules())
    classifier = modules.get(layout.classifier)
    if not (isinstance(classifier, nn.Conv2d)
            and classifier.kernel_size == (1, 1) and classifier.groups == 1):
        raise TypeError(
            f'SAR expects a 1x1 nn.Conv2d classifier at {layout.classifier} '
            f'of {kind}, found {type(classifier).__name__}: this version of '
            'transformers lays the head out differently')
    if layout.feature not in modules:
        raise TypeError(f'SAR expects {layout.feature} in {kind}; this '
                        'version of transformers lays the head out '
                        'differently')
    num_labels = model.config.num_labels
    if num_labels < 2 or classifier.out_channels != num_labels:
        raise ValueError(
            f'SAR needs a softmax classifier with num_labels >= 2 outputs '
            f'(one anchor per class, each classified against the others); '
            f'{kind} has num_labels={num_labels} and a classifier with '
            f'{classifier.out_channels} outputs. For binary segmentation '
            'use num_labels=2')
    return layout


def _build_regularizer(config, layout, classifier, settings):
    """The core regularizer for this model, from ``config.sar`` settings.

    ``num_classes``, ``channels`` and ``ignore_index`` are the model's; a
    setting that disagrees is refused.
    """
    ignore = getattr(config, layout.ignore)
    fixed = dict(num_classes=config.num_labels,
                 channels=classifier.in_channels,
                 ignore_index=-100 if ignore is None else ignore)
    for key, value in fixed.items():
        if key in settings and settings[key] != value:
            raise ValueError(
                f'SAR: {key}={settings[key]} disagrees with the model '
                f'({key} {value}); leave it out: it is the model\'s')
    kwargs = {k: v for k, v in settings.items() if k not in fixed}
    return _float32_regularizer(**fixed, **kwargs)


def _float32_regularizer(*args, **kwargs):
    """The core regularizer in float32, whatever the default dtype.

    ``from_pretrained(..., dtype=torch.bfloat16)`` builds the model under
    that default dtype; SAR's anchors and projector stay float32 (the SAR
    classes also keep ``sar`` in float32 when loading).
    """
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        return SemanticAnchorRegularizer(*args, **kwargs)
    finally:
        torch.set_default_dtype(default)


class SARMixin:
    """What the SAR classes add to a transformers segmentation model.

    Mixed in before the model class by :func:`sar_class`; see the module
    docstring for the contract.
    """

    def _attach_sar(self):
        """Build ``self.sar`` from ``self.config.sar`` (settings dict)."""
        layout = _layout(type(self))
        modules = dict(self.named_modules())
        self._sar_layout = layout
        self.sar = _build_regularizer(self.config, layout,
                                      modules[layout.classifier],
                                      dict(getattr(self.config, 'sar', {})))
        self._sar_sums = {}
        self._sar_count = 0

    def _sar_modules(self):
        modules = dict(self.named_modules())
        return (modules[self._sar_layout.classifier],
                modules[self._sar_layout.feature])

    def _sar_forward(self, *args, **kwargs):
        labels = self._sar_signature.bind(self, *args, **kwargs) \
            .arguments.get('labels')
        if not (self.training and labels is not None):
            return super().forward(*args, **kwargs)
        # Checked before the model's own loss, whose error for a bad value
        # names nothing (CPU) or is a device-side assert (CUDA).
        check_label_values(labels, self.sar.num_classes,
                           self.sar.ignore_index)
        classifier, feature_module = self._sar_modules()
        captured = []

        def record(module, inputs):
            # An in-place module (dropout) would overwrite the feature.
            feat = inputs[0]
            captured.append(feat.clone()
                            if getattr(module, 'inplace', False) else feat)

        handle = feature_module.register_forward_pre_hook(record)
        try:
            out = super().forward(*args, **kwargs)
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(f'SAR: {type(self).__name__} never ran '
                               f'{self._sar_layout.feature} in training')
        sar_out = self.sar(captured[-1], labels,
                           lambda e: classify_anchors(classifier, e),
                           check_labels=False)
        total = sar_out['pull'] + sar_out['anchor_ce']
        self._sar_accumulate(loss_outputs(sar_out, LOSS_NAME, 1.0))
        if isinstance(out, tuple):  # return_dict=False: loss comes first
            return (out[0] + total.to(out[0].dtype), ) + out[1:]
        out.loss = out.loss + total.to(out.loss.dtype)
        return out

    def _sar_accumulate(self, entries):
        for key, value in entries.items():
            value = value.detach().float()
            self._sar_sums[key] = self._sar_sums.get(key, 0) + value
        self._sar_count += 1

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """transformers' ``from_pretrained``, SAR's buffers' dtypes kept.

        The SAR classes keep ``sar`` in float32 under any ``dtype``
        (``_keep_in_fp32_modules_strict``), which transformers applies to
        every tensor, flags and counters too; those get their own dtypes
        back here.
        """
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        sar = model.sar
        state = _float32_regularizer(
            sar.num_classes, sar.channels, ignore_index=sar.ignore_index,
            anchor_source=sar.anchor_source).state_dict()
        for name, tensor in sar.state_dict(keep_vars=True).items():
            if tensor.dtype != state[name].dtype:
                tensor.data = tensor.data.to(state[name].dtype)
        return loaded

    def _init_weights(self, module):
        # transformers' from_pretrained builds the model on the meta device
        # and calls this for every module with a key missing from the
        # checkpoint. Any SAR key missing: SAR's whole state is made fresh,
        # as one unit (a plain checkpoint, or fine-tuning to other shapes).
        sar = self._modules.get('sar')
        if sar is not None and any(module is m for m in sar.modules()):
            reset_regularizer(sar)
            return
        super()._init_weights(module)


@torch.no_grad()
def reset_regularizer(regularizer):
    """Every parameter and buffer of ``regularizer`` as freshly built.

    A new regularizer with the same settings is built on the CPU (anchors
    from the global generator) and copied in; plain ``copy_``, so
    transformers' guard on its init functions does not skip tensors it
    marked as loaded.
    """
    reg = regularizer
    with torch.device('cpu'):
        fresh = _float32_regularizer(
            reg.num_classes, reg.channels, pull_weight=reg.pull_weight,
            anchor_ce_weight=reg.anchor_ce_weight,
            filter_conf=reg.filter_conf, update_conf=reg.update_conf,
            ema_momentum=reg.ema_momentum, anchor_init=reg.anchor_init,
            distance=reg.distance, pull_mode=reg.pull_mode,
            ignore_index=reg.ignore_index,
            detach_ce_weights=reg.detach_ce_weights,
            anchor_source=reg.anchor_source, collapse_cos=reg.collapse_cos,
            collapse_patience=reg.collapse_patience)
    target = reg.state_dict(keep_vars=True)
    for key, value in fresh.state_dict().items():
        target[key].data = value.to(target[key].device)


_SAR_CLASSES = {}


def sar_class(model_class):
    """The SAR subclass of a supported transformers model class.

    ``SAR<Name>``: ``__init__(config)`` builds the model, then ``sar`` from
    ``config.sar``; ``forward`` keeps the model's signature (Trainer reads
    it for label names and loss kwargs). transformers' weight-name
    conversions of the model class (old hub checkpoints' names) are
    registered for the subclass too.
    """
    if model_class in _SAR_CLASSES:
        return _SAR_CLASSES[model_class]
    if _layout(model_class) is None or issubclass(model_class, SARMixin):
        raise TypeError(f'no SAR class for {model_class.__name__}; '
                        f'supported: {", ".join(sorted(SUPPORTED))}')
    name = f'SAR{model_class.__name__}'

    def __init__(self, config, *args, **kwargs):
        model_class.__init__(self, config, *args, **kwargs)
        self._attach_sar()

    def forward(self, *args, **kwargs):
        return SARMixin._sar_forward(self, *args, **kwargs)

    signature = inspect.signature(model_class.forward)
    forward.__signature__ = signature
    forward.__doc__ = model_class.forward.__doc__
    keep_fp32 = set(model_class._keep_in_fp32_modules_strict or ()) | {'sar'}
    klass = type(name, (SARMixin, model_class), dict(
        __init__=__init__, forward=forward, _sar_signature=signature,
        _keep_in_fp32_modules_strict=keep_fp32, __module__=__name__,
        __qualname__=name))
    conversions = get_checkpoint_conversion_mapping(model_class.__name__)
    if conversions is None:
        conversions = get_checkpoint_conversion_mapping(
            getattr(model_class.config_class, 'model_type', None))
    if conversions is not None:
        register_checkpoint_conversion_mapping(name, conversions,
                                               overwrite=True)
    _SAR_CLASSES[model_class] = klass
    return klass


SARSegformerForSemanticSegmentation = sar_class(
    SegformerForSemanticSegmentation)
SARUperNetForSemanticSegmentation = sar_class(UperNetForSemanticSegmentation)
SARDPTForSemanticSegmentation = sar_class(DPTForSemanticSegmentation)


def add_sar(model, **settings):
    """Add SAR to a transformers segmentation model, in place.

    The model object stays the same (references and optimizers built over
    its parameters stay valid; SAR's projector parameters are new, so
    build the optimizer after this call); its class becomes the SAR class
    (:func:`sar_class`) and ``model.sar`` is built on the classifier's
    device.

    Args:
        model (PreTrainedModel): a supported model (:data:`SUPPORTED`).
        **settings: hyperparameters of
            :class:`sar.core.SemanticAnchorRegularizer` (``pull_weight``,
            ``anchor_ce_weight``, ``filter_conf``, ``update_conf``,
            ``ema_momentum``, ...), each with the paper default; stored as
            ``model.config.sar``. ``num_classes``, ``channels`` and
            ``ignore_index`` are the model's.

    Returns:
        the same model.
    """
    layout = check_supported(model)
    classifier = dict(model.named_modules())[layout.classifier]
    # Checked before the model changes: a bad setting leaves it plain.
    _build_regularizer(model.config, layout, classifier, dict(settings))
    model.config.sar = dict(settings)
    model.__class__ = sar_class(type(model))
    model._attach_sar()
    model.sar.to(classifier.weight.device)
    model.sar.train(model.training)
    return model


def remove_sar(model):
    """The plain model back, in place: no ``sar`` module, no ``config.sar``.

    Its ``save_pretrained`` then writes a plain checkpoint, which the plain
    class (or AutoModel) loads with nothing of SAR in it.
    """
    if not isinstance(model, SARMixin):
        raise TypeError(f'{type(model).__name__} has no SAR to remove')
    del model.sar
    for attr in ('_sar_layout', '_sar_sums', '_sar_count'):
        model.__dict__.pop(attr, None)
    if hasattr(model.config, 'sar'):
        del model.config.sar
    base = next(k for k in type(model).__mro__
                if k.__name__ in SUPPORTED)
    model.__class__ = base
    return model


def pop_diagnostics(model):
    """Means of SAR's entries over the training forwards since last call.

    Keys: ``loss_sar_pull``, ``loss_sar_anchor_ce`` (the weighted losses,
    already inside the model's ``loss``) and the diagnostics
    ``sar.anchor_acc``, ``sar.gate_open``, ``sar.iters_since_init``,
    ``sar.anchor_max_cos``, ``sar.nonfinite``. Empty when no training
    forward ran. One host read.

    Args:
        model: a SAR model, or one wrapped by DDP / Accelerate (``module``).
    """
    model = getattr(model, 'module', model)
    if not isinstance(model, SARMixin) or not model._sar_count:
        return {}
    count = model._sar_count
    keys = list(model._sar_sums)
    values = torch.stack([model._sar_sums[k] for k in keys]) / count
    model._sar_sums, model._sar_count = {}, 0
    return dict(zip(keys, values.tolist()))
