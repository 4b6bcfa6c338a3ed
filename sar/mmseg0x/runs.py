"""The commands of this project's mmseg 0.x tools and the files they leave,
for scripts that train and test through them (``tools/demo.py``).

The mmseg 1.x twin is :mod:`sar.mmseg1x.runs`, with the same functions.
Paths are relative to the project root, where the commands run.
"""
import glob
import json
import os.path as osp

from mmcv.utils import Config

from ..evaluation.report import read_train_log

DEMO_CONFIGS = {
    'baseline':
    'configs/demo/fcn_r18slim-d8_1xb8-3000_digitscenes-lt-64x64.py',
    'SAR': 'configs/demo/sar_fcn_r18slim-d8_1xb8-3000_digitscenes-lt-64x64.py',
}
DEMO_WORK_DIR = 'work_dirs/demo'


def checkpoint(work_dir):
    """The run's last checkpoint."""
    return osp.join(work_dir, 'latest.pth')


def schedule(config):
    """(seed, training iterations) of a config file."""
    cfg = Config.fromfile(config)
    return cfg.get('seed'), cfg.runner.max_iters


def train_command(config, work_dir, seed=None, iters=None):
    """``tools/train.py`` without validation, deterministic; ``seed`` and
    ``iters`` (with a checkpoint at the end) override the config's."""
    cmd = ['tools/train.py', config, '--work-dir', work_dir, '--no-validate',
           '--deterministic']
    if seed is not None:
        cmd += ['--seed', str(seed)]
    if iters is not None:
        cmd += ['--cfg-options', f'runner.max_iters={iters}',
                f'checkpoint_config.interval={iters}']
    return cmd


def test_command(config, work_dir):
    """``tools/test.py --eval mIoU`` on the run's last checkpoint."""
    return ['tools/test.py', config, osp.join(work_dir, 'latest.pth'),
            '--eval', 'mIoU', '--work-dir', work_dir]


def stale_files(work_dir):
    """What an earlier run's commands left that :func:`train_log` and
    :func:`read_metrics` would read."""
    return glob.glob(osp.join(work_dir, '*.log.json')) + glob.glob(
        osp.join(work_dir, 'eval_*.json'))


def train_log(work_dir):
    """The training entries of the run's json log (see
    :func:`sar.evaluation.report.read_train_log`); [] before the first."""
    logs = glob.glob(osp.join(work_dir, '*.log.json'))
    return read_train_log(logs[0]) if logs else []


def read_metrics(work_dir):
    """mmseg's evaluation dict that ``tools/test.py`` saved:
    ``mIoU``, ``IoU.<class>``, ... as fractions."""
    (result, ) = glob.glob(osp.join(work_dir, 'eval_*.json'))
    with open(result) as f:
        return json.load(f)['metric']


def predict(config, ckpt, paths):
    """Label maps (H, W) of the trained model for the images at ``paths``."""
    from mmseg.apis import inference_segmentor, init_segmentor
    model = init_segmentor(config, ckpt, device='cpu')
    return [inference_segmentor(model, p)[0] for p in paths]
