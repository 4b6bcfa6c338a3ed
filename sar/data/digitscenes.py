"""DigitScenes-LT: scenes of real handwritten digits, long-tailed in training.

Every scene is an RGB image with a few digits at random scales and positions
on a procedurally textured background; the label map has background (0) and
one class per digit (digit d is class d + 1). The glyphs are the 1,797 real
8x8 handwritten digits bundled with scikit-learn (``load_digits``, no
download); the training and validation scenes draw from disjoint glyphs.
Digit colours come from the same range as the background colours, so colour
alone does not segment: a model has to see shapes.

Training instance counts follow an exponential profile over the digits,
``n_d proportional to ratio ** (-d / 9)``: digit 0 is the most frequent,
digit 9 the least, ``n_0 / n_9`` is about ``imbalance_ratio``. Validation is
balanced (equal instance counts per digit), so the tail classes are measured
as precisely as the head classes.

Written in mmseg's CustomDataset layout (``img_dir/{split}/*.png``,
``ann_dir/{split}/*.png``) plus ``meta.json`` (the arguments, the glyph
indices each split used, per-class instance and pixel counts); the
``DigitScenesDataset`` class each mmseg glue registers carries the
class names and palette. Needs numpy, Pillow and (to read the glyphs)
scikit-learn, which is imported lazily: it is a demo extra, not a runtime
requirement of ``sar``.

Shape shorthand: S the scene side in pixels, K = 10 digit classes,
N the number of glyphs.
"""
import json
import os
import os.path as osp

import numpy as np
from PIL import Image

NUM_DIGITS = 10
# Bumped whenever the same arguments would draw different scenes, so that
# make_digitscenes rewrites data written by an older version.
FORMAT_VERSION = 2
DIGITSCENES_CLASSES = ('background', ) + tuple(str(d) for d in range(10))
DIGITSCENES_PALETTE = [[0, 0, 0], [31, 119, 180], [255, 127, 14],
                       [44, 160, 44], [214, 39, 40], [148, 103, 189],
                       [140, 86, 75], [227, 119, 194], [127, 127, 127],
                       [188, 189, 34], [23, 190, 207]]


def load_glyphs():
    """The real handwritten digits bundled with scikit-learn.

    Returns:
        tuple: glyphs (N, 8, 8) float32 ink in [0, 1] (0 blank, 1 full ink),
        digits (N,) int64 in [0, 9]. N = 1,797.
    """
    from sklearn.datasets import load_digits  # demo extra, imported lazily
    bunch = load_digits()
    glyphs = bunch.images.astype(np.float32) / 16.0  # the set's ink scale
    return glyphs, bunch.target.astype(np.int64)


def split_glyphs(digits, val_per_class=50, seed=0):
    """Disjoint training and validation glyphs, the same number per digit
    in validation.

    Args:
        digits (ndarray): digit of every glyph.
        val_per_class (int): validation glyphs per digit; the rest train.
        seed (int or np.random.SeedSequence): seed of the shuffle.

    Shape:
        digits (N,) -> two lists of K sorted int64 index arrays (train, val).
    """
    rng = np.random.default_rng(seed)
    train, val = [], []
    for d in range(NUM_DIGITS):
        idx = rng.permutation(np.flatnonzero(digits == d))
        if len(idx) <= val_per_class:
            raise ValueError(f'digit {d} has {len(idx)} glyphs, not more '
                             f'than val_per_class={val_per_class}')
        val.append(np.sort(idx[:val_per_class]))
        train.append(np.sort(idx[val_per_class:]))
    return train, val


def longtail_counts(total, imbalance_ratio=50.0, num_classes=NUM_DIGITS):
    """Instances per class on an exponential profile, summing to ``total``.

    ``n_k`` is proportional to ``imbalance_ratio ** (-k / (num_classes - 1))``
    (class 0 the most frequent), rounded by largest remainder so the sum is
    exact. ``imbalance_ratio=1`` gives a balanced split.

    Shape:
        returns (num_classes,) int64, non-increasing.
    """
    if imbalance_ratio < 1:
        raise ValueError(f'imbalance_ratio must be >= 1, got '
                         f'{imbalance_ratio}')
    k = np.arange(num_classes)
    share = float(imbalance_ratio)**(-k / max(num_classes - 1, 1))
    exact = total * share / share.sum()
    counts = np.floor(exact).astype(np.int64)
    # Largest remainders first; ties go to the more frequent class, which
    # keeps the counts non-increasing.
    order = np.lexsort((k, -(exact - counts)))
    counts[order[:total - counts.sum()]] += 1
    return counts


