"""Version checks and torch 2.x compatibility shims, applied on ``import sar``.

mmcv-full 1.7 and mmseg 0.30 predate torch 2. Each shim below names the
change it answers; each is idempotent and has a test that fails without it
(tests/test_compat.py). Nothing here changes behaviour on a setup where the
original code already works (CUDA device present, old torch).
"""
import functools
import inspect
import os
import os.path as osp
import platform
import re
import shutil
import warnings
import zipfile

import torch

from ..checkpoints.safe_load import allow_numpy_in_checkpoints
from ..version import SUPPORTED

INSTALL_HINT = ('make install (or tools/setup_env.sh) builds a supported '
                'environment: torch 2.14.1, mmcv-full 1.7.2 from source, '
                'mmsegmentation 0.30.0')


def _version_tuple(text):
    parts = []
    for piece in text.split('+')[0].split('.'):
        digits = re.match(r'\d+', piece)
        if not digits:
            break
        parts.append(int(digits.group()))
        if digits.group() != piece:  # '0rc1': a pre-release ends the number
            break
    return tuple(parts)


def check_versions():
    """Fail with the supported ranges and the fix when a version is off."""
    import mmcv
    import mmseg
    found = {'torch': torch.__version__, 'mmcv': mmcv.__version__,
             'mmseg': mmseg.__version__}
    bad = []
    for name, (low, high) in SUPPORTED.items():
        v = _version_tuple(found[name])
        if not _version_tuple(low) <= v < _version_tuple(high):
            bad.append(f'{name}=={found[name]} (supported: >={low}, <{high})')
    if bad:
        raise ImportError('sar: unsupported ' + ', '.join(bad) + '. ' +
                          INSTALL_HINT)
    try:
        from mmcv.ops import nms  # noqa: F401  (needs the compiled ops)
    except (ImportError, ModuleNotFoundError) as err:
        raise ImportError(
            'sar: mmcv is installed without its compiled ops (mmcv-full is '
            f'needed; mmcv/mmcv-lite will not do): {err}. ' + INSTALL_HINT
        ) from err


# --------------------------------------------------------------------------
# Shim 1: CPU distributed init.
# mmcv's _init_dist_pytorch calls torch.cuda.set_device(rank % num_gpus),
# which divides by zero without a GPU, and configs ask for the NCCL backend,
# which needs CUDA. Without CUDA we skip the device pinning and use gloo.
def _patch_init_dist():
    from mmcv.runner import dist_utils
    original = dist_utils._init_dist_pytorch
    if getattr(original, '_sar_patched', False):
        return

    @functools.wraps(original)
    def init_dist_pytorch(backend, **kwargs):
        if torch.cuda.is_available():
            return original(backend, **kwargs)
        if backend != 'gloo':
            warnings.warn(f'sar: no CUDA device, using the gloo backend '
                          f'instead of {backend!r}')
        torch.distributed.init_process_group(backend='gloo', **kwargs)

    init_dist_pytorch._sar_patched = True
    dist_utils._init_dist_pytorch = init_dist_pytorch


# --------------------------------------------------------------------------
# Shim 2: DDP on CPU.
# mmseg 0.30's build_ddp asserts a CUDA/MLU device, and mmcv's
# MMDistributedDataParallel only unpacks DataContainers when it has device
# ids. On CPU we revert SyncBN (it refuses CPU tensors under a process group)
# and scatter the batch to the CPU before the usual DDP step.
def _cpu_ddp_class():
    from mmcv.parallel import MMDistributedDataParallel
    from mmcv.parallel.scatter_gather import scatter_kwargs

    class CPUDistributedDataParallel(MMDistributedDataParallel):
        """MMDistributedDataParallel for CPU processes (gloo)."""

        def _to_cpu(self, inputs, kwargs):
            inputs, kwargs = scatter_kwargs(inputs, kwargs, [-1], dim=self.dim)
            return inputs[0], kwargs[0]

        def train_step(self, *inputs, **kwargs):
            inputs, kwargs = self._to_cpu(inputs, kwargs)
            return super().train_step(*inputs, **kwargs)

        def val_step(self, *inputs, **kwargs):
            inputs, kwargs = self._to_cpu(inputs, kwargs)
            return super().val_step(*inputs, **kwargs)

        def forward(self, *inputs, **kwargs):
            inputs, kwargs = self._to_cpu(inputs, kwargs)
            return super().forward(*inputs, **kwargs)

    return CPUDistributedDataParallel


