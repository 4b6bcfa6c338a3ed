"""The mmseg 0.x glue: all of SAR that imports mmcv-full 1.x or mmseg 0.x.

Importing it checks the versions, applies the torch 2.x shims of
:mod:`.compat` and registers ``SARHead`` (HEADS), ``SemanticAnchorLoss``
(LOSSES) and ``DigitScenesDataset`` (DATASETS). ``import sar`` does that
when mmseg 0.x is the installed generation. :mod:`.runtime` holds what the
tools need from the runner, :mod:`.runs` the tools' commands and result
files (for the demo), :mod:`.features` the feature collection from a 0.x
data loader.
"""
from . import compat

compat.check_versions()
compat.apply()

from .datasets import DigitScenesDataset  # noqa: E402
from .sar_head import SARHead  # noqa: E402
from .sar_loss import SemanticAnchorLoss  # noqa: E402

__all__ = ['SARHead', 'SemanticAnchorLoss', 'DigitScenesDataset']
