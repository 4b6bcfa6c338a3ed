# SAR with the paper's defaults over
# ../baseline/ocrnet_hr48_4xb2-80k_cityscapes-512x1024.py:
# the last (OCR) head of the cascade wrapped in SARHead, nothing else changed.
# mmcv configs cannot address one item of a base list, so the two heads are
# restated here with the base's values.
_base_ = '../baseline/ocrnet_hr48_4xb2-80k_cityscapes-512x1024.py'
custom_imports = dict(imports=['sar'], allow_failed_imports=False)
norm_cfg = dict(type='SyncBN', requires_grad=True)
hr48_channels = [48, 96, 192, 384]
model = dict(decode_head=[
    dict(
        type='FCNHead',
        in_channels=hr48_channels,
        channels=sum(hr48_channels),
        input_transform='resize_concat',
        in_index=(0, 1, 2, 3),
        kernel_size=1,
        num_convs=1,
        norm_cfg=norm_cfg,
        concat_input=False,
        dropout_ratio=-1,
        num_classes=19,
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    dict(
        type='SARHead',
        head=dict(
            type='OCRHead',
            in_channels=hr48_channels,
            channels=512,
            ocr_channels=256,
            input_transform='resize_concat',
            in_index=(0, 1, 2, 3),
            norm_cfg=norm_cfg,
            dropout_ratio=-1,
            num_classes=19,
            align_corners=False,
            loss_decode=dict(
                type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
        sar_loss=dict(type='SemanticAnchorLoss')),
])
