"""SARHead over every decode-head type of mmseg 1.x's own zoo configs.

The types are read from the shipped configs, so a new type fails the table
until it gets a representative. For each type, one representative zoo
config (the smallest backbone the zoo has for it) is built with that head
wrapped in SARHead and trained one step on CPU, or the wrap is refused at
build time with the documented message.
"""
import ast
import collections
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.structures import PixelData
from mmseg.registry import MODELS

from helpers1x import MIM, image_batch

ZOO = osp.join(MIM, 'configs')
# Heads SAR cannot read features from or classify anchors with, and why:
# none has a conv_seg. Built alone, without their backbones: the refusal
# needs nothing else (and SAN's and VPD's are CLIP and Stable Diffusion).
REFUSED = {
    'IterativeDecodeHead': 'K-Net: no conv_seg of its own, kernels',
    'PointHead': 'classifies points with its own fc_seg',
    'SegmenterMaskTransformerHead': 'patch-class products, no conv_seg',
    'SideAdapterCLIPHead': 'SAN: CLIP text queries, conv_seg deleted',
    'VPDDepthHead': 'depth regression, no conv_seg',
}
# mmseg builds these over mmdet's heads (not BaseDecodeHead, no conv_seg):
# refused when mmdet is installed, skipped otherwise (SAR does not need
# mmdet, and mmseg cannot build them without it).
NEED_MMDET = {'MaskFormerHead', 'Mask2FormerHead'}
REPRESENTATIVES = {
    'ANNHead': 'ann/ann_r50-d8_4xb4-80k_ade20k-512x512.py',
    'APCHead': 'apcnet/apcnet_r50-d8_4xb4-80k_ade20k-512x512.py',
    'ASPPHead': 'deeplabv3/deeplabv3_r18-d8_4xb2-80k_cityscapes-512x1024.py',
    'CCHead': 'ccnet/ccnet_r50-d8_4xb4-80k_ade20k-512x512.py',
    'DAHead': 'danet/danet_r50-d8_4xb4-80k_ade20k-512x512.py',
    'DDRHead':
    'ddrnet/ddrnet_23-slim_in1k-pre_2xb6-120k_cityscapes-1024x1024.py',
    'DMHead': 'dmnet/dmnet_r50-d8_4xb4-80k_ade20k-512x512.py',
    'DNLHead': 'dnlnet/dnl_r50-d8_4xb4-80k_ade20k-512x512.py',
    'DPTHead': 'dpt/dpt_vit-b16_8xb2-160k_ade20k-512x512.py',
    'DepthwiseSeparableASPPHead':
    'deeplabv3plus/deeplabv3plus_r18-d8_4xb4-80k_loveda-512x512.py',
    'DepthwiseSeparableFCNHead':
    'fastscnn/fast_scnn_8xb4-160k_cityscapes-512x1024.py',
    'EMAHead': 'emanet/emanet_r50-d8_4xb2-80k_cityscapes-512x1024.py',
    'EncHead': 'encnet/encnet_r50s-d8_4xb4-80k_ade20k-512x512.py',
    'FCNHead': 'fcn/fcn_r18-d8_4xb2-80k_cityscapes-512x1024.py',
    'FPNHead': 'sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py',
    'GCHead': 'gcnet/gcnet_r50-d8_4xb4-80k_ade20k-512x512.py',
    'ISAHead': 'isanet/isanet_r50-d8_4xb4-80k_ade20k-512x512.py',
    'IterativeDecodeHead':
    'knet/knet-s3_r50-d8_fcn_8xb2-adamw-80k_ade20k-512x512.py',
    'LRASPPHead':
    'mobilenet_v3/mobilenet-v3-d8-s_lraspp_4xb4-320k_cityscapes-512x1024.py',
    'LightHamHead':
    'segnext/segnext_mscan-t_1xb16-adamw-160k_ade20k-512x512.py',
    'Mask2FormerHead':
    'mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py',
    'MaskFormerHead':
    'maskformer/maskformer_r50-d32_8xb2-160k_ade20k-512x512.py',
    'NLHead': 'nonlocal_net/nonlocal_r50-d8_4xb4-80k_ade20k-512x512.py',
    'OCRHead': 'ocrnet/ocrnet_hr18s_4xb4-80k_ade20k-512x512.py',
    'PIDHead': 'pidnet/pidnet-s_2xb6-120k_1024x1024-cityscapes.py',
    'PSAHead': 'psanet/psanet_r50-d8_4xb4-80k_ade20k-512x512.py',
    'PSPHead': 'pspnet/pspnet_r18-d8_4xb2-80k_cityscapes-512x1024.py',
    'PointHead': 'point_rend/pointrend_r50_4xb4-160k_ade20k-512x512.py',
    'SETRMLAHead': 'setr/setr_vit-l_mla_8xb2-160k_ade20k-512x512.py',
    'SETRUPHead': 'setr/setr_vit-l_naive_8xb2-160k_ade20k-512x512.py',
    'SegformerHead': 'segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py',
    'SegmenterMaskTransformerHead':
    'segmenter/segmenter_vit-t_mask_8xb1-160k_ade20k-512x512.py',
    'SideAdapterCLIPHead': 'san/san-vit-b16_voc12aug-640x640.py',
    'UPerHead': 'upernet/upernet_r18_4xb4-80k_ade20k-512x512.py',
    'VPDDepthHead': 'vpd/vpd_sd_4xb8-25k_nyu-480x480.py',
}
# Where 64 px input does not fit the zoo config. PSANet's attention mask is
# (2h - 1, 2w - 1) for its h x w feature map at 1/8, i.e. tied to the crop:
# sized here for 64 px (at the config's own 66 x 66 the step costs 30x
# more). LR-ASPP pools its 1/8 features with a fixed 49 x 49 window.
HEAD_OVERRIDES = dict(PSAHead=dict(mask_size=(15, 15)))
INPUT_SIZE = collections.defaultdict(lambda: 64, LRASPPHead=49 * 8)
SAR_KEYS = ('loss_sar_pull', 'loss_sar_anchor_ce', 'sar.anchor_acc')


