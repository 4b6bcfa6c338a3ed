"""Version checks and compatibility shims of the 1.x glue, applied on import.

mmengine 0.10 predates torch 2.6 and assumes a CUDA device for distributed
training. Each shim below names the change it answers; each is idempotent
and is exercised by the suite's real runs (tests/mmseg1x/test_runner.py:
two CPU ranks, resume, tools/test.py on the runner's checkpoints, the
baseline twins) and tests/mmseg1x/test_compat_1x.py. Shims 1-3 change
nothing where the original code already works (a CUDA device for each
rank, torch < 2.6); shim 4 acts only on SAR checkpoints loaded into models
without SAR, shim 5 only on SAR's own log keys, shim 6 only where
mmengine's scope table names a distribution that is not installed (OneDL's
fork). They act on mmengine
itself, so they serve every config whose ``custom_imports`` imports
``sar`` (the SAR configs and their baseline twins), run by mmseg's own
``tools/train.py`` and ``tools/test.py``.
"""
import contextlib
import functools
import logging
import os
import pickle
import warnings

import torch

from ..checkpoints.safe_load import (allow_records_in_checkpoints,
                                     named_entries_supported)
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
    try:
        # mmseg 1.x imports mmcv.ops itself (mmseg.utils), which needs the
        # compiled extension mmcv._ext.
        from mmcv.ops import nms  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f'sar: mmcv {mmcv.__version__} is installed without its compiled '
            f'ops ({err}), which mmseg 1.x imports (mmcv.ops); mmcv-lite '
            'and an mmcv built with MMCV_WITH_OPS=0 will not do. ' +
            INSTALL_HINT) from err


def _no_accelerator():
    # mmengine's _init_dist_pytorch handles MLU, NPU and MUSA itself and
    # sends everything else to CUDA; get_device() answers 'cpu' (or 'mps',
    # which has no process-group backend either) when CUDA is absent.
    from mmengine.device import get_device
    return get_device() in ('cpu', 'mps')


# --------------------------------------------------------------------------
# Shim 1: distributed init beyond the devices (mmengine 0.10, --launcher
# pytorch).
# (a) mmengine's _init_dist_pytorch calls torch.cuda.set_device(LOCAL_RANK)
#     unconditionally ("Found no NVIDIA driver"), and mmseg's default
#     runtime asks for the NCCL backend, which needs CUDA. Without an
#     accelerator we skip the device pinning and use gloo.
# (b) With more ranks on a node than it has GPUs (two gloo ranks sharing one
#     GPU), set_device(LOCAL_RANK) asks for a device that does not exist
#     ("invalid device ordinal"), and the Runner's logger looks LOCAL_RANK
#     up among the visible GPUs (IndexError). Such a rank gets device
#     LOCAL_RANK % GPUs, as mmcv's init_dist does for mmseg 0.30;
#     mmengine's own code runs with that number in place of LOCAL_RANK.
@contextlib.contextmanager
def _local_rank_as(device):
    """``LOCAL_RANK`` reads ``device`` inside, and what it was after."""
    saved = os.environ['LOCAL_RANK']
    os.environ['LOCAL_RANK'] = str(device)
    try:
        yield
    finally:
        os.environ['LOCAL_RANK'] = saved


def cuda_device_of_rank():
    """The CUDA device a rank of this node uses: LOCAL_RANK, or LOCAL_RANK
    modulo the node's GPUs where it has fewer GPUs than ranks."""
    return int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()


def _patch_init_dist():
    from mmengine.dist import utils
    original = utils._init_dist_pytorch
    if getattr(original, '_sar_patched', False):
        return

    @functools.wraps(original)
    def init_dist_pytorch(backend, init_backend='torch', **kwargs):
        if init_backend != 'torch' or not _no_accelerator():
            with _on_the_ranks_gpu():
                return original(backend, init_backend=init_backend,
                                **kwargs)
        if backend != 'gloo':
            warnings.warn(f'sar: no CUDA device, using the gloo backend '
                          f'instead of {backend!r}')
        torch.distributed.init_process_group(backend='gloo', **kwargs)

    init_dist_pytorch._sar_patched = True
    utils._init_dist_pytorch = init_dist_pytorch
    # (b) also where the Runner's logger names the rank's GPU, later
    # (CUDA_VISIBLE_DEVICES or the visible devices, indexed by LOCAL_RANK).
    from mmengine.logging import logger
    device_id = logger._get_device_id
    if not getattr(device_id, '_sar_patched', False):

        @functools.wraps(device_id)
        def get_device_id():
            with _on_the_ranks_gpu():
                return device_id()

        get_device_id._sar_patched = True
        logger._get_device_id = get_device_id