def _resize(field, height, width):
    """Bilinear resize of a float field (h, w) to (height, width)."""
    img = Image.fromarray(np.ascontiguousarray(field, np.float32), mode='F')
    return np.asarray(img.resize((width, height), Image.BILINEAR))


def texture(rng, size, num_waves=3, max_cycles=4.0, blob_grid=4):
    """A procedural texture: oriented sine gratings plus smooth blobs.

    Args:
        rng (np.random.Generator): source of randomness.
        size (int): S.
        num_waves (int): gratings summed.
        max_cycles (float): highest grating frequency, cycles per image side.
        blob_grid (int): side of the random grid upsampled into blobs.

    Shape:
        returns (S, S) float32 in [0, 1].
    """
    yy, xx = np.mgrid[:size, :size].astype(np.float32) / size
    field = np.zeros((size, size), np.float32)
    for _ in range(num_waves):
        theta = rng.uniform(0, np.pi)
        cycles = rng.uniform(1.0, max_cycles)
        phase = rng.uniform(0, 2 * np.pi)
        field += rng.uniform(0.3, 1.0) * np.sin(
            2 * np.pi * cycles * (xx * np.cos(theta) + yy * np.sin(theta)) +
            phase)
    blobs = rng.uniform(-1, 1, (blob_grid, blob_grid)).astype(np.float32)
    field += 1.5 * _resize(blobs, size, size)
    field -= field.min()
    return field / max(float(field.max()), 1e-6)


def _segment_distance(point, a, b):
    """Euclidean distance of an RGB point to the segment a-b (all (3,))."""
    ab = b - a
    t = np.clip(np.dot(point - a, ab) / max(np.dot(ab, ab), 1e-6), 0, 1)
    return float(np.linalg.norm(point - (a + t * ab)))


def render_scene(rng, size, glyphs, min_scale=18, max_scale=28,
                 min_contrast=120.0, texture_contrast=40.0, noise=6.0):
    """One scene: textured background, glyphs pasted at random places.

    The background blends, through a :func:`texture`, a colour drawn
    uniformly from RGB with a second one near it (per-channel Gaussian
    offset of std ``texture_contrast``); every digit's colour is drawn
    uniformly from RGB too and redrawn until it is ``min_contrast`` away
    (RGB distance) from every blend of the two background colours. Any
    colour can be background in one scene and digit in another. A glyph is
    resized to a random height in [min_scale, max_scale] pixels (width
    0.8-1.1 times that) and placed without overlapping earlier digits where
    100 tries allow (later digits cover earlier ones otherwise). A pixel
    belongs to a digit where its resized ink is at least 0.5; ink also sets
    the colour blend, so edges are anti-aliased.

    Args:
        rng (np.random.Generator): source of randomness.
        size (int): S.
        glyphs (list): (digit, ink) pairs; ink (8, 8) float in [0, 1].
        min_scale, max_scale (int): glyph height range in pixels.
        min_contrast (float): RGB distance, in 0-255 units.
        texture_contrast (float): spread of the background's second colour
            around its first, 0-255 units.
        noise (float): std of the Gaussian pixel noise, 0-255 units.

    Shape:
        returns img (S, S, 3) uint8 RGB and label (S, S) uint8 in
        [0, K] (0 background, digit d is d + 1).
    """
    first = rng.uniform(0, 255, 3)
    second = np.clip(first + rng.normal(0, texture_contrast, 3), 0, 255)
    colours = np.stack([first, second]).astype(np.float32)
    t = texture(rng, size)[..., None]
    img = colours[0] * (1 - t) + colours[1] * t
    label = np.zeros((size, size), np.uint8)
    boxes = []
    for digit, ink in glyphs:
        h = int(rng.integers(min_scale, max_scale + 1))
        w = max(int(round(h * rng.uniform(0.8, 1.1))), 4)
        for _ in range(100):
            y, x = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
            if all(y + h <= by or by + bh <= y or x + w <= bx or bx + bw <= x
                   for by, bx, bh, bw in boxes):
                break
        boxes.append((y, x, h, w))
        while True:
            colour = rng.uniform(0, 255, 3).astype(np.float32)
            if _segment_distance(colour, *colours) >= min_contrast:
                break
        alpha = np.clip(_resize(ink, h, w), 0, 1)[..., None]
        patch = img[y:y + h, x:x + w]
        img[y:y + h, x:x + w] = patch * (1 - alpha) + colour * alpha
        label[y:y + h, x:x + w][alpha[..., 0] >= 0.5] = digit + 1
    img = img + rng.normal(0, noise, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8), label


