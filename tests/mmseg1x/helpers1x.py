"""What the tests of the 1.x glue share: tiny configs, batches, runs.

Shape shorthand: B batch, H x W the input (and label) size.
"""
import os
import os.path as osp
import socket
import subprocess
import sys

import mmseg
import torch
from mmengine.config import Config, ConfigDict
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample

HERE = osp.dirname(osp.abspath(__file__))
ROOT = osp.dirname(osp.dirname(HERE))
PLUGINS = osp.join(ROOT, 'tests', 'plugins')
MIM = osp.join(osp.dirname(mmseg.__file__), '.mim')
TRAIN = osp.join(MIM, 'tools', 'train.py')
TEST = osp.join(MIM, 'tools', 'test.py')
# This project's: under mmseg 1.x they import sar, then run mmseg's own.
TOOL_TRAIN = osp.join(ROOT, 'tools', 'train.py')
TOOL_TEST = osp.join(ROOT, 'tools', 'test.py')
PY = sys.executable
NORM = dict(type='BN')


def fcn_cfg(**kwargs):
    """A tiny FCN head: 6 input channels, D=8, C=3."""
    cfg = dict(type='FCNHead', in_channels=6, channels=8, num_convs=1,
               num_classes=3, dropout_ratio=0.0, norm_cfg=NORM)
    cfg.update(kwargs)
    return cfg


def samples(labels):
    """SegDataSamples holding ``labels`` as their ``gt_sem_seg``.

    Shape:
        labels (B, 1, H, W) long.
    """
    size = tuple(labels.shape[-2:])
    out = []
    for label in labels:
        sample = SegDataSample(metainfo=dict(
            img_shape=size, ori_shape=size, pad_shape=size))
        sample.gt_sem_seg = PixelData(data=label)
        out.append(sample)
    return out


def inputs(B=2, size=8, seed=0, num_classes=3, in_channels=6):
    """x [(B, in_channels, size, size)], labels (B, 1, 4 size, 4 size)."""
    g = torch.Generator().manual_seed(seed)
    x = [torch.randn(B, in_channels, size, size, generator=g)]
    labels = torch.randint(0, num_classes, (B, 1, size * 4, size * 4),
                           generator=g)
    labels[0, :, :4] = 255
    return x, labels


def segmentor_cfg(decode_head=None, sar=True, **kwargs):
    """EncoderDecoder: ResNetV1c-18 at 1/32 width + a tiny FCN head, C=3.

    A ConfigDict (the runner's type): ``EncoderDecoder.inference`` reads
    ``test_cfg.mode`` as an attribute.
    """
    head = decode_head or dict(type='FCNHead', in_channels=64, channels=8,
                               num_convs=1, num_classes=3,
                               dropout_ratio=0.1, norm_cfg=NORM)
    if sar:
        head = dict(type='SARHead', head=head)
    cfg = dict(
        type='EncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[0, 0, 0],
                               std=[1, 1, 1], size=(32, 32)),
        backbone=dict(type='ResNetV1c', depth=18, stem_channels=8,
                      base_channels=8, out_indices=(3, ), norm_cfg=NORM,
                      dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1)),
        decode_head=head, train_cfg=dict(), test_cfg=dict(mode='whole'))
    cfg.update(kwargs)
    return ConfigDict(cfg)


def image_batch(B=2, size=32, seed=0, num_classes=3):
    """imgs (B, 3, H, W) and their samples with random labels."""
    g = torch.Generator().manual_seed(seed)
    imgs = torch.randn(B, 3, size, size, generator=g)
    labels = torch.randint(0, num_classes, (B, 1, size, size), generator=g)
    return imgs, samples(labels)


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return str(s.getsockname()[1])


