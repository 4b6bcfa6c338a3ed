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


def train_fpn(train, val_images, num_classes, use_sar, steps, seed=0,
              batch_size=8, lr=1e-3, ignore_index=255, **sar_settings):
    """Train a small FPN with Adam; its predictions on the validation set.

    Args:
        train (tuple): images (N, S, S, 3) uint8, labels (N, S, S) uint8.
        val_images (ndarray): (M, S, S, 3) uint8.
        num_classes (int): K.
        use_sar (bool): wrap the model in SARModel (paper defaults, then
            ``sar_settings``).
        steps (int): optimizer steps.

    Returns:
        ndarray: (M, S, S) int64 predicted classes.
    """
    torch.manual_seed(seed)
    model = small_fpn(num_classes)
    if use_sar:
        model = SARModel(model, ignore_index=ignore_index, **sar_settings)
    images, labels = to_tensors(*train)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 1 - step / steps)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(labels), (batch_size, ), generator=g)
        x, y = images[idx], labels[idx]
        if use_sar:
            output, sar = model(x, y)
        else:
            output, sar = model(x), dict(loss=0.0)
        loss = F.cross_entropy(output, y, ignore_index=ignore_index) + \
            sar['loss']
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return predict(model, val_images)


@torch.no_grad()
def predict(model, images, batch_size=32):
    """Argmax of the model's output: (M, S, S) int64."""
    model.eval()
    x = to_tensors(images)
    return torch.cat([model(chunk).argmax(1) for chunk in x.split(
        batch_size)]).numpy().astype(np.int64)
