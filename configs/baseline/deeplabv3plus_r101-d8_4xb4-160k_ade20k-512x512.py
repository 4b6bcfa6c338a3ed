# Baseline twin of ../sar/sar_deeplabv3plus_r101-d8_4xb4-160k_ade20k-512x512.py:
# mmseg's own deeplabv3plus/deeplabv3plus_r101-d8_512x512_160k_ade20k.py,
# unchanged but for the paper's seed.
import os.path as osp

import mmseg

_base_ = osp.join(
    osp.dirname(mmseg.__file__), '.mim', 'configs', 'deeplabv3plus',
    'deeplabv3plus_r101-d8_512x512_160k_ade20k.py')
seed = 1270964153
