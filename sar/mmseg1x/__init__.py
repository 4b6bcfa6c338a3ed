"""The mmseg 1.x glue: all of SAR that imports mmengine, mmcv 2.x or mmseg 1.x.

Importing it checks the versions, applies the shims of :mod:`.compat` and
registers ``SARHead`` and ``SemanticAnchorLoss`` (mmseg's MODELS) and
``DigitScenesDataset`` (DATASETS). ``import sar`` does that when mmseg 1.x
is the installed generation. :mod:`.runs` holds the commands of mmseg's
own tools and their result files (for the demo).
"""
from . import compat

compat.check_versions()
compat.apply()

from .datasets import DigitScenesDataset  # noqa: E402
from .sar_head import SARHead  # noqa: E402
from .sar_loss import SemanticAnchorLoss  # noqa: E402

__all__ = ['SARHead', 'SemanticAnchorLoss', 'DigitScenesDataset']
