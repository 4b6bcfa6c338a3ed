# The generated shapes data set (sar.data.make_shapes_dataset), 64x64.
dataset_type = 'CustomDataset'
data_root = 'data/shapes'
classes = ('background', 'square', 'disc', 'bar')
palette = [[0, 0, 0], [220, 20, 60], [0, 128, 255], [255, 200, 0]]
img_norm_cfg = dict(
    mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
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
split = dict(
    type=dataset_type, data_root=data_root, classes=classes, palette=palette,
    img_suffix='.png', seg_map_suffix='.png')
data = dict(
    samples_per_gpu=4,
    workers_per_gpu=0,
    persistent_workers=False,
    # Repeated so that an epoch is long: mmcv's IterLoader sleeps 2 s at
    # every epoch boundary, which would dominate a small data set's run.
    train=dict(
        type='RepeatDataset',
        times=100,
        dataset=dict(**split, img_dir='img_dir/train',
                     ann_dir='ann_dir/train', pipeline=train_pipeline)),
    val=dict(**split, img_dir='img_dir/val', ann_dir='ann_dir/val',
             pipeline=test_pipeline),
    test=dict(**split, img_dir='img_dir/val', ann_dir='ann_dir/val',
              pipeline=test_pipeline))
