"""SAR's cost against its baseline twin under mmseg 1.x: what
:mod:`sar.evaluation.overhead` needs of this generation.

A variant built from its config (mmengine's ``Config``), a fixed batch of
mmseg 1.x's form (``inputs`` and ``SegDataSample``s, through the model's
data preprocessor), one training iteration as mmengine's runner runs it
(``train_step`` with the config's optimizer wrapper), one test-time
forward (``test_step``) and the test-time logits.
"""
import os.path as osp

import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData

from ..evaluation.overhead import config_path, configure_variant

# The checkout: configs/ lies beside the package.
ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
PAPER = ('configs/mmseg1x/baseline/fcn_hr48_4xb4-160k_ade20k-512x512.py',
         'configs/mmseg1x/sar/sar_fcn_hr48_4xb4-160k_ade20k-512x512.py')
SMOKE = ('configs/mmseg1x/demo/fcn_r18slim-d8_1xb8-3000_digitscenes-lt-'
         '64x64.py',
         'configs/mmseg1x/demo/sar_fcn_r18slim-d8_1xb8-3000_digitscenes-lt-'
         '64x64.py')


def build(args, variant):
    """(model, optimizer wrapper) of ``variant``, random weights from
    ``args.seed``, SyncBN reverted (one process), on ``args.device``. The
    data preprocessor pads to the measured size, not the config's crop."""
    from mmseg.registry import MODELS
    path = config_path(args, variant)
    cfg = configure_variant(Config.fromfile(path), variant, path)
    preprocessor = cfg.model.get('data_preprocessor') or {}
    if preprocessor.get('size') is not None:
        preprocessor['size'] = (args.size, args.size)
    init_default_scope('mmseg')
    torch.manual_seed(args.seed)
    model = revert_sync_batchnorm(MODELS.build(cfg.model)).to(args.device)
    return model, build_optim_wrapper(model, cfg.optim_wrapper)


def fixed_batch(model, args):
    from mmseg.structures import SegDataSample
    head = model.decode_head
    g = torch.Generator().manual_seed(args.seed)
    b, s = args.batch, args.size
    imgs = torch.rand(b, 3, s, s, generator=g) * 255
    gt = torch.randint(0, head.num_classes, (b, 1, s, s), generator=g)
    gt[:, :, :max(s // 16, 1)] = head.ignore_index  # as real data sets have
    samples = []
    for label in gt:
        sample = SegDataSample(metainfo=dict(
            img_shape=(s, s), ori_shape=(s, s), pad_shape=(s, s)))
        sample.gt_sem_seg = PixelData(data=label)
        samples.append(sample)
    return dict(inputs=list(imgs), data_samples=samples)


def train_step(model, optim_wrapper, batch):
    """One training iteration as mmengine's runner does it: preprocess,
    forward, losses parsed and the optimizer wrapper's update."""
    model.train()
    return model.train_step(batch, optim_wrapper)


@torch.no_grad()
def test_step(model, batch):
    model.eval()
    return model.test_step(batch)


@torch.no_grad()
def logits(model, batch):
    """The test-mode logits at the input size (before resizing)."""
    model.eval()
    data = model.data_preprocessor(batch, False)
    return model.encode_decode(
        data['inputs'], [sample.metainfo for sample in data['data_samples']])
