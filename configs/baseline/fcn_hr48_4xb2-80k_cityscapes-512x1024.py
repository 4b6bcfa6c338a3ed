# Baseline twin of ../sar/sar_fcn_hr48_4xb2-80k_cityscapes-512x1024.py:
# mmseg's own hrnet/fcn_hr48_512x1024_80k_cityscapes.py,
# unchanged but for the paper's seed.
import os.path as osp

import mmseg

_base_ = osp.join(
    osp.dirname(mmseg.__file__), '.mim', 'configs', 'hrnet',
    'fcn_hr48_512x1024_80k_cityscapes.py')
seed = 1270964153
