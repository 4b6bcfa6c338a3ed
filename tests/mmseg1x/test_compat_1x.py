"""The 1.x glue's checkpoint shim: mmengine's message-hub records load
weights-only, and a record cannot rebind mmengine's logging statistics,
neither through its statistics table nor through other attributes."""
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


def test_records_load_after_another_safe_globals_context(tmp_path):
    # A torch.serialization.safe_globals context (transformers' Trainer
    # resume lists numpy's entries; other loaders list records too) removes
    # what it listed when it exits, ours included. mmengine's loader must
    # still read its own checkpoints afterwards.
    from mmengine.runner import CheckpointLoader

    from sar.checkpoints.safe_load import (numpy_safe_globals,
                                           record_safe_globals)
    from sar.mmseg1x.compat import checked_history_buffer
    path = str(tmp_path / 'hub.pth')
    save_record(path)
    listed = numpy_safe_globals() + record_safe_globals(
        checked_history_buffer())
    try:
        with torch.serialization.safe_globals(listed):
            pass
        assert not set(listed) & set(torch.serialization.get_safe_globals())
        ckpt = CheckpointLoader.load_checkpoint(path, map_location='cpu')
        assert ckpt['message_hub']['log_scalars']['loss'].mean() == \
            pytest.approx(0.375)
    finally:  # for the tests after this one, whatever happened
        torch.serialization.add_safe_globals(listed)


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


def test_mmengine_loaders_refuse_a_forged_record_without_a_retry(
        tmp_path, monkeypatch):
    # onedl-mmengine's loader retried a refused file with
    # weights_only=False, which unpickled the forged record unchecked.
    from mmengine.runner import CheckpointLoader
    path = str(tmp_path / 'forged.pth')
    with monkeypatch.context() as m:
        m.setitem(HistoryBuffer._statistics_methods, 'mean',
                  HistoryBuffer.max)
        save_record(path)
    modes, load = [], torch.load

    def recorded_load(*args, **kwargs):
        modes.append(kwargs.get('weights_only'))
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, 'load', recorded_load)
    with pytest.raises(pickle.UnpicklingError, match="'mean'"):
        CheckpointLoader.load_checkpoint(path, map_location='cpu')
    assert modes and False not in modes, modes
    # (the table fills on first use: absent or true, never the forged one)
    assert HistoryBuffer._statistics_methods.get(
        'mean', HistoryBuffer.mean) is HistoryBuffer.mean


def test_a_loader_of_the_onedl_kind_is_replaced(tmp_path, monkeypatch):
    from mmengine.runner import checkpoint

    from sar.mmseg1x import compat

    def retrying_load(file, map_location=None, weights_only=None):
        return torch.load(file, map_location=map_location, weights_only=False)

    monkeypatch.setattr(checkpoint, '_safe_torch_load', retrying_load,
                        raising=False)
    compat.apply()
    assert checkpoint._safe_torch_load is compat.weights_only_load
    path = str(tmp_path / 'hub.pth')
    save_record(path)
    ckpt = checkpoint._safe_torch_load(path, map_location='cpu')
    assert ckpt['message_hub']['log_scalars']['loss'].mean() == \
        pytest.approx(0.375)
    torch.save(dict(model=torch.nn.Linear(1, 1)), path)  # not weights
    with pytest.raises(pickle.UnpicklingError):
        checkpoint._safe_torch_load(path)
    # A caller's explicit choice stays theirs.
    assert isinstance(checkpoint._safe_torch_load(
        path, weights_only=False)['model'], torch.nn.Linear)


def test_below_torch_2_6_the_replaced_loader_loads_as_mmengine_did(
        monkeypatch):
    # torch 2.4 and 2.5 take no named allow-list entries: records could not
    # load weights-only there.
    from sar.mmseg1x import compat
    calls = []
    monkeypatch.setattr(compat, 'named_entries_supported', lambda: False)
    monkeypatch.setattr(torch, 'load',
                        lambda *args, **kwargs: calls.append(kwargs))
    compat.weights_only_load('ckpt.pth', map_location='cpu')
    assert calls == [dict(map_location='cpu')]


