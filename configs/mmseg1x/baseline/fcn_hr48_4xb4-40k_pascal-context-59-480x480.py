# Baseline twin of ../sar/sar_fcn_hr48_4xb4-40k_pascal-context-59-480x480.py:
# mmseg 1.x's own hrnet/fcn_hr48_4xb4-40k_pascal-context-59-480x480.py,
# unchanged but for the paper's seed.
_base_ = ['mmseg::hrnet/fcn_hr48_4xb4-40k_pascal-context-59-480x480.py']
randomness = dict(seed=1270964153)
