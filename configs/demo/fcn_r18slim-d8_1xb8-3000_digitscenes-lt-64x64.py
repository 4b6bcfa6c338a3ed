# Baseline twin of sar_fcn_r18slim-d8_1xb8-3000_digitscenes-lt-64x64.py:
# the same model, data and schedule without SAR. CPU-sized (a few minutes on
# two cores); `make demo` trains and tests both.
import os.path as osp

import mmseg

_base_ = [
    '../_base_/models/fcn_r18slim-d8.py',
    '../_base_/datasets/digitscenes_lt.py',
    osp.join(osp.dirname(mmseg.__file__), '.mim', 'configs', '_base_',
             'default_runtime.py')
]
optimizer = dict(type='SGD', lr=0.05, momentum=0.9, weight_decay=5e-4)
optimizer_config = dict()
lr_config = dict(policy='poly', power=0.9, min_lr=1e-4, by_epoch=False)
runner = dict(type='IterBasedRunner', max_iters=3000)
checkpoint_config = dict(by_epoch=False, interval=3000)
evaluation = dict(interval=3000, metric='mIoU', pre_eval=True)
log_config = dict(interval=50, hooks=[dict(type='TextLoggerHook',
                                           by_epoch=False)])
seed = 1270964153
