# Baseline twin of ../sar/sar_fcn_hr48_4xb4-160k_ade20k-512x512.py:
# mmseg 1.x's own hrnet/fcn_hr48_4xb4-160k_ade20k-512x512.py,
# unchanged but for the paper's seed.
_base_ = ['mmseg::hrnet/fcn_hr48_4xb4-160k_ade20k-512x512.py']
randomness = dict(seed=1270964153)
