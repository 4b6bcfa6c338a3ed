"""Each torch 2.x shim of sar.mmseg0x.compat: it is needed, and it works."""
import errno
import os
import socket
import stat

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from mmcv.runner import load_checkpoint, save_checkpoint

from sar.mmseg0x import compat


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_version_check_names_ranges_and_fix(monkeypatch):
    import mmseg
    monkeypatch.setattr(mmseg, '__version__', '0.29.1')
    with pytest.raises(ImportError, match=r'mmseg==0\.29\.1 \(supported: '
                       r'>=0\.30\.0, <0\.31\.0\).*make install'):
        compat.check_versions()


def test_version_parsing():
    assert compat._version_tuple('2.14.1+cu130') == (2, 14, 1)
    assert compat._version_tuple('1.7.2') == (1, 7, 2)
    assert compat._version_tuple('2.0.0rc1') == (2, 0, 0)


# Shim 3 --------------------------------------------------------------------

def test_checkpoint_with_numpy_meta_round_trips_bit_exact(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1),
                                torch.nn.BatchNorm2d(4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 4, 4)).sum().backward()
    optimizer.step()
    meta = dict(PALETTE=np.random.randint(0, 255, (3, 3)),  # custom dataset
                hook_msgs=dict(best_score=np.float64(0.5)),  # EvalHook
                CLASSES=('a', 'b', 'c'), iter=7)
    path = str(tmp_path / 'ckpt.pth')
    save_checkpoint(model, path, optimizer=optimizer, meta=meta)

    fresh = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1),
                                torch.nn.BatchNorm2d(4))
    ckpt = load_checkpoint(fresh, path, map_location='cpu', strict=True)
    for (k, a), b in zip(model.state_dict().items(),
                         fresh.state_dict().values()):
        assert torch.equal(a, b), k
    assert np.array_equal(ckpt['meta']['PALETTE'], meta['PALETTE'])
    assert ckpt['meta']['hook_msgs']['best_score'] == 0.5
    saved = ckpt['optimizer']['state']
    for i, state in optimizer.state_dict()['state'].items():
        assert torch.equal(saved[i]['momentum_buffer'],
                           state['momentum_buffer'])


def test_numpy_meta_needs_the_shim(tmp_path):
    if not hasattr(torch.serialization, 'clear_safe_globals'):
        pytest.skip('torch without safe globals: no weights_only default')
    path = str(tmp_path / 'ckpt.pth')
    save_checkpoint(torch.nn.Linear(2, 2), path,
                    meta=dict(PALETTE=np.zeros((2, 3), np.int64)))
    from mmcv.runner.checkpoint import CheckpointLoader
    mmcvs_own = CheckpointLoader._schemes[''].__wrapped__  # without shim 6
    torch.serialization.clear_safe_globals()
    try:
        with pytest.raises(Exception, match='Weights only load failed'):
            mmcvs_own(path, map_location='cpu')
    finally:
        compat.apply()
    load_checkpoint(torch.nn.Linear(2, 2), path, map_location='cpu')


def test_numpy_meta_loads_after_another_safe_globals_context(tmp_path):
    # transformers' Trainer resume loads inside a safe_globals context of
    # numpy entries; its exit removes them from torch's process-wide list,
    # ours included. mmcv's loader must still read the meta afterwards.
    if not hasattr(torch.serialization, 'safe_globals'):
        pytest.skip('torch without safe globals: no weights_only default')
    from sar.checkpoints.safe_load import numpy_safe_globals
    path = str(tmp_path / 'ckpt.pth')
    save_checkpoint(torch.nn.Linear(2, 2), path,
                    meta=dict(PALETTE=np.zeros((2, 3), np.int64)))
    try:
        with torch.serialization.safe_globals(numpy_safe_globals()):
            pass
        assert not set(numpy_safe_globals()) & set(
            torch.serialization.get_safe_globals())  # the exit removed them
        ckpt = load_checkpoint(torch.nn.Linear(2, 2), path,
                               map_location='cpu')
        assert ckpt['meta']['PALETTE'].shape == (2, 3)
    finally:  # for the tests after this one, whatever happened
        compat.apply()


# Shim 1 --------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU path')
def test_unpatched_init_dist_fails_on_cpu(monkeypatch):
    from mmcv.runner import dist_utils
    original = dist_utils._init_dist_pytorch.__wrapped__
    monkeypatch.setenv('RANK', '0')
    with pytest.raises(ZeroDivisionError):
        original('nccl')  # rank % torch.cuda.device_count()


