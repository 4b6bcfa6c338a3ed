"""Version checks and compatibility shims of the 1.x glue, applied on import.

mmengine 0.10 predates torch 2.6 and assumes a CUDA device for distributed
training. Each shim below names the change it answers; each is idempotent
and is exercised by the suite's real runs (tests/mmseg1x/test_runner.py:
two CPU ranks, resume, tools/test.py on the runner's checkpoints) and
tests/mmseg1x/test_compat_1x.py. Nothing here changes behaviour where the
original code already works (a CUDA device present, torch < 2.6). They act
on mmengine itself, so they serve every config whose ``custom_imports``
imports ``sar``, run by mmseg's own ``tools/train.py`` and
``tools/test.py``.
"""
import functools
import pickle
import warnings

import torch

from ..checkpoints.safe_load import allow_records_in_checkpoints
from ..version import SUPPORTED_MMSEG1, out_of_range

INSTALL_HINT = ('make install-mmseg1 (or tools/setup_env_mmseg1.sh) builds a '
                'supported environment: torch 2.14.1, mmcv 2.1.0 from '
                'source, mmengine 0.10.7, mmsegmentation 1.2.2')


def check_versions():
    """Fail with the supported ranges and the fix when a version is off.

    Versions are read from the modules: OneDL's fork installs the same
    modules under other distribution names.
    """
    import mmcv
    import mmengine
    import mmseg
    found = {'torch': torch.__version__, 'mmcv': mmcv.__version__,
             'mmengine': mmengine.__version__, 'mmseg': mmseg.__version__}
    bad = out_of_range(found, SUPPORTED_MMSEG1)
    if bad:
        raise ImportError('sar: unsupported ' + ', '.join(bad) + '. ' +
                          INSTALL_HINT)


def _no_accelerator():
    # mmengine's _init_dist_pytorch handles MLU, NPU and MUSA itself and
    # sends everything else to CUDA; get_device() answers 'cpu' (or 'mps',
    # which has no process-group backend either) when CUDA is absent.
    from mmengine.device import get_device
    return get_device() in ('cpu', 'mps')


# --------------------------------------------------------------------------
# Shim 1: CPU distributed init (mmengine 0.10, --launcher pytorch).
# mmengine's _init_dist_pytorch calls torch.cuda.set_device(LOCAL_RANK)
# unconditionally ("Found no NVIDIA driver"), and mmseg's default runtime
# asks for the NCCL backend, which needs CUDA. Without an accelerator we
# skip the device pinning and use gloo.
def _patch_init_dist():
    from mmengine.dist import utils
    original = utils._init_dist_pytorch
    if getattr(original, '_sar_patched', False):
        return

    @functools.wraps(original)
    def init_dist_pytorch(backend, init_backend='torch', **kwargs):
        if init_backend != 'torch' or not _no_accelerator():
            return original(backend, init_backend=init_backend, **kwargs)
        if backend != 'gloo':
            warnings.warn(f'sar: no CUDA device, using the gloo backend '
                          f'instead of {backend!r}')
        torch.distributed.init_process_group(backend='gloo', **kwargs)

    init_dist_pytorch._sar_patched = True
    utils._init_dist_pytorch = init_dist_pytorch


# --------------------------------------------------------------------------
# Shim 2: DDP of a CPU model (mmengine 0.10's Runner.wrap_model).
# (a) Without a model_wrapper_cfg, wrap_model passes
#     device_ids=[LOCAL_RANK], which torch's DDP refuses for a module on
#     the CPU ("device_ids and output_device arguments only work with
#     single-device/multiple-device GPU modules"); with one, it sets the
#     same default for every DDP subclass.
# (b) Under a process group it keeps SyncBN (mmseg's configs use it, and
#     SAR's projector takes the head's norm), whose forward refuses CPU
#     tensors ("SyncBatchNorm expected input tensor to be on GPU").
# Without an accelerator the model is reverted to plain BN, as mmengine
# does for one process, and wrapped with device_ids=None; the wrapper's
# other settings (mmengine's defaults or the config's) are kept.
def _patch_wrap_model():
    from mmengine.runner import Runner
    original = Runner.wrap_model
    if getattr(original, '_sar_patched', False):
        return

    @functools.wraps(original)
    def wrap_model(self, model_wrapper_cfg, model):
        from mmengine.model import is_model_wrapper
        if not self.distributed or is_model_wrapper(model) or \
                not _no_accelerator():
            return original(self, model_wrapper_cfg, model)
        return wrap_cpu_model(model, model_wrapper_cfg, self.cfg)

    wrap_model._sar_patched = True
    Runner.wrap_model = wrap_model


