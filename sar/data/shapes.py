"""A tiny generated segmentation data set for smoke runs and tests.

Images of noisy background with a few filled shapes; each shape class has
its own mean colour, perturbed per image, so a small network can learn it
in a few hundred iterations on a CPU. Written in mmseg's CustomDataset
layout (``img_dir/{split}/*.png``, ``ann_dir/{split}/*.png``), so any mmseg
config reads it with ``type='CustomDataset'``. Needs numpy and Pillow only.
"""
import os
import os.path as osp

import numpy as np
from PIL import Image

SHAPES_CLASSES = ('background', 'square', 'disc', 'bar')
SHAPES_PALETTE = [[0, 0, 0], [220, 20, 60], [0, 128, 255], [255, 200, 0]]
_MEANS = np.array([[90, 90, 90], [170, 80, 80], [80, 110, 170],
                   [160, 150, 70]], dtype=np.float32)


def _draw(rng, size, ignore_border):
    h = w = size
    label = np.zeros((h, w), np.uint8)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(rng.integers(1, 4)):
        cls = int(rng.integers(1, len(SHAPES_CLASSES)))
        cy, cx = rng.integers(h // 6, h - h // 6, size=2)
        r = int(rng.integers(max(size // 10, 2), max(size // 4, 3)))
        if cls == 1:
            mask = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
        elif cls == 2:
            mask = (yy - cy)**2 + (xx - cx)**2 <= r * r
        else:
            mask = (abs(yy - cy) <= max(r // 3, 1)) & (abs(xx - cx) <= 2 * r)
        label[mask] = cls
    means = _MEANS + rng.normal(0, 12, size=_MEANS.shape)
    img = means[label] + rng.normal(0, 20, size=(h, w, 3))
    if ignore_border:
        label[:1] = 255  # a strip of ignored pixels, as real data sets have
    return np.clip(img, 0, 255).astype(np.uint8), label


def make_shapes_dataset(root, num_train=16, num_val=4, size=64, seed=0,
                        ignore_border=True):
    """Write the data set under ``root`` (skipped if already complete).

    Args:
        root (str): output folder.
        num_train (int): training images.
        num_val (int): validation images (also the test split).
        size (int): image side in pixels.
        seed (int): numpy seed; the same arguments give the same files.
        ignore_border (bool): mark the first row 255 (ignored).

    Returns:
        str: ``root``.
    """
    rng = np.random.default_rng(seed)
    for split, count in (('train', num_train), ('val', num_val)):
        img_dir = osp.join(root, 'img_dir', split)
        ann_dir = osp.join(root, 'ann_dir', split)
        done = osp.isdir(img_dir) and len(os.listdir(img_dir)) == count
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        for i in range(count):
            img, label = _draw(rng, size, ignore_border)
            if done:
                continue
            Image.fromarray(img).save(osp.join(img_dir, f'{i:04d}.png'))
            Image.fromarray(label).save(osp.join(ann_dir, f'{i:04d}.png'))
    return root
