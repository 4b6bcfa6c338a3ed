# SAR as in the paper over
# ../baseline/fcn_hr48_4xb4-40k_pascal-context-59-480x480.py:
# its decode head wrapped in SARHead, nothing else changed.
_base_ = '../baseline/fcn_hr48_4xb4-40k_pascal-context-59-480x480.py'
custom_imports = dict(imports=['sar'], allow_failed_imports=False)
model = dict(
    decode_head=dict(
        _delete_=True,
        type='SARHead',
        head={{_base_.model.decode_head}},
        sar_loss=dict(
            type='SemanticAnchorLoss',
            pull_weight=0.1,  # paper: trade_off
            anchor_ce_weight=1.0,  # paper: trade_off_ce
            filter_conf=0.9,
            update_conf=0.8,
            ema_momentum=0.999,
            anchor_init='gaussian',
            distance='mse',
            pull_mode='gate')))
