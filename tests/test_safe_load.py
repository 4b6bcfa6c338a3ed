"""Weights-only loading of mmengine checkpoints without mmengine
(sar.checkpoints.safe_load): logging records are read as data, and the
``getattr`` a record's pickle needs hands out nothing else. Plain torch."""
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from sar.checkpoints import safe_load
from sar.checkpoints.safe_load import (UnreadRecord, load_weights_only,
                                       record_method, record_safe_globals)

NAME = 'mmengine.logging.history_buffer'


@pytest.fixture
def fake_mmengine(monkeypatch):
    """A stand-in for mmengine's HistoryBuffer, importable by pickle under
    mmengine's name while the test writes a checkpoint."""
    class HistoryBuffer:

        def mean(self):
            return self._log_history.mean()

        def __getstate__(self):
            # mmengine's: the statistics table travels with every record.
            return dict(self.__dict__,
                        statistics_methods={'mean': HistoryBuffer.mean})

    HistoryBuffer.__module__ = NAME
    HistoryBuffer.__qualname__ = 'HistoryBuffer'
    HistoryBuffer.mean.__module__ = NAME
    HistoryBuffer.mean.__qualname__ = 'HistoryBuffer.mean'
    for parent in ('mmengine', 'mmengine.logging'):
        monkeypatch.setitem(sys.modules, parent, types.ModuleType(parent))
    module = types.ModuleType(NAME)
    module.HistoryBuffer = HistoryBuffer
    monkeypatch.setitem(sys.modules, NAME, module)
    return HistoryBuffer


def mmengine_checkpoint(path, HistoryBuffer):
    record = HistoryBuffer()
    record._log_history = np.array([0.5, 0.25])
    torch.save(dict(state_dict=dict(w=torch.ones(2)),
                    message_hub=dict(log_scalars={'train/loss': record})),
               path)


@pytest.mark.skipif(not safe_load.named_entries_supported(),
                    reason='torch < 2.6 refuses records weights-only')
def test_mmengine_records_load_as_data_without_mmengine(
        tmp_path, fake_mmengine, monkeypatch):
    path = str(tmp_path / 'ckpt.pth')
    mmengine_checkpoint(path, fake_mmengine)
    for name in ('mmengine', 'mmengine.logging', NAME):
        monkeypatch.delitem(sys.modules, name)  # as without mmengine
    ckpt = load_weights_only(path)
    assert torch.equal(ckpt['state_dict']['w'], torch.ones(2))
    record = ckpt['message_hub']['log_scalars']['train/loss']
    assert isinstance(record, UnreadRecord)
    assert record.state['_log_history'].tolist() == [0.5, 0.25]
    # The statistics method is named, not handed out: nothing to call.
    assert record.state['statistics_methods'] == {
        'mean': f'{NAME}.HistoryBuffer.mean'}


def test_record_method_hands_out_only_public_methods_of_records():
    assert record_method(UnreadRecord, 'mean') == f'{NAME}.HistoryBuffer.mean'
    for owner, name in ((UnreadRecord, '__init__'), (UnreadRecord, '_x'),
                        (object, 'mean'), (torch, 'load'), (UnreadRecord, 1)):
        with pytest.raises(pickle.UnpicklingError, match='only public'):
            record_method(owner, name)


def test_a_checkpoint_cannot_reach_other_callables_through_getattr(
        tmp_path):
    # getattr(subprocess.Popen, 'wait') in the pickle: refused.
    import subprocess

    class Evil:
        def __reduce__(self):
            return getattr, (subprocess.Popen, 'wait')

    path = str(tmp_path / 'evil.pth')
    torch.save(dict(x=Evil()), path)
    with pytest.raises(pickle.UnpicklingError):
        load_weights_only(path)


def test_records_left_out_where_torch_takes_no_named_entries(monkeypatch):
    # torch 2.4/2.5 fail on an (object, name) entry at every load.
    monkeypatch.setattr(torch, '__version__', '2.5.1')
    assert record_safe_globals() == []
    monkeypatch.setattr(torch, '__version__', '2.6.0+cpu')
    assert [name for _, name in record_safe_globals()] == [
        f'{NAME}.HistoryBuffer', 'builtins.getattr']
