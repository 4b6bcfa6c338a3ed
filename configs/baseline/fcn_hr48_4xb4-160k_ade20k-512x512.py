# Baseline twin of ../sar/sar_fcn_hr48_4xb4-160k_ade20k-512x512.py:
# mmseg's own hrnet/fcn_hr48_512x512_160k_ade20k.py,
# unchanged but for the paper's seed.
import os.path as osp

import mmseg

_base_ = osp.join(
    osp.dirname(mmseg.__file__), '.mim', 'configs', 'hrnet',
    'fcn_hr48_512x512_160k_ade20k.py')
seed = 1270964153