def test_the_mmseg_scope_maps_to_the_installed_distribution(monkeypatch):
    # OneDL installs the module mmseg as 'onedl-mmsegmentation', and
    # onedl-mmengine's table names 'mmsegmentation': `mmseg::` configs
    # failed to inherit.
    from importlib import metadata

    from mmengine.config import Config, utils

    from sar.mmseg1x import compat
    provider = metadata.packages_distributions()['mmseg'][0]
    monkeypatch.setitem(utils.MODULE2PACKAGE, 'mmseg', 'no-such-dist')
    compat.apply()
    assert utils.MODULE2PACKAGE['mmseg'] == provider
    assert Config.fromstring(
        "_base_ = ['mmseg::_base_/default_runtime.py']", '.py'
    ).default_scope == 'mmseg'
    # A table that names an installed distribution is left alone.
    monkeypatch.setitem(utils.MODULE2PACKAGE, 'mmseg', provider)
    compat.apply()
    assert utils.MODULE2PACKAGE['mmseg'] == provider


def save_forged_record(path, monkeypatch, **extra):
    """A record whose pickled state carries ``extra`` entries besides its
    data and the (true) statistics table: what a forged checkpoint holds."""
    record = HistoryBuffer()
    for value in (1.0, 9.0, 2.0):
        record.update(value)

    def forged_state(self):
        return dict(self.__dict__,
                    statistics_methods=dict(HistoryBuffer._statistics_methods),
                    **extra)

    with monkeypatch.context() as m:
        m.setattr(HistoryBuffer, '__getstate__', forged_state)
        torch.save(dict(message_hub=dict(log_scalars={'loss': record})),
                   path)
    assert record.statistics('mean') == pytest.approx(4.0)


@pytest.mark.parametrize('extra,named', [
    # An instance table shadows the class's: statistics('mean') read max
    # (9.0 where the mean is 4.0) before the state's keys were checked.
    (dict(_statistics_methods={'mean': HistoryBuffer.max}),
     '_statistics_methods'),
    (dict(mean=HistoryBuffer.max), 'mean'),
])
def test_a_record_cannot_shadow_the_statistics_through_other_attributes(
        tmp_path, monkeypatch, extra, named):
    path = str(tmp_path / 'forged.pth')
    save_forged_record(path, monkeypatch, **extra)
    with pytest.raises(pickle.UnpicklingError, match=f"'{named}'"):
        torch.load(path, weights_only=True)
    assert HistoryBuffer._statistics_methods['mean'] is HistoryBuffer.mean


def test_a_record_with_data_of_the_wrong_type_is_refused(tmp_path):
    path = str(tmp_path / 'forged.pth')
    record = HistoryBuffer()
    record.update(1.0)
    record.max_length = 'all'
    torch.save(dict(message_hub=dict(log_scalars={'loss': record})), path)
    with pytest.raises(pickle.UnpicklingError, match="sets max_length to 'all'"):
        torch.load(path, weights_only=True)


def logged_after(values, interval, **log_processor):
    """What mmengine's LogProcessor logs for ``values`` of SAR's gate, one
    per training iteration, at the last of them, with a LoggerHook of
    ``interval``: (the logged dict, the demo report's gate summary)."""
    from types import SimpleNamespace

    from mmengine.hooks import LoggerHook
    from mmengine.logging import MessageHub
    from mmengine.runner import LogProcessor

    from sar.evaluation.report import gate_summary
    hub = MessageHub.get_instance(f'gate_log_{len(values)}_{interval}')
    for i, value in enumerate(values):
        hub.update_scalars({'train/decode.sar.gate_open': value,
                            'train/decode.sar.iters_since_init': i,
                            'train/decode.loss_sar_pull': 0.5})
    runner = SimpleNamespace(
        message_hub=hub, iter=len(values) - 1, max_iters=len(values),
        _train_loop=object(), hooks=[LoggerHook(interval=interval)])
    processor = LogProcessor(by_epoch=False, **log_processor)
    tag, _ = processor.get_log_after_iter(runner, len(values) - 1, 'train')
    return tag, gate_summary([dict(tag, mode='train')])


def test_the_gate_is_logged_as_its_interval_mean():
    # Observed: open in iterations 1-40 of 50, logged every 50 (the demo's
    # interval): mmengine logged the last value, 0.0, and the demo said
    # "the anchor gate never opened".
    tag, gate = logged_after([1.0] * 40 + [0.0] * 10, interval=50)
    assert tag['decode.sar.gate_open'] == pytest.approx(0.8)
    assert tag['decode.sar.iters_since_init'] == 49  # a counter: current
    assert gate['first_open_iter'] == 50
    assert gate['open_fraction'] == pytest.approx(0.8)


