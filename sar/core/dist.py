"""Cross-process agreement on the anchor state (plain torch).

DDP averages gradients but not buffers (mmseg wraps models with
``broadcast_buffers=False``), so the gate decision and the EMA anchors are
reduced here, and the pre-defined anchors, drawn per process at build
time, are made rank 0's once. All are no-ops without an initialised process
group.
"""
import torch
import torch.distributed as dist


def _world():
    return dist.is_available() and dist.is_initialized() and \
        dist.get_world_size() > 1


def all_gate(gate):
    """True on every rank only if the gate is open on every rank.

    Elementwise, so that several flags agree in one collective.

    Shape: gate bool (any) -> bool (same).
    """
    if not _world():
        return gate
    flag = gate.to(torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return flag.bool()


def mean_across_ranks(tensor):
    """Average ``tensor`` over all ranks, in place; returns it."""
    if _world():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(dist.get_world_size())
    return tensor


def sum_across_ranks(tensor):
    """Add ``tensor`` over all ranks, in place; returns it."""
    if _world():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_from_first(tensor):
    """Overwrite ``tensor`` on every rank with rank 0's, in place; returns it.

    DDP does not broadcast buffers at wrap time when built with
    ``broadcast_buffers=False`` (mmseg's choice), so a buffer drawn from
    per-rank seeds (``--diff_seed``) stays per rank without this.
    """
    if _world():
        dist.broadcast(tensor, src=0)
    return tensor
