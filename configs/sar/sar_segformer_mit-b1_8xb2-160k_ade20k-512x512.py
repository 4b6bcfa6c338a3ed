# SAR with the paper's defaults over
# ../baseline/segformer_mit-b1_8xb2-160k_ade20k-512x512.py:
# its decode head wrapped in SARHead, nothing else changed.
_base_ = '../baseline/segformer_mit-b1_8xb2-160k_ade20k-512x512.py'
custom_imports = dict(imports=['sar'], allow_failed_imports=False)
model = dict(
    decode_head=dict(
        _delete_=True,
        type='SARHead',
        head={{_base_.model.decode_head}},
        sar_loss=dict(type='SemanticAnchorLoss')))