def _init_dist_worker(rank, world, port, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), MASTER_ADDR='127.0.0.1',
                      MASTER_PORT=str(port))
    import sar  # noqa: F401
    from mmcv.runner import get_dist_info, init_dist
    init_dist('pytorch', backend='nccl')  # as configs ask; gloo on CPU
    t = torch.tensor([rank + 1.0])
    dist.all_reduce(t)
    torch.save(dict(info=get_dist_info(), backend=dist.get_backend(),
                    total=t.item()), f'{out}.{rank}')
    dist.destroy_process_group()


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU path')
def test_init_dist_on_cpu_uses_gloo(tmp_path):
    out = str(tmp_path / 'r')
    mp.spawn(_init_dist_worker, args=(2, free_port(), out), nprocs=2)
    for rank in range(2):
        res = torch.load(f'{out}.{rank}')
        assert res['info'] == (rank, 2)
        assert res['backend'] == 'gloo' and res['total'] == 3.0


# Shim 2 --------------------------------------------------------------------

def test_unpatched_build_ddp_refuses_cpu():
    with pytest.raises(AssertionError, match='Only available for cuda'):
        compat._ORIGINALS['build_ddp'](torch.nn.Linear(2, 2), 'cpu')


def test_mmcv_ddp_forward_needs_the_removed_torch_attribute(monkeypatch):
    from mmcv.parallel import MMDistributedDataParallel
    monkeypatch.delattr(MMDistributedDataParallel,
                        '_use_replicated_tensor_module')
    ddp = MMDistributedDataParallel.__new__(MMDistributedDataParallel)
    torch.nn.Module.__init__(ddp)
    ddp.module = torch.nn.Identity()
    ddp.device_ids = None
    with pytest.raises(AttributeError, match='_use_replicated_tensor_module'):
        ddp._run_ddp_forward(torch.ones(1))
    monkeypatch.undo()
    assert torch.equal(ddp._run_ddp_forward(torch.ones(1)), torch.ones(1))


def test_cuda_ranks_beyond_the_gpus_get_the_current_device(monkeypatch):
    # Two gloo ranks on one GPU: mmcv's init_dist made cuda:0 current for
    # both (rank % 1), mmseg asks DDP for device_ids=[LOCAL_RANK] = [1].
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: 0)
    assert compat.cuda_device_ids([1]) == [0]
    assert compat.cuda_device_ids([0]) == [0]
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 4)
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: 3)
    assert compat.cuda_device_ids([3]) == [3]  # one rank per GPU: unchanged
    # Rank 3 of a second node running 2 ranks on 4 GPUs: init_dist made
    # cuda:3 current (3 % 4) and the model went there; LOCAL_RANK says 1.
    assert compat.cuda_device_ids([1]) == [3]
    assert compat.cuda_device_ids(None) is None
    seen = {}
    monkeypatch.setitem(compat._ORIGINALS, 'build_ddp',
                        lambda model, device, **kw: seen.update(kw) or model)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: 0)
    compat.build_ddp(torch.nn.Linear(2, 2), 'cuda', device_ids=[1],
                     broadcast_buffers=False)
    assert seen == dict(device_ids=[0], broadcast_buffers=False)


def test_build_ddp_is_patched_where_mmseg_calls_it():
    import mmseg.apis.train
    import mmseg.utils
    assert mmseg.apis.train.build_ddp is compat.build_ddp
    assert mmseg.utils.build_ddp is compat.build_ddp


