"""Generated data in ADE20K's folder layout (numpy and Pillow only).

For runs that need the paper's ADE20K config without the data set: the
150-class label space, ``images/{training,validation}/*.jpg`` and
``annotations/{training,validation}/*.png`` with ADE20K's value 0
("other") that mmseg's ``reduce_zero_label`` ignores. The content is
blocks of a few classes, each with its own colour plus noise, so that a
model can learn them. Shape shorthand: S the image side in pixels.
"""
import os
import os.path as osp

import numpy as np
from PIL import Image

ADE_NUM_CLASSES = 150


def make_ade_like(root, num_train, num_val, size, seed=0):
    """ADE20K's folder layout with generated content.

    Label maps of 8x8 blocks, each block one of 24 classes drawn from the
    150 (value 0, "other", is ignored after mmseg's reduce_zero_label), and
    images whose blocks have their class's colour plus noise, so that the
    classes can be told apart and the gate of SAR can open.

    Args:
        root (str): folder to write (made if absent).
        num_train, num_val (int): images per split.
        size (int): S; images are (S, S, 3) uint8, labels (S, S) uint8.
        seed (int): numpy seed of the content.

    Returns:
        dict: ``root``, ``present_classes`` (the 24 values in [1, 150]),
        ``train``, ``val``, ``size``.
    """
    rng = np.random.default_rng(seed)
    present = rng.choice(np.arange(1, ADE_NUM_CLASSES + 1), 24, replace=False)
    colours = rng.uniform(30, 225, size=(ADE_NUM_CLASSES + 1, 3))
    block = max(size // 8, 1)
    for split, count in (('training', num_train), ('validation', num_val)):
        img_dir = osp.join(root, 'images', split)
        ann_dir = osp.join(root, 'annotations', split)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        for i in range(count):
            cells = rng.choice(present, size=(8, 8))
            cells[rng.random((8, 8)) < 0.05] = 0
            label = np.kron(cells, np.ones((block, block), np.int64))
            label = label[:size, :size].astype(np.uint8)
            img = colours[label] + rng.normal(0, 15, size=label.shape + (3, ))
            img = np.clip(img, 0, 255).astype(np.uint8)
            Image.fromarray(img).save(osp.join(img_dir, f'{i:04d}.jpg'),
                                      quality=95)
            Image.fromarray(label).save(osp.join(ann_dir, f'{i:04d}.png'))
    return dict(root=root, present_classes=sorted(int(c) for c in present),
                train=num_train, val=num_val, size=size)
