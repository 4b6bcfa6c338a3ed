# Baseline twin of ../sar/sar_segformer_mit-b0_8xb2-160k_ade20k-512x512.py:
# mmseg's own segformer/segformer_mit-b0_512x512_160k_ade20k.py,
# unchanged but for the paper's seed.
import os.path as osp

import mmseg

_base_ = osp.join(
    osp.dirname(mmseg.__file__), '.mim', 'configs', 'segformer',
    'segformer_mit-b0_512x512_160k_ade20k.py')
seed = 1270964153
