# Baseline twin of ../sar/sar_fcn_hr48_4xb4-40k_pascal-context-59-480x480.py:
# mmseg's own hrnet/fcn_hr48_480x480_40k_pascal_context_59.py,
# unchanged but for the paper's seed.
import os.path as osp

import mmseg

_base_ = osp.join(
    osp.dirname(mmseg.__file__), '.mim', 'configs', 'hrnet',
    'fcn_hr48_480x480_40k_pascal_context_59.py')
seed = 1270964153
