"""Weights-only checkpoint loading that accepts numpy values (torch only).

torch 2.6 made ``torch.load(weights_only=True)`` the default. mmseg
checkpoints hold numpy values in their ``meta`` (the random PALETTE of a
data set without one, EvalHook's best score), which the weights-only
unpickler refuses. We allow exactly numpy's array/scalar reconstructors and
dtypes, and keep the weights-only loader (no arbitrary code) for everything
else. Needs torch and numpy only: the export tools use it where no mmseg is
installed, and :mod:`sar.mmseg0x.compat` registers the same list for
mmcv's loader.
"""
import torch


def numpy_safe_globals():
    """The numpy callables a pickled array or scalar needs, and no more.

    Returns:
        list: classes and functions for ``torch.serialization``'s
        ``add_safe_globals`` / ``safe_globals``.
    """
    import numpy as np
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    # numpy >= 1.25 pickles a dtype through its class (numpy.dtypes.*DType).
    dtype_classes = {type(np.dtype(code)) for code in np.typecodes['All']}
    return [np.ndarray, np.dtype, multiarray.scalar, multiarray._reconstruct,
            *sorted(dtype_classes, key=str)]


def allow_numpy_in_checkpoints():
    """Add :func:`numpy_safe_globals` to torch's process-wide allow-list.

    For loaders we do not call ourselves (mmcv's ``load_checkpoint``, which
    passes no ``weights_only``). Idempotent; a no-op on torch < 2.4, whose
    ``torch.load`` unpickles everything anyway.
    """
    serialization = torch.serialization
    if hasattr(serialization, 'add_safe_globals'):
        serialization.add_safe_globals(numpy_safe_globals())


def load_weights_only(path, map_location='cpu'):
    """``torch.load`` of tensors, plain data and numpy values, nothing else.

    The numpy allow-list applies to this call only (no global change).

    Args:
        path (str): checkpoint file.
        map_location: as for ``torch.load``.

    Returns:
        the unpickled object.

    Raises:
        pickle.UnpicklingError: the file holds other objects (or, on
            torch < 2.4, numpy values).
    """
    serialization = torch.serialization
    if not hasattr(serialization, 'safe_globals'):
        # torch < 2.4 has no allow-list: numpy values are refused there.
        return torch.load(path, map_location=map_location, weights_only=True)
    with serialization.safe_globals(numpy_safe_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)