def _ddp_worker(rank, world, port, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), MASTER_ADDR='127.0.0.1',
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import sar  # noqa: F401
    from mmcv.parallel import DataContainer, collate
    from mmcv.runner import init_dist
    from mmcv.utils import Config
    from mmseg.models import build_segmentor
    from mmseg.utils import build_ddp

    from conftest import DEMO_SAR, tiny_batch
    init_dist('pytorch', backend='gloo')
    torch.manual_seed(0)
    model = build_segmentor(Config.fromfile(DEMO_SAR).model)  # SyncBN
    ddp = build_ddp(model, 'cpu', device_ids=[rank],
                    broadcast_buffers=False)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
    img, metas, gt = tiny_batch(seed=rank)  # different data per rank
    batch = collate([dict(img=DataContainer(i, stack=True),
                          img_metas=DataContainer(m, cpu_only=True),
                          gt_semantic_seg=DataContainer(g, stack=True))
                     for i, m, g in zip(img, metas, gt)], samples_per_gpu=2)
    outputs = ddp.train_step(batch, optimizer)
    optimizer.zero_grad()
    outputs['loss'].backward()
    optimizer.step()
    # Inference through the DDP wrapper, as DistEvalHook / multi_gpu_test do.
    test_batch = dict(img=[img[:1]],
                      img_metas=[DataContainer([[metas[0]]], cpu_only=True)])
    ddp.eval()
    with torch.no_grad():
        pred = ddp(return_loss=False, **test_batch)
    sync_bn = [m for m in ddp.modules()
               if isinstance(m, torch.nn.SyncBatchNorm)]
    torch.save(dict(state={k: v.clone() for k, v in
                           ddp.module.state_dict().items()},
                    n_sync_bn=len(sync_bn), pred=pred,
                    keys=sorted(outputs['log_vars'])), f'{out}.{rank}')
    dist.destroy_process_group()


def test_cpu_ddp_trains_in_step(tmp_path):
    out = str(tmp_path / 'r')
    mp.spawn(_ddp_worker, args=(2, free_port(), out), nprocs=2)
    r0, r1 = (torch.load(f'{out}.{r}') for r in range(2))
    assert r0['n_sync_bn'] == r1['n_sync_bn'] == 0  # reverted on CPU
    assert r0['pred'][0].shape == (32, 32)
    assert r0['keys'] == r1['keys']
    assert 'decode.loss_sar_anchor_ce' in r0['keys']
    for key, value in r0['state'].items():
        if 'running_' in key or 'num_batches' in key:
            continue  # BN statistics are per rank (broadcast_buffers=False)
        assert torch.equal(value, r1['state'][key]), key


# Shim 5 --------------------------------------------------------------------

def _iter_runner(tmp_path, max_iters):
    import logging

    from mmcv.runner import IterBasedRunner

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(2, 1)

        def train_step(self, data, optimizer):
            loss = self.fc(data).pow(2).mean()
            return dict(loss=loss, log_vars=dict(loss=loss.item()),
                        num_samples=len(data))

    torch.manual_seed(0)
    model = Model()
    runner = IterBasedRunner(
        model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1,
                                         momentum=0.9),
        work_dir=str(tmp_path), logger=logging.getLogger('sar-test'),
        max_iters=max_iters)
    runner.register_lr_hook(dict(policy='poly', power=0.9, by_epoch=False))
    runner.register_optimizer_hook(dict(grad_clip=None))
    runner.register_checkpoint_hook(dict(interval=2, by_epoch=False))
    return runner


def test_iter_runner_resume_continues_exactly(tmp_path):
    data = [torch.randn(3, 2)] * 8  # same batch: order cannot matter
    straight = _iter_runner(tmp_path / 'a', 4)
    straight.run([data], [('train', 4)])
    ckpt = torch.load(str(tmp_path / 'a' / 'iter_2.pth'), weights_only=False)
    assert ckpt['meta']['iters_done'] == 2  # mmcv's own 'iter' says 1

    resumed = _iter_runner(tmp_path / 'b', 4)
    resumed.resume(str(tmp_path / 'a' / 'iter_2.pth'))  # CPU: no CUDA needed
    assert resumed.iter == 2
    resumed.run([data], [('train', 4)])
    assert resumed.iter == 4
    assert torch.equal(resumed.model.fc.weight, straight.model.fc.weight)


def test_iter_runner_resume_keeps_the_fp16_loss_scale(tmp_path):
    data = [torch.randn(3, 2)] * 8
    runner = _iter_runner(tmp_path / 'a', 2)
    runner.meta = dict(fp16=dict(loss_scaler=dict(scale=1024.0)))
    runner.run([data], [('train', 2)])
    resumed = _iter_runner(tmp_path / 'b', 4)
    resumed.meta = dict(seed=3)
    resumed.resume(str(tmp_path / 'a' / 'iter_2.pth'))
    # Fp16OptimizerHook.before_run restores its GradScaler from here.
    assert resumed.meta == dict(seed=3, fp16=dict(loss_scaler=dict(
        scale=1024.0)))
    fp32 = _iter_runner(tmp_path / 'c', 2)
    fp32.run([data], [('train', 2)])
    plain = _iter_runner(tmp_path / 'd', 4)
    plain.meta = dict(seed=3)
    plain.resume(str(tmp_path / 'c' / 'iter_2.pth'))
    assert plain.meta == dict(seed=3)


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU path')
def test_unpatched_iter_runner_resume_needs_cuda(tmp_path):
    from mmcv.runner import IterBasedRunner
    runner = _iter_runner(tmp_path, 4)
    runner.run([[torch.randn(3, 2)] * 8], [('train', 2)])
    with pytest.raises((RuntimeError, AssertionError), match='NVIDIA|CUDA'):
        IterBasedRunner.resume.__wrapped__(_iter_runner(tmp_path, 4),
                                           str(tmp_path / 'iter_2.pth'))


