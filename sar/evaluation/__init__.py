"""Evaluation: feature statistics, aggregation over seeds, tables, pictures,
and the cost measurement of tools/benchmark_overhead.py.

Takes tensors, arrays, built models and the files mmseg writes (its
evaluation dict, its json training log), never a runner, so both mmseg
generations use it; where a generation's API is needed (building and
stepping a model in :mod:`.overhead`), the caller passes that
generation's glue module in. torch, numpy and prettytable; matplotlib is
imported by the plotting functions alone; nothing here imports mmcv or
mmseg.
"""
