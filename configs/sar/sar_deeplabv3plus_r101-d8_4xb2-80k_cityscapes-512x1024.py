# SAR with the paper's defaults over
# ../baseline/deeplabv3plus_r101-d8_4xb2-80k_cityscapes-512x1024.py:
# its decode head wrapped in SARHead, nothing else changed.
_base_ = '../baseline/deeplabv3plus_r101-d8_4xb2-80k_cityscapes-512x1024.py'
custom_imports = dict(imports=['sar'], allow_failed_imports=False)
model = dict(
    decode_head=dict(
        _delete_=True,
        type='SARHead',
        head={{_base_.model.decode_head}},
        sar_loss=dict(type='SemanticAnchorLoss')))