def _on_the_ranks_gpu():
    """Where a rank's LOCAL_RANK names a GPU the node lacks: LOCAL_RANK
    reads the device it uses (:func:`cuda_device_of_rank`) inside."""
    if 'LOCAL_RANK' in os.environ and torch.cuda.is_available() and \
            torch.cuda.device_count() > 0:
        device = cuda_device_of_rank()
        if device != int(os.environ['LOCAL_RANK']):
            return _local_rank_as(device)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------
# Shim 2: DDP of a CPU model, and of a rank beyond the GPUs (mmengine 0.10's
# Runner.wrap_model).
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
# (c) On a rank beyond the node's GPUs (shim 1 (b)) the model is on device
#     LOCAL_RANK % GPUs, the current one, while device_ids=[LOCAL_RANK]
#     names another: mmengine's wrap_model runs with the model's device in
#     place of LOCAL_RANK.
def _patch_wrap_model():
    from mmengine.runner import Runner
    original = Runner.wrap_model
    if getattr(original, '_sar_patched', False):
        return

    @functools.wraps(original)
    def wrap_model(self, model_wrapper_cfg, model):
        from mmengine.model import is_model_wrapper
        if not self.distributed or is_model_wrapper(model):
            return original(self, model_wrapper_cfg, model)
        if not _no_accelerator():
            with _on_the_ranks_gpu():
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
# the weights-only loader for everything else. onedl-mmengine does load
# weights-only, with a list of its own and an unrestricted retry; its
# loader is replaced (weights_only_load).
# What a pickled HistoryBuffer's state may hold: its __init__'s attributes
# and the statistics table its __getstate__ adds. Anything else would land
# in the instance __dict__ (HistoryBuffer.__setstate__ updates it with the
# whole state), where a '_statistics_methods' entry shadows the class table
# and 'statistics' or 'mean' could shadow the methods themselves.
HISTORY_BUFFER_STATE = ('max_length', '_log_history', '_count_history',
                        'statistics_methods')


@functools.lru_cache(maxsize=None)
def checked_history_buffer():
    """mmengine's ``HistoryBuffer`` as a checkpoint may rebuild it.

    Its ``__setstate__`` merges the pickled statistics methods into the
    table that every buffer of the process reads, and sets every other
    entry of the state on the instance; a checkpoint could bind 'mean' to
    another method either way. This subclass, registered under mmengine's
    name for the weights-only loader, accepts the attributes of
    :data:`HISTORY_BUFFER_STATE` only (an int length, numpy histories) and
    HistoryBuffer's own statistics under their own names.
    """
    import numpy as np
    from mmengine.logging import HistoryBuffer

    class CheckedHistoryBuffer(HistoryBuffer):

        def __setstate__(self, state):
            check_history_buffer_state(state, HistoryBuffer, np.ndarray)
            # Checked: from here on a plain HistoryBuffer, which the next
            # checkpoint pickles under mmengine's name again.
            self.__class__ = HistoryBuffer
            HistoryBuffer.__setstate__(self, state)

    return CheckedHistoryBuffer


def check_history_buffer_state(state, history_buffer, array_type):
    """Refuse a pickled ``HistoryBuffer`` state that sets more than data.

    Args:
        state (dict): the unpickled state.
        history_buffer (type): mmengine's ``HistoryBuffer``.
        array_type (type): ``numpy.ndarray``, the histories' type.

    Raises:
        pickle.UnpicklingError: an attribute outside
            :data:`HISTORY_BUFFER_STATE`, a value of the wrong type, or a
            statistic bound to anything but HistoryBuffer's own method.
    """
    def refuse(what):
        raise pickle.UnpicklingError(
            f'checkpoint holds a logging record (mmengine HistoryBuffer) '
            f'that {what}; only its data (max_length, _log_history, '
            '_count_history) and its own statistics methods are accepted. '
            'Load only checkpoints you trust with weights_only=False.')

    if not isinstance(state, dict):
        refuse(f'has a state of type {type(state).__name__}')
    extra = sorted(str(k) for k in state if k not in HISTORY_BUFFER_STATE)
    if extra:
        refuse(f'sets the attributes {extra}')
    if not isinstance(state.get('max_length', 0), int):
        refuse(f"sets max_length to {state['max_length']!r}")
    for name in ('_log_history', '_count_history'):
        if name in state and not isinstance(state[name], array_type):
            refuse(f'sets {name} to a {type(state[name]).__name__}')
    methods = state.get('statistics_methods', {})
    if not isinstance(methods, dict):
        refuse(f'sets statistics_methods to a {type(methods).__name__}')
    known = history_buffer._statistics_methods
    for name, method in methods.items():
        if method is not known.get(name, getattr(history_buffer, str(name),
                                                 None)):
            refuse(f'binds the logging statistic {name!r} to {method!r}, '
                   f'which is not HistoryBuffer.{name}')