def _head_types(node):
    # The `type` of a dict(...) call or {...} literal, or of each in a list.
    if isinstance(node, (ast.List, ast.Tuple)):
        for item in node.elts:
            yield from _head_types(item)
    elif isinstance(node, ast.Call):
        yield from (k.value.value for k in node.keywords
                    if k.arg == 'type' and isinstance(k.value, ast.Constant))
    elif isinstance(node, ast.Dict):
        yield from (v.value for k, v in zip(node.keys, node.values)
                    if isinstance(k, ast.Constant) and k.value == 'type'
                    and isinstance(v, ast.Constant))


def zoo_head_types():
    """Every decode-head type written in a zoo config (bases included).

    Read from the source (``decode_head=...`` keywords and assignments):
    loading the 681 configs with mmengine takes over a minute; this finds
    the same types in under one second.

    Returns:
        dict: type name -> files that write it.
    """
    found = collections.defaultdict(set)
    for path in glob.glob(osp.join(ZOO, '**', '*.py'), recursive=True):
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == 'decode_head':
                value = node.value
            elif isinstance(node, ast.Assign) and any(
                    getattr(t, 'id', None) == 'decode_head'
                    for t in node.targets):
                value = node.value
            else:
                continue
            for head_type in _head_types(value):
                found[head_type].add(osp.relpath(path, ZOO))
    return found


def test_table_covers_every_head_type_in_the_zoo():
    models = [f for f in glob.glob(osp.join(ZOO, '*', '*.py'))
              if '/_base_/' not in f]
    assert len(models) > 600  # mmseg 1.2.2 ships 681 model configs
    found = zoo_head_types()
    assert set(found) == set(REPRESENTATIVES), \
        set(found) ^ set(REPRESENTATIVES)
    assert 'FCNHead' in found and 'OCRHead' in found  # the scan reads lists
    assert set(REFUSED) | NEED_MMDET < set(REPRESENTATIVES)


