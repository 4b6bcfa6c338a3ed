"""Weights-only checkpoint loading that accepts numpy values (torch only).

torch 2.6 made ``torch.load(weights_only=True)`` the default. mmseg
checkpoints hold numpy values in their ``meta`` (the random PALETTE of a
data set without one, EvalHook's best score), which the weights-only
unpickler refuses. We allow exactly numpy's array/scalar reconstructors and
dtypes, and keep the weights-only loader (no arbitrary code) for everything
else. Needs torch and numpy only: the export tools use it where no mmseg is
installed, and :mod:`sar.mmseg0x.compat` registers the same list for
mmcv's loader.

mmengine's checkpoints (mmseg 1.x) add a ``message_hub`` of logging records
(``HistoryBuffer``) that pickle numpy arrays and references to their own
statistics methods, which protocol 2 writes as ``getattr(HistoryBuffer,
'mean')``. Without mmengine (the export tools) a record is read into
:class:`UnreadRecord`; :mod:`sar.mmseg1x.compat` registers mmengine's own
class. Either way ``getattr`` is allowed only as
:func:`record_method`, which hands out public functions of those record
classes and nothing else.
"""
import inspect
import pickle

import torch

from ..version import version_tuple

MMENGINE_HISTORY_BUFFER = 'mmengine.logging.history_buffer.HistoryBuffer'


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


class UnreadRecord:
    """A logging record of a checkpoint, read without its framework.

    Stands in for mmengine's ``HistoryBuffer`` where mmengine is not
    imported; keeps the pickled state (a dict of numpy arrays and names)
    and runs nothing.
    """

    def __setstate__(self, state):
        self.state = state


# Classes whose methods a checkpoint may name through ``getattr``.
_RECORD_CLASSES = {UnreadRecord}


def record_method(owner, name):
    """``getattr`` for the weights-only unpickler, limited to records.

    Args:
        owner (type): a record class (:class:`UnreadRecord` or a class
            registered by :func:`record_safe_globals`).
        name (str): a public method of it.

    Returns:
        the function; for :class:`UnreadRecord` its name, since there is
        nothing to call.

    Raises:
        pickle.UnpicklingError: anything else.
    """
    if owner in _RECORD_CLASSES and isinstance(name, str) and \
            not name.startswith('_'):
        if owner is UnreadRecord:
            return f'{MMENGINE_HISTORY_BUFFER}.{name}'
        value = inspect.getattr_static(owner, name, None)
        if inspect.isfunction(value):
            return value
    raise pickle.UnpicklingError(
        f'checkpoint asks for getattr({owner!r}, {name!r}); only public '
        'methods of logging records (mmengine HistoryBuffer) are allowed')


def record_safe_globals(history_buffer=None):
    """mmengine's logging records for the weights-only unpickler.

    Args:
        history_buffer (type, optional): mmengine's ``HistoryBuffer`` (the
            1.x glue passes it); by default :class:`UnreadRecord` stands in
            under its name.

    Returns:
        list: entries for ``torch.serialization``'s ``add_safe_globals`` /
        ``safe_globals``; empty on torch < 2.6
        (:func:`named_entries_supported`).
    """
    if not named_entries_supported():
        return []
    record = history_buffer or UnreadRecord
    _RECORD_CLASSES.add(record)
    return [(record, MMENGINE_HISTORY_BUFFER),
            (record_method, 'builtins.getattr')]


def named_entries_supported():
    """Whether torch's allow-list takes ``(object, name)`` entries (torch
    2.6 added them; 2.4 and 2.5 fail on one at every weights-only load).
    Below 2.6, records are left out: mmengine's loaders do not load
    weights-only there, and :func:`load_weights_only` refuses records."""
    return version_tuple(torch.__version__) >= (2, 6)


def _global_name(entry):
    if isinstance(entry, tuple):
        return entry[1]
    return f'{entry.__module__}.{entry.__qualname__}'


def _not_yet_allowed(entries):
    """The entries whose names torch's process-wide allow-list lacks.

    ``safe_globals`` removes on exit what it added, also entries that were
    registered before (a set difference): only the missing ones may be
    added for one call. A name registered already (by a glue, with the
    framework's own class) keeps its registration.
    """
    known = {_global_name(e) for e in torch.serialization.get_safe_globals()}
    return [e for e in entries if _global_name(e) not in known]


def allow_numpy_in_checkpoints():
    """Add :func:`numpy_safe_globals` to torch's process-wide allow-list.

    For loaders we do not call ourselves (mmcv's ``load_checkpoint``, which
    passes no ``weights_only``). Idempotent; a no-op on torch < 2.4, whose
    ``torch.load`` unpickles everything anyway.
    """
    serialization = torch.serialization
    if hasattr(serialization, 'add_safe_globals'):
        serialization.add_safe_globals(numpy_safe_globals())


def allow_records_in_checkpoints(history_buffer):
    """Add numpy values and mmengine's records to torch's allow-list.

    For mmengine's loaders (resume, ``load_from``), which pass no
    ``weights_only``. Idempotent; a no-op on torch < 2.4.

    Args:
        history_buffer (type): mmengine's ``HistoryBuffer``.
    """
    serialization = torch.serialization
    if hasattr(serialization, 'add_safe_globals'):
        serialization.add_safe_globals(numpy_safe_globals() +
                                       record_safe_globals(history_buffer))


def load_weights_only(path, map_location='cpu'):
    """``torch.load`` of tensors, plain data, numpy values and logging
    records (mmengine's message hub), nothing else.

    The allow-list applies to this call only (no global change; entries
    registered before stay registered).

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
    extra = _not_yet_allowed(numpy_safe_globals() + record_safe_globals())
    with serialization.safe_globals(extra):
        return torch.load(path, map_location=map_location, weights_only=True)