def weights_only_load(file, map_location=None, weights_only=None):
    """Stands in for onedl-mmengine's ``_safe_torch_load``.

    OneDL's loader (the local-file, backend and local ``open-mmlab://``
    schemes of its CheckpointLoader; URLs go through torch.hub, untouched
    here) runs ``torch.load`` inside ``safe_globals`` of its own list, which
    adds
    mmengine's unchecked ``HistoryBuffer`` and a plain ``getattr`` beside
    this glue's checked ones (which wins is the order of a set), removes
    the glue's entries when it exits, and on an UnpicklingError loads the
    file again with ``weights_only=False``: a record this glue refuses
    would then be unpickled without limits. Here the default load is
    weights-only with the glue's list and a refusal is raised; a caller's
    explicit ``weights_only`` is kept.
    """
    if weights_only is not None:
        return torch.load(file, map_location=map_location,
                          weights_only=weights_only)
    if not named_entries_supported():
        # torch < 2.6 cannot take the records' entries, and mmengine does
        # not load weights-only there: as OneDL does.
        return torch.load(file, map_location=map_location)
    allow_records_in_checkpoints(checked_history_buffer())
    return torch.load(file, map_location=map_location, weights_only=True)


def _allow_mmengine_checkpoints():
    allow_records_in_checkpoints(checked_history_buffer())
    from mmengine.runner import checkpoint
    if hasattr(checkpoint, '_safe_torch_load'):  # onedl-mmengine
        checkpoint._safe_torch_load = weights_only_load
    # Again before each load of a local file: a torch.serialization
    # .safe_globals context of other code (transformers' Trainer resume)
    # removes the entries it listed when it exits, ours among them.
    from mmengine.runner.checkpoint import CheckpointLoader
    local = CheckpointLoader._schemes['']
    if getattr(local, '_sar_patched', False):
        return

    @functools.wraps(local)
    def load_from_local(filename, map_location):
        allow_records_in_checkpoints(checked_history_buffer())
        return local(filename, map_location)

    load_from_local._sar_patched = True
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local,
                                     force=True)


# --------------------------------------------------------------------------
# Shim 4: a SAR checkpoint loaded into its baseline twin.
# mmengine loads state dicts non-strictly (mmseg's tools/test.py, load_from,
# mmseg.apis.init_model, the inferencers); a SAR checkpoint keeps the decode
# head under decode_head.head., so the twin's head stayed random with only
# a missing/unexpected-key warning: wrong results. For a model without
# SARHead, a SAR state dict is mapped to the plain layout as it is loaded
# (what tools/export_plain.py writes), as the 0.x tools do. The twins in
# configs/mmseg1x/baseline import sar for this; a config that does not
# cannot be helped here: export the checkpoint first. The same wrapper
# writes why SAR's state was left as built to the run's log
# (log_load_reports).
def _patch_load_state_dict():
    from mmengine.runner import checkpoint
    original = checkpoint.load_state_dict
    if getattr(original, '_sar_patched', False):
        return

    @functools.wraps(original)
    def load_state_dict(module, state_dict, strict=False, logger=None):
        try:
            return original(module, plain_state_dict_for(module, state_dict),
                            strict, logger)
        finally:
            log_load_reports(module, logger)

    load_state_dict._sar_patched = True
    checkpoint.load_state_dict = load_state_dict


def log_load_reports(module, logger=None):
    """Why SAR's state was left as built (fine-tuning into other classes
    or widths), in the run's log: the core says it in a Python warning,
    which mmengine's logger does not capture, and mmengine only lists the
    keys as missing. ``logger`` None means mmengine's current logger."""
    from mmengine.logging import print_log

    from ..core.regularizer import pop_load_reports
    for report in pop_load_reports(module):
        print_log(f'{report} (mmengine lists these keys as missing.)',
                  logger=logger or 'current', level=logging.WARNING)


def plain_state_dict_for(module, state_dict):
    """``state_dict`` as ``module`` can load it: a SAR segmentor's state
    dict in the plain layout when ``module`` has no SARHead, otherwise
    unchanged (SARHead takes both layouts itself).

    Args:
        module (nn.Module): the model being loaded, possibly wrapped.
        state_dict (dict): what is loaded into it.
    """
    from mmengine.model import is_model_wrapper

    from ..checkpoints.convert import (is_sar_state_dict,
                                       sar_to_plain_state_dict)
    from .sar_head import SARHead
    model = module.module if is_model_wrapper(module) else module
    if not is_sar_state_dict(state_dict) or any(
            isinstance(m, SARHead) for m in model.modules()):
        return state_dict
    warnings.warn(
        'sar: loading a SAR checkpoint into a model without SARHead: the '
        'anchor branch is dropped and the decode head taken from '
        "decode_head.head (as tools/export_plain.py does; export it so for "
        'stock mmseg without sar)')
    return sar_to_plain_state_dict(state_dict)