def cuda_device_ids(device_ids):
    """The CUDA device of this rank, for DDP's ``device_ids``.

    mmseg 0.30 passes ``device_ids=[LOCAL_RANK]``, but mmcv's ``init_dist``
    made device ``rank % device_count`` current, and mmseg's ``build_ddp``
    moved the model to the current device. The two differ with more ranks
    than GPUs (two gloo ranks sharing one GPU: rank 1 asked for a device
    that does not exist) and on nodes running fewer ranks than they have
    GPUs. DDP gets the device the model is on.
    """
    if device_ids is None:
        return None
    return [torch.cuda.current_device()]


def build_ddp(model, device='cuda', *args, **kwargs):
    """mmseg's ``build_ddp`` plus a CPU branch (gloo, SyncBN reverted)."""
    if device != 'cpu':
        if device == 'cuda' and 'device_ids' in kwargs:
            kwargs['device_ids'] = cuda_device_ids(kwargs['device_ids'])
        return _ORIGINALS['build_ddp'](model, device, *args, **kwargs)
    from mmcv.cnn.utils import revert_sync_batchnorm
    kwargs.pop('device_ids', None)
    kwargs.pop('output_device', None)
    return _cpu_ddp_class()(revert_sync_batchnorm(model), *args, **kwargs)


_ORIGINALS = {}


def _patch_build_ddp():
    import mmseg.apis.train
    import mmseg.utils
    import mmseg.utils.util_distribution
    if 'build_ddp' in _ORIGINALS:
        return
    _ORIGINALS['build_ddp'] = mmseg.utils.util_distribution.build_ddp
    for module in (mmseg.utils, mmseg.utils.util_distribution,
                   mmseg.apis.train):
        module.build_ddp = build_ddp


# --------------------------------------------------------------------------
# Shim 3: checkpoints with numpy values.
# torch 2.6 made torch.load(weights_only=True) the default, and mmcv's
# load_checkpoint (hence --resume-from, --load-from, tools/test.py) does not
# pass weights_only. mmseg checkpoints hold numpy values in their meta: the
# random PALETTE of a custom dataset without one, and EvalHook's best score.
# We allow exactly the numpy array/scalar reconstructors, keeping the
# weights-only loader (no arbitrary code) for everything else. The list lives
# in the torch-only sar.checkpoints.safe_load, which the export tools use
# alone; apply() registers it for every loader in the process, and shim 6's
# local loader again before each load (another library's safe_globals
# context removes the entries it listed when it exits).


# --------------------------------------------------------------------------
# Shim 4: DDP forward (inference under a process group, e.g. DistEvalHook
# and tools/test.py --launcher pytorch, on GPU and CPU alike).
# mmcv's MMDistributedDataParallel._run_ddp_forward reads
# self._use_replicated_tensor_module, an attribute torch's DDP dropped in
# torch 2.0 (replicated-tensor support was removed). Its absence means the
# plain module runs, which is what the attribute's False value selects.
def _patch_ddp_forward():
    from mmcv.parallel import MMDistributedDataParallel
    if not hasattr(MMDistributedDataParallel, '_use_replicated_tensor_module'):
        MMDistributedDataParallel._use_replicated_tensor_module = False


# --------------------------------------------------------------------------
# Shim 5: resuming an IterBasedRunner (mmcv 1.x, every torch).
# (a) resume() maps every tensor to torch.cuda.current_device() by default,
#     so --resume-from and --auto-resume fail on a CPU machine; without CUDA,
#     'default' now means the CPU.
# (b) checkpoints written by CheckpointHook inside an iteration record
#     meta['iter'] = iterations done - 1, and resume() continues from there:
#     the last iteration before the checkpoint is run again, one iteration
#     more in total and the lr schedule shifted by one. We record the count
#     of iterations done as meta['iters_done'] and resume from it. Files
#     without it (stock mmcv) resume as before.
# (c) the dynamic loss scale of an fp16 run (meta['fp16']) was not restored
#     (BaseRunner.resume does it, IterBasedRunner.resume does not): a resumed
#     run restarted at 65536 and skipped its first steps as overflows.
def _iters_done(runner):
    # mmcv keeps ``data_batch`` on the runner between before_train_iter and
    # the end of after_train_iter, where CheckpointHook saves.
    return runner.iter + 1 if 'data_batch' in vars(runner) else runner.iter