def decode_heads(model_cfg):
    heads = model_cfg.decode_head
    return heads if isinstance(heads, list) else [heads]


def representative(head_type):
    """The representative's model config and the index of the head."""
    cfg = Config.fromfile(osp.join(ZOO, REPRESENTATIVES[head_type]))
    types = [h.type for h in decode_heads(cfg.model)]
    assert head_type in types, types
    return cfg.model, types.index(head_type)


def wrapped(model_cfg, index):
    """The model config with its ``index``-th decode head in SARHead, no
    pretrained weights."""
    model_cfg.pop('pretrained', None)
    model_cfg.backbone.pop('init_cfg', None)
    model_cfg.backbone.pop('pretrained', None)
    heads = decode_heads(model_cfg)
    heads[index] = dict(type='SARHead', head=heads[index])
    if isinstance(model_cfg.decode_head, list):
        model_cfg.decode_head = heads
    else:
        model_cfg.decode_head = heads[0]
    return model_cfg


def batch(num_classes, size, pidnet=False):
    """Two images and their samples, with a band of ignored pixels.

    PIDNet's samples also carry edge maps and ignore nothing: its weighted
    CrossEntropyLoss indexes the class weights with the labels, ignored
    ones included (mmseg 1.2.2; open-mmlab/mmsegmentation#3734).
    """
    imgs, samples = image_batch(B=2, size=size, num_classes=num_classes)
    for sample in samples:
        if not pidnet:
            sample.gt_sem_seg.data[:, :2] = 255
        else:
            edge = (sample.gt_sem_seg.data[:, :, 1:] !=
                    sample.gt_sem_seg.data[:, :, :-1])
            sample.gt_edge_map = PixelData(
                data=torch.nn.functional.pad(edge.long(), (0, 1)))
    return imgs, samples


@pytest.mark.parametrize('head_type', sorted(REPRESENTATIVES))
def test_wrap_zoo_head(head_type):
    if head_type in NEED_MMDET:
        pytest.importorskip(
            'mmdet', reason=f'mmseg builds {head_type} over mmdet\'s head; '
            'mmdet is not installed (nor needed by SAR)')
    model_cfg, index = representative(head_type)
    decode_heads(model_cfg)[index].update(HEAD_OVERRIDES.get(head_type, {}))
    if head_type in REFUSED or head_type in NEED_MMDET:
        with pytest.raises(TypeError, match=f'SARHead cannot wrap '
                           f'{head_type}: .*conv_seg.*which this head does '
                           r'not have\. Supported:'):
            MODELS.build(dict(type='SARHead',
                              head=decode_heads(model_cfg)[index]))
        return
    torch.manual_seed(0)
    model = revert_sync_batchnorm(MODELS.build(wrapped(model_cfg, index)))
    model.train()
    size = INPUT_SIZE[head_type]
    wrapper = model.decode_head
    if isinstance(wrapper, torch.nn.ModuleList):
        wrapper = wrapper[index]
        prefix = f'decode_{index}'
    else:
        prefix = 'decode'
    assert type(wrapper).__name__ == 'SARHead'
    assert type(wrapper.head).__name__ == head_type
    imgs, samples = batch(wrapper.num_classes, size,
                          pidnet=head_type == 'PIDHead')
    losses = model.loss(imgs, samples)
    for key in SAR_KEYS:
        assert f'{prefix}.{key}' in losses, sorted(losses)
    # The anchors are classified by the head's own conv_seg: the anchor CE
    # reaches the projector and that classifier.
    projector = wrapper.sar_loss.projector.fc1.weight
    classifier = wrapper.head.conv_seg.weight
    grads = torch.autograd.grad(losses[f'{prefix}.loss_sar_anchor_ce'],
                                [projector, classifier], retain_graph=True)
    assert all(g.abs().sum() > 0 for g in grads)
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()  # the whole step, the head's own losses included
    assert projector.grad.abs().sum() > 0