def test_a_configured_statistic_of_the_gate_is_kept():
    custom = [dict(data_src='decode.sar.gate_open', method_name='max',
                   window_size=50)]
    tag, _ = logged_after([0.0] * 10 + [1.0] * 5 + [0.0] * 35, interval=50,
                          custom_cfg=custom)
    assert tag['decode.sar.gate_open'] == 1.0


MMCV_WITHOUT_OPS = """
import importlib.abc
import sys


class NoOps(importlib.abc.MetaPathFinder):
    # mmcv 2.x built without its ops (MMCV_WITH_OPS=0), or mmcv-lite.
    def find_spec(self, name, path=None, target=None):
        if name == 'mmcv._ext':
            raise ModuleNotFoundError("No module named 'mmcv._ext'",
                                      name=name)


sys.meta_path.insert(0, NoOps())
import sar
"""


def test_import_sar_names_the_fix_for_an_mmcv_without_ops():
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, '-c', MMCV_WITHOUT_OPS],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert 'without its compiled ops' in last, proc.stderr[-3000:]
    assert 'make install-mmseg1' in last


@pytest.fixture
def one_gpu_node(monkeypatch):
    """Rank 1 of two on a node whose one GPU both share (the GPU check's
    two gloo ranks), faked: what mmengine asks of CUDA is recorded."""
    import mmengine.device
    seen = {}
    monkeypatch.setenv('RANK', '1')
    monkeypatch.setenv('LOCAL_RANK', '1')
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setattr(mmengine.device, 'get_device', lambda: 'cuda')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: 0)
    monkeypatch.setattr(torch.cuda, 'set_device',
                        lambda d: seen.setdefault('set_device', []).append(d))
    monkeypatch.setattr(torch.distributed, 'init_process_group',
                        lambda **kw: seen.update(init=kw))
    return seen


def test_a_rank_beyond_the_gpus_is_given_the_one_it_shares(one_gpu_node,
                                                            monkeypatch):
    import os

    from mmengine.dist import utils
    utils._init_dist_pytorch('gloo')
    # mmengine asked for cuda:1, which does not exist ("invalid device
    # ordinal"); as mmcv's init_dist does: LOCAL_RANK % GPUs.
    assert one_gpu_node == dict(set_device=[0], init=dict(backend='gloo'))
    assert os.environ['LOCAL_RANK'] == '1'  # as it was
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 4)
    utils._init_dist_pytorch('nccl')
    assert one_gpu_node['set_device'] == [0, 1]  # one rank a GPU: as is


def test_its_logger_names_the_gpu_it_shares(one_gpu_node, monkeypatch):
    import os

    from mmengine.logging import MMLogger
    # The Runner builds its logger after init_dist, with LOCAL_RANK back
    # at 1: mmengine looked it up among the one visible GPU (IndexError).
    monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)
    logger = MMLogger.get_instance('sar_rank1_probe', logger_name='probe')
    assert logger.name == 'probe'
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '0')
    MMLogger.get_instance('sar_rank1_probe_visible')
    assert os.environ['LOCAL_RANK'] == '1'


def test_its_model_is_wrapped_on_the_device_it_is_on(one_gpu_node,
                                                     monkeypatch):
    import os
    import types

    from mmengine.config import Config
    from mmengine.runner import Runner, runner
    wrapped = []
    monkeypatch.setattr(runner, 'get_device', lambda: 'cpu')  # no real GPU
    monkeypatch.setattr(runner, 'MMDistributedDataParallel',
                        lambda **kw: wrapped.append(kw) or kw['module'])
    fake = types.SimpleNamespace(distributed=True, cfg=Config(dict()),
                                 logger=None)
    Runner.wrap_model(fake, None, torch.nn.Linear(2, 2))
    # mmengine's own default wrapper, with the device the model is on
    # (cuda:0) rather than LOCAL_RANK's cuda:1.
    assert wrapped[0]['device_ids'] == [0]
    assert wrapped[0]['broadcast_buffers'] is False
    assert os.environ['LOCAL_RANK'] == '1'
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    Runner.wrap_model(fake, None, torch.nn.Linear(2, 2))
    assert wrapped[1]['device_ids'] == [1]