def _patch_iter_runner():
    from mmcv.runner import IterBasedRunner
    if getattr(IterBasedRunner.resume, '_sar_patched', False):
        return
    original_save = IterBasedRunner.save_checkpoint
    original_resume = IterBasedRunner.resume

    @functools.wraps(original_save)
    def save_checkpoint(self, out_dir, filename_tmpl='iter_{}.pth',
                        meta=None, save_optimizer=True, create_symlink=True):
        meta = dict(meta or {}, iters_done=_iters_done(self))
        # latest.pth by a rename (shim 6), not mmcv's remove + symlink.
        original_save(self, out_dir, filename_tmpl, meta, save_optimizer,
                      create_symlink=False)
        if create_symlink:
            _link_latest(out_dir, filename_tmpl.format(self.iter + 1))

    @functools.wraps(original_resume)
    def resume(self, checkpoint, resume_optimizer=True,
               map_location='default'):
        if map_location == 'default' and not torch.cuda.is_available():
            map_location = 'cpu'
        seen = {}
        load = self.load_checkpoint

        def load_and_keep_meta(*args, **kwargs):
            loaded = load(*args, **kwargs)
            seen.update(loaded.get('meta') or {})
            return loaded

        self.load_checkpoint = load_and_keep_meta
        try:
            original_resume(self, checkpoint, resume_optimizer, map_location)
        finally:
            del self.load_checkpoint
        if 'iters_done' in seen:
            self._iter = self._inner_iter = seen['iters_done']
            self.logger.info(f'resumed after {self._iter} iterations done')
        if 'fp16' in seen:
            # Fp16OptimizerHook.before_run reads its loss scale from
            # runner.meta, which IterBasedRunner.resume leaves as it was.
            self.meta = dict(self.meta or {}, fp16=seen['fp16'])

    resume._sar_patched = True
    IterBasedRunner.save_checkpoint = save_checkpoint
    IterBasedRunner.resume = resume


# --------------------------------------------------------------------------
# Shim 6: checkpoint files that a kill cannot corrupt (mmcv 1.x, every torch).
# (a) mmcv writes a checkpoint in place (open(path, 'wb')) and replaces
#     latest.pth by remove + symlink: a job killed while saving leaves a
#     truncated iter_N.pth, or no latest.pth, which --auto-resume then
#     trips over. Local files are now written to a temporary name in the
#     same folder and renamed (atomic on POSIX), and latest.pth is replaced
#     by a rename too.
# (b) torch.load on a truncated file raises a miniz error, an OSError or a
#     bare EOFError; loading now says which file, that nothing was loaded,
#     and what to do.
def _is_local(path):
    return '://' not in str(path)


def _replace_atomically(path, write):
    """``write(tmp)`` then rename ``tmp`` to ``path``; no partial ``path``.

    The temporary name is fixed per target, so a write killed half-way is
    overwritten by the next save of that file rather than piling up. The
    data and the rename are flushed to disk, for node crashes too.
    """
    folder, name = osp.split(osp.abspath(path))
    tmp = osp.join(folder, f'.{name}.tmp')
    if osp.lexists(tmp):
        os.remove(tmp)
    try:
        write(tmp)
        if not osp.islink(tmp):
            with open(tmp, 'rb+') as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(folder)
    finally:
        if osp.lexists(tmp):
            os.remove(tmp)


def _fsync_folder(folder):
    """Flush a rename in ``folder`` to disk, where the system allows it.

    POSIX file systems take an fsync of a folder opened read-only. Windows
    refuses to open a folder so (PermissionError), and some cluster and
    FUSE file systems answer EINVAL or ENOTSUP. The file is in place by
    then: a refusal only means the rename may not yet be durable after a
    node crash, which must not stop training.
    """
    try:
        directory = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(directory)
    except OSError:
        pass
    finally:
        os.close(directory)


def _atomic_save_checkpoint(original):
    signature = inspect.signature(original)

    @functools.wraps(original)
    def save_checkpoint(model, filename, *args, **kwargs):
        backend = signature.bind(model, filename, *args, **kwargs).arguments
        if not _is_local(filename) or backend.get('file_client_args'):
            # Another storage backend: mmcv's own write, as it is.
            return original(model, filename, *args, **kwargs)
        _replace_atomically(
            filename, lambda tmp: original(model, tmp, *args, **kwargs))

    save_checkpoint._sar_patched = True
    return save_checkpoint


def _link_latest(out_dir, filename):
    """Point ``out_dir/latest.pth`` at ``filename`` by one rename."""
    latest = osp.join(out_dir, 'latest.pth')
    if platform.system() == 'Windows':
        _replace_atomically(latest, lambda tmp: shutil.copy(
            osp.join(out_dir, filename), tmp))
    else:
        _replace_atomically(latest, lambda tmp: os.symlink(filename, tmp))


def _truncated(filename, err):
    """Positive evidence that a checkpoint file is cut short or corrupt.

    torch's files are zip archives (since torch 1.6): one that starts like a
    zip but whose directory cannot be read was cut short. An empty file
    gives EOFError. Any other failure (a CUDA map_location on a CPU
    machine, a legacy-format file) is not called a truncation.
    """
    if isinstance(err, EOFError):
        return True
    try:
        with open(filename, 'rb') as f:
            if f.read(4) != b'PK\x03\x04':
                return False
        with zipfile.ZipFile(filename) as archive:
            return archive.testzip() is not None
    except (zipfile.BadZipFile, EOFError):
        return True
    except OSError:
        return False


