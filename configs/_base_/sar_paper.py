# SAR as the paper sets it (trade_off 0.1, trade_off_ce 1, filter_conf 0.9,
# update_conf 0.8, EMA momentum 0.999, Gaussian anchors, squared L2 pull
# only in gate-open iterations); used by the three paper configs.
sar_loss = dict(
    type='SemanticAnchorLoss',
    pull_weight=0.1,  # paper: trade_off
    anchor_ce_weight=1.0,  # paper: trade_off_ce
    filter_conf=0.9,
    update_conf=0.8,
    ema_momentum=0.999,
    anchor_init='gaussian',
    distance='mse',
    pull_mode='gate')
