"""Semantic Anchor Regularization (SAR) for mmsegmentation.

``import sar`` registers ``SARHead`` and ``SemanticAnchorLoss`` into mmseg's
registries (configs: ``custom_imports = dict(imports=['sar'])``) and applies
the torch 2.x compatibility shims of :mod:`sar.compat`. Without mmseg
installed only the plain-torch core, :mod:`sar.core`, is available.
"""
import importlib.util

from . import core
from .version import __version__

__all__ = ['core', '__version__']



def _mmseg_installed():
    try:
        return importlib.util.find_spec('mmseg') is not None
    except (ImportError, ValueError):
        return False


if _mmseg_installed():
    from . import compat

    compat.check_versions()
    compat.apply()
    from .models import SARHead, SemanticAnchorLoss  # noqa: E402,F401
    from . import datasets  # noqa: E402,F401  registers DigitScenesDataset

    __all__ += ['SARHead', 'SemanticAnchorLoss']