def _readable_checkpoint(original):
    @functools.wraps(original)
    def load_from_local(filename, map_location=None):
        # Shim 3's entries, again: a torch.serialization.safe_globals
        # context of other code (transformers' Trainer resume) removes the
        # entries it listed when it exits, ours among them.
        allow_numpy_in_checkpoints()
        try:
            return original(filename, map_location)
        except (EOFError, RuntimeError, OSError) as err:
            path = osp.expanduser(filename)
            if isinstance(err, (FileNotFoundError, PermissionError)) or \
                    not _truncated(path, err):
                raise
            raise RuntimeError(
                f'{filename} is not a complete checkpoint (truncated or '
                f'corrupt: {str(err)[:120] or type(err).__name__}); nothing '
                'was loaded. Resume from an earlier one (--resume-from '
                'WORK_DIR/iter_N.pth), or move it aside so that '
                '--auto-resume takes the previous checkpoint.') from err

    load_from_local._sar_patched = True
    return load_from_local


def _patch_checkpoint_files():
    import mmcv.runner
    from mmcv.runner import checkpoint, epoch_based_runner, iter_based_runner
    for module in (checkpoint, iter_based_runner, epoch_based_runner,
                   mmcv.runner):
        if not getattr(module.save_checkpoint, '_sar_patched', False):
            module.save_checkpoint = _atomic_save_checkpoint(
                module.save_checkpoint)
    loader = checkpoint.CheckpointLoader
    local = loader._schemes['']
    if not getattr(local, '_sar_patched', False):
        loader.register_scheme(prefixes='', force=True)(
            _readable_checkpoint(local))


# --------------------------------------------------------------------------
# Shim 7: moving a batch to a GPU (MMDataParallel and MMDistributedDataParallel
# on CUDA, every training step).
# mmcv's Scatter.forward asks torch.nn.parallel._functions._get_stream for a
# copy stream with an integer GPU id; torch 2.x takes a torch.device there
# and reads ``device.type``: "AttributeError: 'int' object has no attribute
# 'type'". The id becomes the device it names. CPU runs never get here
# (their target is -1).
def _get_stream_takes_ids(get_stream):
    # torch < 2.1 answers None for -1 (the CPU); later ones read -1.type.
    try:
        return get_stream(-1) is None
    except AttributeError:
        return False


def _ids_as_devices(get_stream):
    """``get_stream`` taking mmcv's integer GPU ids as the CUDA devices."""

    @functools.wraps(get_stream)
    def get_stream_of_id(device):
        if isinstance(device, int):
            device = torch.device('cuda', device)
        return get_stream(device)

    get_stream_of_id._sar_patched = True
    return get_stream_of_id


def _patch_get_stream():
    from mmcv.parallel import _functions
    original = _functions._get_stream
    if getattr(original, '_sar_patched', False) or _get_stream_takes_ids(
            original):
        return
    _functions._get_stream = _ids_as_devices(original)


# --------------------------------------------------------------------------
# Shim 8: why SAR's state was left as built, in the run's log.
# Fine-tuning from a SAR checkpoint into other classes or widths, SAR keeps
# its state as built and says why in a Python warning, which mmcv's logger
# does not capture; the log file showed only mmcv's "missing keys in source
# state_dict: decode_head.sar_loss...". Where mmcv logs the mismatch to a
# logger (a runner's load_from and resume), SAR's reason goes there too
# (tests/test_sar_head.py::test_fine_tuning_from_a_sar_checkpoint_...).
def _patch_load_state_dict():
    from mmcv.runner import checkpoint

    from ..core.regularizer import pop_load_reports
    original = checkpoint.load_state_dict
    if getattr(original, '_sar_patched', False):
        return

    @functools.wraps(original)
    def load_state_dict(module, state_dict, strict=False, logger=None):
        try:
            return original(module, state_dict, strict, logger)
        finally:
            for report in pop_load_reports(module):
                if logger is not None:
                    logger.warning(f'{report} (mmcv lists these keys '
                                   f'as missing.)')

    load_state_dict._sar_patched = True
    checkpoint.load_state_dict = load_state_dict


def apply():
    """Apply every shim (idempotent)."""
    _patch_init_dist()
    _patch_build_ddp()
    allow_numpy_in_checkpoints()
    _patch_ddp_forward()
    _patch_iter_runner()
    _patch_checkpoint_files()
    _patch_get_stream()
    _patch_load_state_dict()