# Shim 6 --------------------------------------------------------------------

@pytest.mark.parametrize('refused', ['open', 'fsync'])
@pytest.mark.parametrize('error', [
    PermissionError(errno.EACCES, 'Permission denied'),  # Windows
    OSError(errno.EINVAL, 'Invalid argument'),  # some cluster/FUSE mounts
])
def test_a_refused_folder_fsync_does_not_stop_the_checkpoint(
        tmp_path, monkeypatch, refused, error):
    real_open, real_fsync = os.open, os.fsync
    refusals = []

    def open_refusing_folders(path, flags, *args, **kwargs):
        if refused == 'open' and os.path.isdir(path):
            refusals.append(path)
            raise error
        return real_open(path, flags, *args, **kwargs)

    def fsync_refusing_folders(fd):
        if refused == 'fsync' and stat.S_ISDIR(os.fstat(fd).st_mode):
            refusals.append(fd)
            raise error
        return real_fsync(fd)

    monkeypatch.setattr(os, 'open', open_refusing_folders)
    monkeypatch.setattr(os, 'fsync', fsync_refusing_folders)
    model = torch.nn.Linear(2, 2)
    save_checkpoint(model, str(tmp_path / 'iter_1.pth'))
    assert refusals, 'the folder fsync was not attempted'
    loaded = torch.load(tmp_path / 'iter_1.pth', map_location='cpu')
    assert torch.equal(loaded['state_dict']['weight'], model.weight)
    assert sorted(os.listdir(tmp_path)) == ['iter_1.pth']  # no temp left


# Shim 7 --------------------------------------------------------------------

def test_scatter_to_a_gpu_id_gets_its_copy_stream(monkeypatch):
    import torch.nn.parallel._functions as torch_functions
    from mmcv.parallel import _functions
    # The need: torch 2.x's _get_stream takes a device, mmcv passes an id.
    with pytest.raises(AttributeError, match="'int' object has no attribute"):
        torch_functions._get_stream(0)
    # Patched: the id names a CUDA device (no stream without one here).
    assert _functions._get_stream._sar_patched
    assert not compat._get_stream_takes_ids(torch_functions._get_stream)
    assert compat._get_stream_takes_ids(  # torch < 2.1's behaviour: kept
        lambda device: None if device == -1 else 'stream')
    assert _functions._get_stream.__wrapped__ is torch_functions._get_stream
    # The decision, with a stand-in for torch's lookup (which, on a machine
    # without CUDA, answers None for every device, so cannot show it): an
    # id reaches torch as the CUDA device it names, a device as itself.
    asked = []
    stand_in = compat._ids_as_devices(
        lambda device: asked.append(device) or f'stream of {device}')
    assert stand_in(1) == 'stream of cuda:1'
    assert stand_in(torch.device('cpu')) == 'stream of cpu'
    assert asked == [torch.device('cuda', 1), torch.device('cpu')]
    # torch's own lookup through the patch: no AttributeError for an id.
    # Only the GPU check (tools/gpu_check.py) gets a real copy stream.
    assert _functions._get_stream(0) is None or torch.cuda.is_available()
    # mmcv's Scatter.forward, as MMDataParallel calls it for a batch that
    # goes to GPU 0, gets past the stream lookup to the copy itself.
    calls = []
    monkeypatch.setattr(_functions, 'scatter',
                        lambda x, gpus, streams: calls.append(
                            (gpus, streams)) or [x])
    monkeypatch.setattr(_functions, 'synchronize_stream',
                        lambda *a: calls.append('synchronized'))
    (out, ) = _functions.Scatter.forward([0], torch.ones(2))
    assert torch.equal(out, torch.ones(2))
    assert calls == [([0], [None]), 'synchronized']
