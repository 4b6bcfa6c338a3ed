"""The 1.x glue's checkpoint shim: mmengine's message-hub records load
weights-only, and a record cannot rebind mmengine's logging statistics."""
import pickle

import pytest
import torch
from mmengine.logging import HistoryBuffer


def save_record(path):
    record = HistoryBuffer()
    record.update(0.5)
    record.update(0.25)
    torch.save(dict(message_hub=dict(log_scalars={'loss': record})), path)


def test_runner_records_load_weights_only(tmp_path):
    path = str(tmp_path / 'hub.pth')
    save_record(path)
    ckpt = torch.load(path, weights_only=True)
    record = ckpt['message_hub']['log_scalars']['loss']
    assert type(record) is HistoryBuffer  # pickles again (the next save)
    assert record.mean() == pytest.approx(0.375)
    again = str(tmp_path / 'again.pth')
    torch.save(ckpt, again)
    assert torch.load(again, weights_only=True)['message_hub'][
        'log_scalars']['loss'].mean() == pytest.approx(0.375)


def test_a_record_cannot_rebind_a_statistic(tmp_path, monkeypatch):
    path = str(tmp_path / 'forged.pth')
    with monkeypatch.context() as m:  # a checkpoint whose 'mean' is max
        m.setitem(HistoryBuffer._statistics_methods, 'mean',
                  HistoryBuffer.max)
        save_record(path)
    assert HistoryBuffer._statistics_methods['mean'] is HistoryBuffer.mean
    with pytest.raises(pickle.UnpicklingError, match="'mean'"):
        torch.load(path, weights_only=True)
    assert HistoryBuffer._statistics_methods['mean'] is HistoryBuffer.mean