def run(args, timeout=600, expect=0, **env):
    """Run a command as a user does (one OpenMP thread), return its output.

    ``tests/plugins`` is on the path for test-only hooks, and this checkout
    before any installed ``sar`` (an editable install of another clone
    would otherwise answer mmseg's tools' ``import sar``).
    """
    path = os.pathsep.join(p for p in (PLUGINS, ROOT,
                                       os.environ.get('PYTHONPATH')) if p)
    full_env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS='1',
                    **env)
    proc = subprocess.run(args, cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == expect, out[-6000:]
    return out


def load_config(path):
    return Config.fromfile(path)


# The 0.x suite's model base (the paper's model shape, HRNet branches
# resize-concatenated into a 1x1 FCN head, at a few channels per branch,
# with SyncBN) and mmseg 1.x's data preprocessor; SAR wraps its head.
HRTINY = """
_base_ = [r'{base}']
model = dict(
    data_preprocessor=dict(
        type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0,
        seg_pad_val=255, size=({size}, {size})),{decode_head})
"""
SAR_HEAD = """
    decode_head=dict(_delete_=True, type='SARHead',
                     head=_base_.model.decode_head)"""

SHAPES = '''
dataset = dict(
    type='BaseSegDataset', data_root=r'{root}', img_suffix='.png',
    seg_map_suffix='.png',
    metainfo=dict(classes=('background', 'square', 'disc', 'bar'),
                  palette=[[0, 0, 0], [220, 20, 60], [0, 128, 255],
                           [255, 200, 0]]))
train_dataloader = dict(
    batch_size={batch}, num_workers=0, persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        **dataset,
        data_prefix=dict(img_path='img_dir/train',
                         seg_map_path='ann_dir/train'),
        pipeline=[dict(type='LoadImageFromFile'),
                  dict(type='LoadAnnotations'),
                  dict(type='RandomFlip', prob={flip}),
                  dict(type='PackSegInputs')]))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        **dataset,
        data_prefix=dict(img_path='img_dir/val', seg_map_path='ann_dir/val'),
        pipeline=[dict(type='LoadImageFromFile'),
                  dict(type='LoadAnnotations'),
                  dict(type='PackSegInputs')]))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
'''

# mmseg's default runtime, NCCL backend included: a CPU machine must cope.
RUNTIME = '''
default_scope = 'mmseg'
env_cfg = dict(cudnn_benchmark=False,
               mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0, diff_rank_seed={diff_rank_seed})
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(
    type='SGD', lr=0.05, momentum=0.9, weight_decay=5e-4))
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0,
                        end={iters}, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters={iters},
                 val_interval={iters})
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval={log_interval},
                log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False,
                    interval={checkpoint}),
    sampler_seed=dict(type='DistSamplerSeedHook'))
visualizer = dict(type='SegLocalVisualizer',
                  vis_backends=[dict(type='LocalVisBackend')],
                  name='visualizer')
'''


def write_config(path, root, iters, sar=True, batch=2, flip=0.5, size=32,
                 checkpoint=None, diff_rank_seed=False, imports=(),
                 hooks=(), log_interval=1, import_sar=None):
    """A 1.x config of the tiny HRNet FCN (SAR-wrapped or not) on the
    shapes data at ``root``; returns its path.

    Args:
        imports: plugin modules (tests/plugins) to import besides sar.
        hooks: ``custom_hooks`` entries.
        import_sar (bool, optional): whether custom_imports names sar;
            by default for a SAR model or when ``imports`` are given.
    """
    text = (HRTINY.format(base=osp.join(ROOT, 'configs', '_base_',
                                        'models', 'fcn_hrtiny.py'),
                          size=size, decode_head=SAR_HEAD if sar else '')
            + SHAPES.format(root=root, batch=batch, flip=flip)
            + RUNTIME.format(iters=iters, checkpoint=checkpoint or iters,
                             diff_rank_seed=diff_rank_seed,
                             log_interval=log_interval))
    if import_sar is None:
        import_sar = bool(sar or imports)
    modules = (['sar'] if import_sar else []) + list(imports)
    if modules:
        text += (f'custom_imports = dict(imports={modules!r}, '
                 'allow_failed_imports=False)\n')
    if hooks:
        text += f'custom_hooks = {list(hooks)!r}\n'
    with open(path, 'w') as f:
        f.write(text)
    return str(path)


def tiny_model(size=32):
    """The tiny HRNet FCN of :func:`write_config` without SAR, as a dict."""
    model = Config.fromfile(osp.join(ROOT, 'configs', '_base_', 'models',
                                     'fcn_hrtiny.py')).model.to_dict()
    model['data_preprocessor'] = dict(
        type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0,
        seg_pad_val=255, size=(size, size))
    return model


def write_twin_run_config(path, twin, root, iters):
    """A user's short run of a baseline twin config: the twin's runtime,
    schedule type, imports and hooks, with :func:`tiny_model` and the
    shapes data at ``root`` in place of its model and data, ``iters``
    iterations, validated and saved at the end; returns its path."""
    data = SHAPES.format(root=root, batch=2, flip=0.5)
    for loader in ('train_dataloader', 'val_dataloader'):
        data = data.replace(f'{loader} = dict(',
                            f'{loader} = dict(_delete_=True,')
    model = dict(tiny_model(), _delete_=True)
    with open(path, 'w') as f:
        f.write(f'_base_ = [{twin!r}]\nmodel = {model!r}\n' + data + f"""
train_cfg = dict(max_iters={iters}, val_interval={iters})
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0,
                        end={iters}, by_epoch=False)]
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(interval={iters}))
""")
    return str(path)


def read_json_lines(path):
    import json
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
