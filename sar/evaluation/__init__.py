"""Evaluation: feature statistics, aggregation over seeds, tables, pictures.

Takes tensors, arrays and the files mmseg writes (its evaluation dict, its
json training log), never a runner, so both mmseg generations use it.
torch, numpy and prettytable; matplotlib is imported by the plotting
functions alone; nothing here imports mmcv or mmseg.
"""
