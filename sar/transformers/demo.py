"""A small SegFormer trained by transformers' Trainer, with or without SAR.

The transformers half of ``tools/demo_hf_smp.py``: the Trainer runs the
model's own loss (plus SAR's, when added); nothing here overrides
``compute_loss``.

Shape shorthand: N images, S x S pixels, K classes.
"""
import numpy as np
import torch
import torch.nn.functional as F
from transformers import (SegformerConfig, SegformerForSemanticSegmentation,
                          Trainer, TrainerCallback, TrainingArguments)

from .callback import SARLogCallback
from .sar_model import add_sar

MEAN, STD = 127.5, 64.0


def to_tensors(images, labels=None):
    """uint8 arrays -> (N, 3, S, S) float32 and (N, S, S) long tensors."""
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() - MEAN) / STD
    return x if labels is None else (x, torch.from_numpy(labels).long())


class _Scenes(torch.utils.data.Dataset):
    def __init__(self, images, labels):
        self.images, self.labels = to_tensors(images, labels)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return dict(pixel_values=self.images[i], labels=self.labels[i])


class _Recorder(TrainerCallback):
    """Keeps each training log as the callbacks see it (after
    SARLogCallback added SAR's entries; Trainer's ``log_history`` holds
    the log from before the callbacks)."""

    def __init__(self):
        self.entries = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and 'loss' in logs:
            self.entries.append(dict(logs, iter=state.global_step))


def small_segformer(num_labels, ignore_index=255):
    """A MiT-like SegFormer of about 0.3M parameters, randomly initialised.

    Strides 4, 2, 2, 2 as MiT's; widths 16-128, one block per stage.
    """
    return SegformerForSemanticSegmentation(SegformerConfig(
        num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1],
        hidden_sizes=[16, 32, 64, 128], patch_sizes=[7, 3, 3, 3],
        strides=[4, 2, 2, 2], num_attention_heads=[1, 2, 4, 8],
        mlp_ratios=[4, 4, 4, 4], decoder_hidden_size=64,
        num_labels=num_labels, semantic_loss_ignore_index=ignore_index))


def train_segformer(train, val_images, num_labels, use_sar, steps,
                    out_dir, seed=0, batch_size=8, lr=6e-4, log_every=50,
                    **sar_settings):
    """Train a small SegFormer; its predictions on the validation images.

    Args:
        train (tuple): images (N, S, S, 3) uint8, labels (N, S, S) uint8.
        val_images (ndarray): (M, S, S, 3) uint8.
        num_labels (int): K.
        use_sar (bool): add SAR (paper defaults, then ``sar_settings``).
        steps (int): optimizer steps.
        out_dir (str): Trainer's output folder.
        log_every (int): Trainer's ``logging_steps``.

    Returns:
        tuple: (M, S, S) int64 predicted classes, and the log: Trainer's
        training logs as its callbacks see them, each with ``iter`` (its
        step), ``loss`` and, with SAR, SAR's entries
        (:class:`SARLogCallback`), means since the last log.
    """
    torch.manual_seed(seed)
    model = small_segformer(num_labels)
    if use_sar:
        add_sar(model, **sar_settings)
    args = TrainingArguments(
        output_dir=out_dir, max_steps=steps, learning_rate=lr,
        per_device_train_batch_size=batch_size, lr_scheduler_type='linear',
        warmup_steps=min(50, steps // 10), logging_steps=log_every,
        save_strategy='no', report_to=[], use_cpu=True, seed=seed,
        dataloader_num_workers=0, disable_tqdm=True)
    recorder = _Recorder()
    trainer = Trainer(model=model, args=args, train_dataset=_Scenes(*train),
                      callbacks=[SARLogCallback()] * use_sar + [recorder])
    trainer.train()
    return predict(model, val_images), recorder.entries


@torch.no_grad()
def predict(model, images, batch_size=32):
    """Argmax of the logits resized to the images: (M, S, S) int64."""
    model.eval()
    x = to_tensors(images)
    out = []
    for chunk in x.split(batch_size):
        logits = model(pixel_values=chunk).logits
        logits = F.interpolate(logits, size=chunk.shape[2:],
                               mode='bilinear', align_corners=False)
        out.append(logits.argmax(1))
    return torch.cat(out).numpy().astype(np.int64)
