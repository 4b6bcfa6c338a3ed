"""``DigitScenesDataset``: DigitScenes-LT in mmseg 1.x's DATASETS."""
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from ..data.digitscenes import DIGITSCENES_CLASSES, DIGITSCENES_PALETTE


@DATASETS.register_module()
class DigitScenesDataset(BaseSegDataset):
    """Scenes of handwritten digits written by
    :func:`sar.data.make_digitscenes` (``tools/prepare_digitscenes.py``).

    Class 0 is background, class d + 1 the digit d; PNG images and label
    maps, nothing ignored but what a pipeline pads with 255. The same
    classes and palette as the 0.x glue's data set.
    """
    METAINFO = dict(classes=DIGITSCENES_CLASSES, palette=DIGITSCENES_PALETTE)

    def __init__(self, **kwargs):
        super().__init__(img_suffix='.png', seg_map_suffix='.png',
                         reduce_zero_label=False, **kwargs)
