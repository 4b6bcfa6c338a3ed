"""SAR's cost against its baseline twin under mmseg 0.30: what
:mod:`sar.evaluation.overhead` needs of this generation.

A variant built from its config (mmcv's ``Config``), a fixed batch of
mmseg 0.x's form, one training iteration as mmcv's runner and
OptimizerHook run it, one test-time forward (``simple_test``) and the
test-time logits.
"""
import os.path as osp

import torch
from mmcv.cnn.utils import revert_sync_batchnorm
from mmcv.runner import build_optimizer
from mmcv.utils import Config

from ..evaluation.overhead import config_path, configure_variant

# The checkout: configs/ lies beside the package.
ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
PAPER = ('configs/baseline/fcn_hr48_4xb4-160k_ade20k-512x512.py',
         'configs/sar/sar_fcn_hr48_4xb4-160k_ade20k-512x512.py')
SMOKE = ('configs/demo/fcn_hrtiny_1xb4-300_shapes-64x64.py',
         'configs/demo/sar_fcn_hrtiny_1xb4-300_shapes-64x64.py')


def build(args, variant):
    """(model, optimizer) of ``variant``, random weights from ``args.seed``,
    SyncBN reverted (one process), on ``args.device``."""
    from mmseg.models import build_segmentor
    path = config_path(args, variant)
    cfg = configure_variant(Config.fromfile(path), variant, path)
    torch.manual_seed(args.seed)
    model = revert_sync_batchnorm(build_segmentor(cfg.model)).to(args.device)
    return model, build_optimizer(model, cfg.optimizer)


def fixed_batch(model, args):
    head = model.decode_head
    g = torch.Generator().manual_seed(args.seed)
    b, s = args.batch, args.size
    img = torch.randn(b, 3, s, s, generator=g)
    gt = torch.randint(0, head.num_classes, (b, 1, s, s), generator=g)
    gt[:, :, :max(s // 16, 1)] = head.ignore_index  # as real data sets have
    meta = dict(img_shape=(s, s, 3), ori_shape=(s, s, 3), pad_shape=(s, s, 3),
                scale_factor=1.0, flip=False, flip_direction=None)
    return dict(img=img.to(args.device), img_metas=[dict(meta)] * b,
                gt_semantic_seg=gt.to(args.device))


def train_step(model, optimizer, batch):
    """One training iteration as mmcv's runner and OptimizerHook do it."""
    model.train()
    outputs = model.train_step(batch, optimizer)
    optimizer.zero_grad()
    outputs['loss'].backward()
    optimizer.step()
    return outputs['log_vars']


@torch.no_grad()
def test_step(model, batch):
    model.eval()
    return model.simple_test(batch['img'], batch['img_metas'], rescale=True)


@torch.no_grad()
def logits(model, batch):
    """The test-mode logits at the feature size (before resizing)."""
    model.eval()
    return model.encode_decode(batch['img'], batch['img_metas'])
