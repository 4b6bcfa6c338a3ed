# SAR as in the paper over
# ../baseline/fcn_hr48_4xb4-160k_ade20k-512x512.py
# (mmseg 1.x): its decode head wrapped in SARHead, nothing else changed.
_base_ = [
    '../baseline/fcn_hr48_4xb4-160k_ade20k-512x512.py',
    '../../_base_/sar_paper.py'
]
custom_imports = dict(imports=['sar'], allow_failed_imports=False)
model = dict(
    decode_head=dict(
        _delete_=True,
        type='SARHead',
        head=_base_.model.decode_head,
        sar_loss=_base_.sar_loss))