def _write_split(root, split, counts, pools, glyphs, num_scenes,
                 digits_per_scene, size, rng):
    """Render and save one split; returns its statistics for meta.json."""
    img_dir = osp.join(root, 'img_dir', split)
    ann_dir = osp.join(root, 'ann_dir', split)
    for folder in (img_dir, ann_dir):
        os.makedirs(folder, exist_ok=True)
        for stale in os.listdir(folder):  # from a run with other arguments
            if stale.endswith('.png'):
                os.remove(osp.join(folder, stale))
    # Every instance's digit fixed up front, then shuffled into scenes:
    # the split's instance counts are exactly ``counts``.
    digits = rng.permutation(np.repeat(np.arange(NUM_DIGITS), counts))
    digits = digits.reshape(num_scenes, digits_per_scene)
    pixels = np.zeros(NUM_DIGITS + 1, np.int64)
    used = set()
    for i, scene_digits in enumerate(digits):
        chosen = []
        for d in scene_digits:
            g = int(rng.choice(pools[d]))
            used.add(g)
            chosen.append((int(d), glyphs[g]))
        img, label = render_scene(rng, size, chosen)
        pixels += np.bincount(label.ravel(), minlength=NUM_DIGITS + 1)
        name = f'{i:05d}.png'
        Image.fromarray(img).save(osp.join(img_dir, name))
        Image.fromarray(label).save(osp.join(ann_dir, name))
    return dict(num_scenes=int(num_scenes),
                instances=[int(c) for c in counts],
                pixels=[int(p) for p in pixels],
                glyph_indices=sorted(used))


def make_digitscenes(root, num_train=2000, num_val=200, size=64,
                     digits_per_scene=3, imbalance_ratio=50.0,
                     val_per_class=50, seed=0):
    """Write DigitScenes-LT under ``root``; skipped if it is already there
    with the same arguments.

    Args:
        root (str): output folder.
        num_train (int): training scenes (long-tailed instance counts).
        num_val (int): validation scenes (balanced; also the test split).
        size (int): S, scene side in pixels.
        digits_per_scene (int): digits pasted into every scene.
        imbalance_ratio (float): train instances of the most frequent digit
            over those of the least frequent one (up to rounding).
        val_per_class (int): glyphs per digit reserved for validation.
        seed (int): numpy seed; the same arguments give the same bytes.

    Returns:
        dict: the contents of ``root/meta.json``: ``args``, and per split
        ``num_scenes``, ``instances`` (K,) per digit, ``pixels`` (K + 1,)
        per class (background first) and ``glyph_indices`` (indices into
        ``load_digits()`` that the split used).
    """
    args = dict(format_version=FORMAT_VERSION, num_train=num_train,
                num_val=num_val, size=size,
                digits_per_scene=digits_per_scene,
                imbalance_ratio=float(imbalance_ratio),
                val_per_class=val_per_class, seed=seed)
    meta_file = osp.join(root, 'meta.json')
    if osp.isfile(meta_file):
        with open(meta_file) as f:
            meta = json.load(f)
        if meta['args'] == args and all(
                len(os.listdir(osp.join(root, kind, split))) ==
                meta[split]['num_scenes'] for kind in ('img_dir', 'ann_dir')
                for split in ('train', 'val')):
            return meta
    glyphs, digits = load_glyphs()
    # Independent streams: the val scenes do not change with num_train.
    split_seed, train_seed, val_seed = np.random.SeedSequence(seed).spawn(3)
    train_pools, val_pools = split_glyphs(
        digits, val_per_class, seed=split_seed)
    meta = dict(args=args)
    for split, num, ratio, pools, ss in (
            ('train', num_train, imbalance_ratio, train_pools, train_seed),
            ('val', num_val, 1.0, val_pools, val_seed)):
        counts = longtail_counts(num * digits_per_scene, ratio)
        meta[split] = _write_split(root, split, counts, pools, glyphs, num,
                                   digits_per_scene, size,
                                   np.random.default_rng(ss))
    with open(meta_file, 'w') as f:
        json.dump(meta, f)
    return meta


def head_tail_classes(instances):
    """Head and tail digit classes of a training split by instance count.

    The more frequent half of the digits is the head, the rest the tail.

    Args:
        instances (list): training instances per digit, (K,).

    Returns:
        tuple: two lists of class names (as in ``DIGITSCENES_CLASSES``).
    """
    order = sorted(range(len(instances)), key=lambda d: (-instances[d], d))
    half = len(order) // 2
    return ([str(d) for d in sorted(order[:half])],
            [str(d) for d in sorted(order[half:])])
