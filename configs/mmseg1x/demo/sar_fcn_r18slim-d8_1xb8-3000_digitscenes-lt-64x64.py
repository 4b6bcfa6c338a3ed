# SAR over the DigitScenes-LT demo baseline in mmseg 1.x: the decode head
# wrapped, the paper's defaults (as the 0.x demo).
_base_ = './fcn_r18slim-d8_1xb8-3000_digitscenes-lt-64x64.py'
custom_imports = dict(imports=['sar'], allow_failed_imports=False)
model = dict(
    decode_head=dict(
        _delete_=True,
        type='SARHead',
        head=_base_.model.decode_head,
        sar_loss=dict(type='SemanticAnchorLoss')))
