"""A split written in mmseg's layout, read back as arrays (numpy, Pillow).

For the demos that train outside mmseg (sar.transformers, sar.smp): the
same files mmseg's dataset classes read, ``img_dir/{split}/*.png`` and
``ann_dir/{split}/*.png``, in name order.

Shape shorthand: N images, S x S pixels.
"""
import os
import os.path as osp

import numpy as np
from PIL import Image


def read_split(root, split):
    """Images and label maps of one split.

    Args:
        root (str): the data set's folder (e.g. ``make_digitscenes``'s).
        split (str): 'train' or 'val'.

    Returns:
        tuple: images (N, S, S, 3) uint8, labels (N, S, S) uint8.
    """
    img_dir = osp.join(root, 'img_dir', split)
    names = sorted(n for n in os.listdir(img_dir) if n.endswith('.png'))
    if not names:
        raise FileNotFoundError(f'no PNG images in {img_dir}')
    images = np.stack([np.asarray(Image.open(osp.join(img_dir, n))
                                  .convert('RGB')) for n in names])
    labels = np.stack([np.asarray(Image.open(
        osp.join(root, 'ann_dir', split, n))) for n in names])
    return images, labels
