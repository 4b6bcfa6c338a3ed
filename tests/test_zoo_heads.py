"""SARHead over every decode-head type of mmseg 0.30's own zoo configs.

For each type, one representative zoo config (a small backbone where the zoo
has one) is built with that head wrapped in SARHead and trained one step on
CPU, or the wrap is refused at build time with the documented message.
"""
import collections
import glob
import os.path as osp

import mmseg
import pytest
import torch
from mmcv.cnn.utils import revert_sync_batchnorm
from mmcv.utils import Config
from mmseg.models import build_segmentor

from conftest import tiny_batch

ZOO = osp.join(osp.dirname(mmseg.__file__), '.mim', 'configs')
UNSUPPORTED = {'PointHead', 'SegmenterMaskTransformerHead',
               'IterativeDecodeHead'}
REPRESENTATIVES = {
    'ANNHead': 'ann/ann_r50-d8_512x512_80k_ade20k.py',
    'APCHead': 'apcnet/apcnet_r50-d8_512x512_80k_ade20k.py',
    'ASPPHead': 'deeplabv3/deeplabv3_r18-d8_769x769_80k_cityscapes.py',
    'CCHead': 'ccnet/ccnet_r50-d8_512x512_80k_ade20k.py',
    'DAHead': 'danet/danet_r50-d8_512x512_80k_ade20k.py',
    'DMHead': 'dmnet/dmnet_r50-d8_512x512_80k_ade20k.py',
    'DNLHead': 'dnlnet/dnl_r50-d8_512x512_80k_ade20k.py',
    'DPTHead': 'dpt/dpt_vit-b16_512x512_160k_ade20k.py',
    'DepthwiseSeparableASPPHead':
    'deeplabv3plus/deeplabv3plus_r18-d8_512x512_80k_loveda.py',
    'DepthwiseSeparableFCNHead':
    'fastscnn/fast_scnn_lr0.12_8x4_160k_cityscapes.py',
    'EMAHead': 'emanet/emanet_r50-d8_769x769_80k_cityscapes.py',
    'EncHead': 'encnet/encnet_r50-d8_512x512_80k_ade20k.py',
    'FCNHead': 'fcn/fcn_r18-d8_769x769_80k_cityscapes.py',
    'FPNHead': 'sem_fpn/fpn_r50_512x512_160k_ade20k.py',
    'GCHead': 'gcnet/gcnet_r50-d8_512x512_80k_ade20k.py',
    'ISAHead': 'isanet/isanet_r50-d8_512x512_80k_ade20k.py',
    'IterativeDecodeHead':
    'knet/knet_s3_fcn_r50-d8_8x2_512x512_adamw_80k_ade20k.py',
    'LRASPPHead': 'mobilenet_v3/lraspp_m-v3-d8_512x1024_320k_cityscapes.py',
    'NLHead': 'nonlocal_net/nonlocal_r50-d8_512x512_80k_ade20k.py',
    'OCRHead': 'ocrnet/ocrnet_hr18_512x512_80k_ade20k.py',
    'PSAHead': 'psanet/psanet_r50-d8_512x512_80k_ade20k.py',
    'PSPHead': 'pspnet/pspnet_r18-d8_512x512_80k_loveda.py',
    'PointHead': 'point_rend/pointrend_r50_512x512_160k_ade20k.py',
    'SETRMLAHead': 'setr/setr_mla_512x512_160k_b8_ade20k.py',
    'SETRUPHead': 'setr/setr_pup_512x512_160k_b16_ade20k.py',
    'SegformerHead': 'segformer/segformer_mit-b0_512x512_160k_ade20k.py',
    'SegmenterMaskTransformerHead':
    'segmenter/segmenter_vit-s_mask_8x1_512x512_160k_ade20k.py',
    'UPerHead': 'upernet/upernet_r18_512x512_80k_ade20k.py',
}
# Input side per head type where 64 px does not fit the config: PSA's
# attention mask size is tied to the feature size of its crop; LR-ASPP
# pools its 1/8 features with a fixed 49x49 window.
INPUT_SIZE = collections.defaultdict(lambda: 64, PSAHead=None,
                                     LRASPPHead=416)


def zoo_configs():
    return sorted(f for f in glob.glob(osp.join(ZOO, '*', '*.py'))
                  if '/_base_/' not in f)


def decode_heads(model_cfg):
    heads = model_cfg.get('decode_head')
    return heads if isinstance(heads, list) else [heads]


def test_table_covers_every_head_type_in_the_zoo():
    seen = collections.Counter()
    files = zoo_configs()
    for path in files:
        for head in decode_heads(Config.fromfile(path).model):
            seen[head['type']] += 1
    assert len(files) > 600  # mmseg 0.30 ships 644 model configs
    assert set(seen) == set(REPRESENTATIVES), set(seen) ^ set(REPRESENTATIVES)


def wrapped_model(head_type):
    cfg = Config.fromfile(osp.join(ZOO, REPRESENTATIVES[head_type]))
    model_cfg = cfg.model
    model_cfg.pretrained = None
    model_cfg.backbone.pop('init_cfg', None)
    heads = decode_heads(model_cfg)
    index = [h['type'] for h in heads].index(head_type)
    heads[index] = dict(type='SARHead', head=heads[index])
    if isinstance(model_cfg.decode_head, list):
        model_cfg.decode_head = heads
    else:
        model_cfg.decode_head = heads[0]
    return model_cfg, index


@pytest.mark.parametrize('head_type', sorted(REPRESENTATIVES))
def test_wrap_zoo_head(head_type):
    model_cfg, index = wrapped_model(head_type)
    if head_type in UNSUPPORTED:
        with pytest.raises(TypeError, match=f'SARHead cannot wrap '
                           f'{head_type}.*Supported:'):
            build_segmentor(model_cfg)
        return
    torch.manual_seed(0)
    model = revert_sync_batchnorm(build_segmentor(model_cfg))
    model.train()
    size = INPUT_SIZE[head_type] or _psa_input_size(model_cfg)
    num_classes = decode_heads(model_cfg)[index]['head']['num_classes']
    img, metas, gt = tiny_batch(num_classes, B=2, size=size)
    losses = model.forward_train(img, metas, gt)
    cascade = isinstance(model.decode_head, torch.nn.ModuleList)
    prefix = f'decode_{index}' if cascade else 'decode'
    for key in ('loss_sar_pull', 'loss_sar_anchor_ce', 'sar.anchor_acc'):
        assert f'{prefix}.{key}' in losses, sorted(losses)
    loss, _ = model._parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()
    projector = model.decode_head
    if isinstance(projector, torch.nn.ModuleList):
        projector = projector[index]
    grad = projector.sar_loss.projector.fc1.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def _psa_input_size(model_cfg):
    # PSANet's mask is (2h - 1, 2w - 1) for an h x w feature map at 1/8.
    mask_h = decode_heads(model_cfg)[0]['head']['mask_size'][0]
    return ((mask_h + 1) // 2) * 8
