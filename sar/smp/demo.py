"""An smp FPN trained by a plain loop, with or without SAR.

The smp half of ``tools/demo_hf_smp.py``; the loop is what a user writes:
the model's output, the user's cross-entropy, plus SAR's loss when the
model is a :class:`~sar.smp.SARModel`.

Shape shorthand: N images, S x S pixels, K classes.
"""
import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from .sar_model import SARModel

MEAN, STD = 127.5, 64.0


def to_tensors(images, labels=None):
    """uint8 arrays -> (N, 3, S, S) float32 and (N, S, S) long tensors."""
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() - MEAN) / STD
    return x if labels is None else (x, torch.from_numpy(labels).long())


def small_fpn(num_classes):
    """FPN over timm's resnet10t (no pretrained weights), ~0.5M params."""
    return smp.FPN(encoder_name='tu-resnet10t', encoder_weights=None,
                   classes=num_classes, decoder_pyramid_channels=64,
                   decoder_segmentation_channels=32)


OPTIMIZERS = ('sgd', 'adam')


def build_optimizer(params, name, steps, lr=None):
    """The demo's optimizer and per-step schedule.

    'sgd': what ``make demo`` and the paper use, SGD lr 0.05, momentum 0.9,
    weight decay 5e-4, poly decay (power 0.9). 'adam': Adam lr 1e-3,
    linear decay. ``lr`` replaces the learning rate.
    """
    if name == 'sgd':
        optimizer = torch.optim.SGD(params, lr=lr or 0.05, momentum=0.9,
                                    weight_decay=5e-4)
        decay = lambda step: (1 - step / steps)**0.9  # noqa: E731
    elif name == 'adam':
        optimizer = torch.optim.Adam(params, lr=lr or 1e-3)
        decay = lambda step: 1 - step / steps  # noqa: E731
    else:
        raise ValueError(f'optimizer is one of {OPTIMIZERS}, not {name!r}')
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, decay)


def train_fpn(train, val_images, num_classes, use_sar, steps, seed=0,
              batch_size=8, optimizer='sgd', lr=None, ignore_index=255,
              log_every=50, **sar_settings):
    """Train a small FPN; its predictions on the validation set.

    Args:
        train (tuple): images (N, S, S, 3) uint8, labels (N, S, S) uint8.
        val_images (ndarray): (M, S, S, 3) uint8.
        num_classes (int): K.
        use_sar (bool): wrap the model in SARModel (paper defaults, then
            ``sar_settings``).
        steps (int): optimizer steps.
        optimizer (str): 'sgd' or 'adam' (:func:`build_optimizer`).
        lr (float, optional): the optimizer's learning rate instead of
            its default.
        log_every (int): steps averaged into one log entry.

    Returns:
        tuple: (M, S, S) int64 predicted classes, and the log: a dict per
        ``log_every`` steps with ``iter`` (the last step), ``loss`` and,
        with SAR, SAR's entries, each the mean over those steps.
    """
    torch.manual_seed(seed)
    model = small_fpn(num_classes)
    if use_sar:
        model = SARModel(model, ignore_index=ignore_index, **sar_settings)
    images, labels = to_tensors(*train)
    optimizer, schedule = build_optimizer(model.parameters(), optimizer,
                                          steps, lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    log, sums = [], {}
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(labels), (batch_size, ), generator=g)
        x, y = images[idx], labels[idx]
        if use_sar:
            output, sar = model(x, y)
        else:
            output, sar = model(x), dict(loss=torch.zeros(()))
        loss = F.cross_entropy(output, y, ignore_index=ignore_index) + \
            sar.pop('loss')
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        for key, value in dict(sar, loss=loss).items():
            sums[key] = sums.get(key, 0.0) + value.detach()
        if step % log_every == 0 or step == steps:
            count = (step - 1) % log_every + 1
            log.append(dict(iter=step, **{k: float(v) / count
                                          for k, v in sums.items()}))
            sums = {}
    return predict(model, val_images), log


@torch.no_grad()
def predict(model, images, batch_size=32):
    """Argmax of the model's output: (M, S, S) int64."""
    model.eval()
    x = to_tensors(images)
    return torch.cat([model(chunk).argmax(1) for chunk in x.split(
        batch_size)]).numpy().astype(np.int64)