# --------------------------------------------------------------------------
# Shim 5: SAR's diagnostics as interval means in the training log.
# mmengine's LogProcessor averages (over window_size, 10 by default) only
# the keys its mean_pattern matches (loss, time, grad_norm) and logs the
# last iteration's value of every other key. sar.gate_open logged every 50
# iterations read 0.0 when the gate had been open in 40 of them, and the
# demo's report (sar.evaluation.report.gate_summary, which reads interval
# means, as mmseg 0.x's logger writes) said it never opened. The averaged
# diagnostics below are logged as the mean over the iterations since the
# previous log line (LoggerHook logs every `interval` iterations and at the
# end of each pass over the data), unless the config's
# log_processor.custom_cfg names them itself. sar.iters_since_init, a
# counter, keeps its current value.
AVERAGED_DIAGNOSTICS = ('sar.anchor_acc', 'sar.gate_open',
                        'sar.anchor_max_cos', 'sar.nonfinite')


def _patch_log_processor():
    from mmengine.runner import LogProcessor
    original = LogProcessor.get_log_after_iter
    if getattr(original, '_sar_patched', False):
        return

    @functools.wraps(original)
    def get_log_after_iter(self, runner, batch_idx, mode):
        extra = diagnostics_log_cfg(self, runner, batch_idx) \
            if mode == 'train' else []
        if not extra:
            return original(self, runner, batch_idx, mode)
        configured = self.custom_cfg
        self.custom_cfg = configured + extra
        try:
            return original(self, runner, batch_idx, mode)
        finally:
            self.custom_cfg = configured

    get_log_after_iter._sar_patched = True
    LogProcessor.get_log_after_iter = get_log_after_iter


def diagnostics_log_cfg(log_processor, runner, batch_idx):
    """``custom_cfg`` entries averaging SAR's diagnostics over the
    iterations since the previous training log line; called once per line.

    Args:
        log_processor (LogProcessor): the runner's; it keeps the iteration
            of its last training line.
        runner (Runner): the runner (``iter``: iterations done before the
            one logged; its LoggerHook's ``interval`` gives the first
            window of a process, ``window_size`` without one).
        batch_idx (int): the iteration being logged, as LoggerHook passes
            it (the iteration, or the batch within the epoch).

    Returns:
        list[dict]: one ``mean`` entry per diagnostic key in the message
        hub that ``custom_cfg`` does not name already.
    """
    from mmengine.hooks import LoggerHook
    logged = runner.iter + 1
    previous = getattr(log_processor, '_sar_logged_iter', None)
    log_processor._sar_logged_iter = logged
    if previous is not None and previous < logged:
        window = logged - previous
    else:  # the first line of this process (a resumed run's too)
        interval = next((h.interval for h in getattr(runner, 'hooks', [])
                         if isinstance(h, LoggerHook)),
                        log_processor.window_size)
        if not isinstance(interval, int) or interval < 1:
            return []
        window = batch_idx % interval + 1
    configured = {c.get('data_src') for c in log_processor.custom_cfg}
    keys = [k[len('train/'):] for k in runner.message_hub.log_scalars
            if k.startswith('train/')]
    return [dict(data_src=k, method_name='mean', window_size=window)
            for k in keys if k not in configured and any(
                k == name or k.endswith('.' + name)
                for name in AVERAGED_DIAGNOSTICS)]


# --------------------------------------------------------------------------
# Shim 6: `mmseg::` configs under OneDL's fork.
# mmengine resolves `_base_ = ['mmseg::...']` through its table
# MODULE2PACKAGE ('mmseg' -> the distribution 'mmsegmentation') and reads
# that distribution's files; OneDL installs the module mmseg as the
# distribution 'onedl-mmsegmentation', which the table of onedl-mmengine
# does not name. Where the named distribution is absent, the scope is
# mapped to the one that provides the module.
def _map_scopes_to_installed():
    from importlib import metadata

    from mmengine.config import utils
    table = utils.MODULE2PACKAGE
    for module in ('mmseg', ):
        try:
            metadata.distribution(table.get(module, module))
        except metadata.PackageNotFoundError:
            providers = metadata.packages_distributions().get(module, [])
            if providers:
                table[module] = providers[0]


def apply():
    """Apply every shim; safe to call more than once."""
    _map_scopes_to_installed()
    _patch_init_dist()
    _patch_wrap_model()
    _allow_mmengine_checkpoints()
    _patch_load_state_dict()
    _patch_log_processor()
