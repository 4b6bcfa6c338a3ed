# Baseline twin of ../sar/sar_upernet_swin-t_8xb2-160k_ade20k-512x512.py:
# mmseg's own swin/upernet_swin_tiny_patch4_window7_512x512_160k_ade20k_pretrain_224x224_1K.py,
# unchanged but for the paper's seed.
import os.path as osp

import mmseg

_base_ = osp.join(
    osp.dirname(mmseg.__file__), '.mim', 'configs', 'swin',
    'upernet_swin_tiny_patch4_window7_512x512_160k_ade20k_pretrain_224x224_1K.py')
seed = 1270964153
