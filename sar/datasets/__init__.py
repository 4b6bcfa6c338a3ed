from .synthetic import SHAPES_CLASSES, SHAPES_PALETTE, make_shapes_dataset

__all__ = ['make_shapes_dataset', 'SHAPES_CLASSES', 'SHAPES_PALETTE']
