"""Write the 0.x glue's SAR training trace that the 1.x glue must reproduce.

    .venv/bin/python tests/mmseg1x/data/make_reference.py

Runs in the mmseg 0.30 environment (.venv): builds the 0.x ``SARHead`` over
a tiny FCN head, trains it a few SGD steps on one fixed batch and stores,
per step, every loss entry, every parameter's gradient and SAR's buffers
(gate, EMA anchors, counter), next to the initial weights and the batch:
``sar_0x_reference.pth`` (about 120 kB). tests/mmseg1x/test_reference.py
loads the same weights into the 1.x ``SARHead``, replays the steps and
compares.
The settings make the gate open within the run, so the EMA and the pull
are exercised as well as the closed gate.
"""
import os.path as osp

import torch

HEAD = dict(type='FCNHead', in_channels=6, channels=8, num_convs=1,
            concat_input=False, num_classes=3, dropout_ratio=0.0,
            norm_cfg=dict(type='BN'))
SAR_LOSS = dict(type='SemanticAnchorLoss', ema_momentum=0.5)
STEPS = 8
LR = 0.5
OUT = osp.join(osp.dirname(osp.abspath(__file__)), 'sar_0x_reference.pth')


def batch():
    """x (2, 6, 8, 8) features, labels (2, 1, 32, 32) with ignored rows."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 8, 8, generator=g)
    labels = torch.randint(0, 3, (2, 1, 32, 32), generator=g)
    labels[0, :, :4] = 255
    return x, labels


def main():
    import mmcv
    import mmseg
    from mmseg.models import build_head

    import sar
    assert sar.mmseg_generation() == 0, 'run me under .venv (mmseg 0.30)'
    torch.set_num_threads(1)  # the test replays on one thread too
    torch.manual_seed(0)
    head = build_head(dict(type='SARHead', head=HEAD, sar_loss=SAR_LOSS))
    head.init_weights()
    head.train()
    initial = {k: v.clone() for k, v in head.state_dict().items()}
    x, labels = batch()
    optimizer = torch.optim.SGD(head.parameters(), lr=LR)
    steps = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        losses = head.forward_train([x], [{}] * 2, labels, None)
        sum(v for k, v in losses.items() if 'loss' in k).backward()
        steps.append(dict(
            losses={k: v.detach().reshape(()) for k, v in losses.items()},
            grads={k: p.grad.clone() for k, p in head.named_parameters()
                   if p.grad is not None},
            buffers={k: v.clone() for k, v in
                     head.sar_loss.state_dict().items()
                     if 'projector' not in k}))
        optimizer.step()
    opened = [int(s['losses']['sar.gate_open']) for s in steps]
    assert 0 < sum(opened) < STEPS, f'gate {opened}: not both states'
    torch.save(dict(head=HEAD, sar_loss=SAR_LOSS, lr=LR, state_dict=initial,
                    x=x, labels=labels, steps=steps,
                    made_with=dict(torch=str(torch.__version__),
                                   mmcv=mmcv.__version__,
                                   mmseg=mmseg.__version__)), OUT)
    print(f'wrote {OUT}: gate per step {opened}')


if __name__ == '__main__':
    main()
