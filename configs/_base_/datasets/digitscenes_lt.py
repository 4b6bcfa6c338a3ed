# DigitScenes-LT (tools/prepare_digitscenes.py): 64x64 scenes of handwritten
# digits, long-tailed training split (imbalance ratio 50), balanced val.
# DigitScenesDataset is registered by `import sar` (tools/train.py and
# tools/test.py import it; mmseg's own tools need
# custom_imports = dict(imports=['sar'])).
dataset_type = 'DigitScenesDataset'
data_root = 'data/digitscenes-lt'
img_norm_cfg = dict(
    mean=[127.5, 127.5, 127.5], std=[73.6, 73.6, 73.6], to_rgb=True)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    # Digits are not mirror-symmetric: never flipped. Kept (prob 0) because
    # Collect's default meta keys include the flip flags it sets.
    dict(type='RandomFlip', prob=0.0),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='DefaultFormatBundle'),
    dict(type='Collect', keys=['img', 'gt_semantic_seg']),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='MultiScaleFlipAug',
        img_scale=(64, 64),
        flip=False,
        transforms=[
            dict(type='Resize', keep_ratio=True),
            dict(type='RandomFlip'),
            dict(type='Normalize', **img_norm_cfg),
            dict(type='ImageToTensor', keys=['img']),
            dict(type='Collect', keys=['img']),
        ])
]
data = dict(
    samples_per_gpu=8,
    workers_per_gpu=0,
    persistent_workers=False,
    # Repeated so that an epoch is long: mmcv's IterLoader sleeps 2 s at
    # every epoch boundary, which would dominate a small data set's run.
    train=dict(
        type='RepeatDataset',
        times=50,
        dataset=dict(type=dataset_type, data_root=data_root,
                     img_dir='img_dir/train', ann_dir='ann_dir/train',
                     pipeline=train_pipeline)),
    val=dict(type=dataset_type, data_root=data_root, img_dir='img_dir/val',
             ann_dir='ann_dir/val', pipeline=test_pipeline),
    test=dict(type=dataset_type, data_root=data_root, img_dir='img_dir/val',
              ann_dir='ann_dir/val', pipeline=test_pipeline))
