# Baseline twin of ../sar/sar_fcn_hr48_4xb2-80k_cityscapes-512x1024.py:
# mmseg 1.x's own hrnet/fcn_hr48_4xb2-80k_cityscapes-512x1024.py,
# unchanged but for the paper's seed.
_base_ = ['mmseg::hrnet/fcn_hr48_4xb2-80k_cityscapes-512x1024.py']
randomness = dict(seed=1270964153)
