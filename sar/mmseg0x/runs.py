"""The commands of this project's mmseg 0.x tools and the files they leave,
for scripts that train and test through them (``tools/demo.py``).

The mmseg 1.x twin is :mod:`sar.mmseg1x.runs`, with the same functions.
Paths are relative to the project root, where the commands run.
"""
import glob
import json
import os.path as osp

from mmcv.utils import Config

from ..evaluation.report import merge_train_logs, read_train_log

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


def train_command(config, work_dir, seed=None, iters=None, options=()):
    """``tools/train.py`` without validation, deterministic; ``seed`` and
    ``iters`` (with a checkpoint at the end) override the config's, and
    ``options`` (``--cfg-options`` entries) are added."""
    cmd = ['tools/train.py', config, '--work-dir', work_dir, '--no-validate',
           '--deterministic']
    if seed is not None:
        cmd += ['--seed', str(seed)]
    options = list(options)
    if iters is not None:
        options += [f'runner.max_iters={iters}',
                    f'checkpoint_config.interval={iters}']
    return cmd + (['--cfg-options', *options] if options else [])


def test_command(config, work_dir, options=()):
    """``tools/test.py --eval mIoU`` on the run's last checkpoint, with
    ``options`` (``--cfg-options`` entries)."""
    return ['tools/test.py', config, checkpoint(work_dir), '--eval', 'mIoU',
            '--work-dir', work_dir] + (
                ['--cfg-options', *options] if options else [])


def data_options(data_root, batch=None):
    """``--cfg-options`` that point the demo configs' splits at
    ``data_root`` and, with ``batch``, set the training batch."""
    options = [f'data.train.dataset.data_root={data_root}',
               f'data.val.data_root={data_root}',
               f'data.test.data_root={data_root}']
    return options + ([f'data.samples_per_gpu={batch}'] if batch else [])


def log_interval_option(interval):
    """The ``--cfg-options`` entry of the training log's interval."""
    return f'log_config.interval={interval}'


def stale_files(work_dir, training=True):
    """What an earlier run's commands left that :func:`train_log` and
    :func:`read_metrics` would read; the test's alone with ``training``
    False."""
    return (glob.glob(osp.join(work_dir, '*.log.json')) if training else
            []) + glob.glob(osp.join(work_dir, 'eval_*.json'))


def train_log(work_dir):
    """The training entries of the run's json logs (see
    :func:`sar.evaluation.report.read_train_log`), those of a resumed run's
    sessions merged; [] before the first."""
    logs = sorted(glob.glob(osp.join(work_dir, '*.log.json')))  # by time
    return merge_train_logs([read_train_log(path) for path in logs])


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
