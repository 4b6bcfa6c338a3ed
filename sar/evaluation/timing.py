"""Interleaved timing of alternatives, and robust ratios over the steps.

For benchmarks that compare models step by step on one machine: the
alternatives take turns in every step (the order rotated), so that slow
drifts of a shared machine touch all of them alike, and ratios are medians
of per-step ratios. Plain Python and torch; ``sync`` is the device's
synchronisation (``torch.cuda.synchronize`` or nothing).
"""
import statistics
import time


def timed(fn, sync=None):
    """Wall-clock and process CPU seconds of one call of ``fn``.

    Returns:
        tuple: (wall seconds, CPU seconds, fn's output).
    """
    if sync:
        sync()
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    if sync:
        sync()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def interleaved(fns, steps, warmup, sync=None):
    """Seconds per call of each fn, taking turns (order rotated each step).

    Args:
        fns (dict): name -> callable without arguments.
        steps (int): timed calls of each.
        warmup (int): untimed calls of each first.
        sync (callable, optional): the device's synchronisation.

    Returns:
        tuple: wall-clock times and process CPU times (name -> list of
        ``steps`` seconds), and each fn's last output.
    """
    times = {name: [] for name in fns}
    cpu_times = {name: [] for name in fns}
    outs = {}
    names = list(fns)
    for i in range(warmup + steps):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            wall, cpu, outs[name] = timed(fns[name], sync)
            if i >= warmup:
                times[name].append(wall)
                cpu_times[name].append(cpu)
    return times, cpu_times, outs


def median_ratio(num, den):
    """Median of the per-step ratios ``num[i] / den[i]``."""
    return statistics.median(a / b for a, b in zip(num, den))


def spread(values):
    """Interquartile range over median: the run's timing noise."""
    if len(values) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4)
    return (q3 - q1) / statistics.median(values)
