# Baseline twin of sar_fcn_r18slim-d8_1xb8-3000_digitscenes-lt-64x64.py in
# mmseg 1.x: the 0.x demo's model, data and schedule
# (../../demo/fcn_r18slim-d8_1xb8-3000_digitscenes-lt-64x64.py) without
# SAR. CPU-sized (a few minutes on two cores); mmseg 1.x's tools/train.py
# and tools/test.py run it. Deterministic mode is left to the command line
# (--cfg-options randomness.deterministic=True): mmengine then calls
# torch.use_deterministic_algorithms(True), under which CUDA's bilinear
# upsampling has no backward.
_base_ = [
    '../_base_/models/fcn_r18slim-d8.py',
    '../_base_/datasets/digitscenes_lt.py',
    'mmseg::_base_/default_runtime.py'
]
crop_size = (64, 64)
data_preprocessor = dict(size=crop_size)
model = dict(data_preprocessor=data_preprocessor)
optimizer = dict(type='SGD', lr=0.05, momentum=0.9, weight_decay=5e-4)
optim_wrapper = dict(type='OptimWrapper', optimizer=optimizer,
                     clip_grad=None)
param_scheduler = [
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=3000,
         by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=3000,
                 val_interval=3000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=3000),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
randomness = dict(seed=1270964153)