def wrap_cpu_model(model, model_wrapper_cfg, cfg):
    """A CPU model under a (gloo) process group, in its DDP wrapper.

    Args:
        model (nn.Module): the model, not wrapped yet.
        model_wrapper_cfg (dict | None): the config's; None means
            mmengine's default (``MMDistributedDataParallel`` with
            ``broadcast_buffers=False`` and the config's
            ``find_unused_parameters``).
        cfg (Config): the run's config.

    Returns:
        nn.Module: the wrapper.
    """
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODEL_WRAPPERS
    from torch.nn.parallel import DistributedDataParallel
    if cfg.get('sync_bn', None) is not None:
        warnings.warn(f'sar: sync_bn={cfg.sync_bn!r} ignored without CUDA: '
                      "torch's SyncBatchNorm needs GPU tensors")
    model = revert_sync_batchnorm(model.to('cpu'))
    if model_wrapper_cfg is None:
        model_wrapper_cfg = dict(
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper_cfg = dict(model_wrapper_cfg)
    wrapper_cfg.setdefault('type', 'MMDistributedDataParallel')
    if issubclass(MODEL_WRAPPERS.get(wrapper_cfg['type']),
                  DistributedDataParallel):
        wrapper_cfg['device_ids'] = None
    return MODEL_WRAPPERS.build(wrapper_cfg, default_args=dict(module=model))


# --------------------------------------------------------------------------
# Shim 3: mmengine's own checkpoints under torch >= 2.6.
# torch 2.6 made torch.load(weights_only=True) the default and mmengine
# 0.10.7 passes no weights_only: every checkpoint its Runner wrote fails to
# load (--resume, load_from, tools/test.py) on its message hub, whose
# HistoryBuffer records hold numpy arrays and, pickled as
# getattr(HistoryBuffer, 'mean'), their statistics methods. We allow that
# class, numpy's array/scalar reconstructors and a getattr limited to the
# record's public methods (sar.checkpoints.safe_load, torch only), and keep
# the weights-only loader for everything else.
@functools.lru_cache(maxsize=None)
def checked_history_buffer():
    """mmengine's ``HistoryBuffer`` as a checkpoint may rebuild it.

    Its ``__setstate__`` merges the pickled statistics methods into the
    table that every buffer of the process reads; a checkpoint could bind
    'mean' to another method. This subclass, registered under mmengine's
    name for the weights-only loader, accepts only HistoryBuffer's own
    statistics under their own names.
    """
    from mmengine.logging import HistoryBuffer

    class CheckedHistoryBuffer(HistoryBuffer):

        def __setstate__(self, state):
            known = HistoryBuffer._statistics_methods
            for name, method in state.get('statistics_methods', {}).items():
                if method is not known.get(name, getattr(HistoryBuffer, name,
                                                         None)):
                    raise pickle.UnpicklingError(
                        f'checkpoint binds the logging statistic {name!r} '
                        f'to {method!r}, which is not HistoryBuffer.{name}')
            # Checked: from here on a plain HistoryBuffer, which the next
            # checkpoint pickles under mmengine's name again.
            self.__class__ = HistoryBuffer
            HistoryBuffer.__setstate__(self, state)

    return CheckedHistoryBuffer


def _allow_mmengine_checkpoints():
    allow_records_in_checkpoints(checked_history_buffer())


def apply():
    """Apply every shim; safe to call more than once."""
    _patch_init_dist()
    _patch_wrap_model()
    _allow_mmengine_checkpoints()
