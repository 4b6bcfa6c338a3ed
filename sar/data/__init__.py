"""Generated data sets: the tiny shapes set for smoke runs, DigitScenes-LT,
and blocks in ADE20K's layout for the GPU check.

numpy and Pillow only (DigitScenes-LT also reads scikit-learn's digits,
imported when called); nothing here imports mmcv or mmseg. Each mmseg
generation's glue registers the dataset class that reads them.
"""
from .ade_like import ADE_NUM_CLASSES, make_ade_like
from .digitscenes import (DIGITSCENES_CLASSES, DIGITSCENES_PALETTE,
                          head_tail_classes, load_glyphs, longtail_counts,
                          make_digitscenes, render_scene, split_glyphs,
                          texture)
from .shapes import SHAPES_CLASSES, SHAPES_PALETTE, make_shapes_dataset

__all__ = [
    'make_shapes_dataset', 'SHAPES_CLASSES', 'SHAPES_PALETTE',
    'make_digitscenes', 'DIGITSCENES_CLASSES', 'DIGITSCENES_PALETTE',
    'load_glyphs', 'split_glyphs', 'longtail_counts', 'texture',
    'render_scene', 'head_tail_classes', 'make_ade_like', 'ADE_NUM_CLASSES'
]
