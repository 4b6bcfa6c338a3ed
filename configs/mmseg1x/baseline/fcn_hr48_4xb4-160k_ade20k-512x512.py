# Baseline twin of ../sar/sar_fcn_hr48_4xb4-160k_ade20k-512x512.py:
# mmseg 1.x's own hrnet/fcn_hr48_4xb4-160k_ade20k-512x512.py,
# unchanged but for the paper's seed and `import sar`: the glue's shims then
# serve the twin as they serve SAR in mmseg's own tools (mmengine 0.10's
# checkpoints under torch >= 2.6, CPU ranks, a SAR checkpoint loaded into
# the twin); the model is mmseg's, untouched.
_base_ = ['mmseg::hrnet/fcn_hr48_4xb4-160k_ade20k-512x512.py']
randomness = dict(seed=1270964153)
custom_imports = dict(imports=['sar'], allow_failed_imports=False)
