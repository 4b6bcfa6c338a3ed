"""Semantic Anchor Regularization (SAR) for mmsegmentation.

``import sar`` (what ``custom_imports = dict(imports=['sar'])`` runs)
registers ``SARHead``, ``SemanticAnchorLoss`` and ``DigitScenesDataset`` into
the registries of the installed mmseg generation: :mod:`sar.mmseg0x` for
mmseg 0.x, :mod:`sar.mmseg1x` for mmseg 1.x (each checks its versions and
applies its shims), and never the other. Without mmseg, the plain-torch
layers are there alone: the method (:mod:`sar.core`), data generation
(:mod:`sar.data`), evaluation (:mod:`sar.evaluation`) and checkpoint
conversion (:mod:`sar.checkpoints`). Imports run one way: a generation's
glue uses those layers, they never use a glue.
"""
import importlib.util

from . import core
from .version import __version__

__all__ = ['core', '__version__', 'mmseg_generation']


def mmseg_generation():
    """The major version of the importable mmseg (0 or 1), or None.

    Read from the module, not from package metadata: mmseg's forks install
    the same ``mmseg`` under other distribution names.
    """
    try:
        if importlib.util.find_spec('mmseg') is None:
            return None
    except (ImportError, ValueError):
        return None
    import mmseg
    return int(mmseg.__version__.split('.')[0])


_GENERATION = mmseg_generation()
if _GENERATION == 0:
    from .mmseg0x import SARHead, SemanticAnchorLoss  # noqa: E402

    __all__ += ['SARHead', 'SemanticAnchorLoss']
elif _GENERATION == 1:
    from .mmseg1x import SARHead, SemanticAnchorLoss  # noqa: E402

    __all__ += ['SARHead', 'SemanticAnchorLoss']
elif _GENERATION is not None:
    raise ImportError(
        f'sar: mmseg {_GENERATION}.x is installed; this version of sar '
        'registers its heads for mmseg 0.30 and 1.2-1.4 only '
        '(make install and make install-mmseg1 build such environments).')
