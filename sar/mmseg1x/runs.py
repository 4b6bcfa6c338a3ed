"""The commands of this project's tools under mmseg 1.x and the files they
leave, for scripts that train and test through them (``tools/demo.py``).

The same functions as :mod:`sar.mmseg0x.runs`, and the same results: the
metrics in 0.x's evaluation-dict form, the training log as a list of
entries with ``iter``. Paths are relative to the project root, where the
commands run. Under mmseg 1.x, ``tools/train.py`` and ``tools/test.py``
import sar and run the tools shipped in mmseg's package
(``mmseg/.mim/tools``), whose arguments they take: with sar imported first,
the configs' ``mmseg::`` bases resolve under OneDL's fork too.
"""
import glob
import json
import os.path as osp

from mmengine.config import Config

from ..evaluation.report import merge_train_logs

TOOLS = 'tools'
DEMO_CONFIGS = {
    'baseline': 'configs/mmseg1x/demo/'
    'fcn_r18slim-d8_1xb8-3000_digitscenes-lt-64x64.py',
    'SAR': 'configs/mmseg1x/demo/'
    'sar_fcn_r18slim-d8_1xb8-3000_digitscenes-lt-64x64.py',
}
DEMO_WORK_DIR = 'work_dirs/demo-mmseg1'


def checkpoint(work_dir):
    """The run's last checkpoint, the file ``last_checkpoint`` names, in
    ``work_dir``: mmengine writes an absolute path there, which names the
    old folder once a run is copied or moved."""
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return osp.join(work_dir, osp.basename(f.read().strip()))


def schedule(config):
    """(seed, training iterations) of a config file."""
    cfg = Config.fromfile(config)
    return cfg.get('randomness', {}).get('seed'), cfg.train_cfg.max_iters


def train_command(config, work_dir, seed=None, iters=None, options=()):
    """``tools/train.py`` (mmseg 1.x's) without validation, deterministic;
    ``seed`` and ``iters`` (with the poly schedule's end and a checkpoint
    there, as 0.x's poly policy follows ``max_iters``) override the
    config's, and ``options`` (``--cfg-options`` entries) are added."""
    # ``options`` first: one may set a key under val_dataloader, which
    # the entries after it then remove.
    options = [*options, 'randomness.deterministic=True', 'val_cfg=None',
               'val_dataloader=None', 'val_evaluator=None']
    if seed is not None:
        options.append(f'randomness.seed={seed}')
    if iters is not None:
        options += [f'train_cfg.max_iters={iters}',
                    f'param_scheduler.0.end={iters}',
                    f'default_hooks.checkpoint.interval={iters}']
    return [osp.join(TOOLS, 'train.py'), config, '--work-dir', work_dir,
            '--cfg-options', *options]


def test_command(config, work_dir, options=()):
    """``tools/test.py`` (mmseg 1.x's) on the run's last checkpoint, with
    ``options`` (``--cfg-options`` entries); its logs go to
    ``work_dir/test``."""
    return [osp.join(TOOLS, 'test.py'), config, checkpoint(work_dir),
            '--work-dir', osp.join(work_dir, 'test')] + (
                ['--cfg-options', *options] if options else [])


def data_options(data_root, batch=None):
    """``--cfg-options`` that point the demo configs' splits at
    ``data_root`` and, with ``batch``, set the training batch."""
    options = [f'{split}_dataloader.dataset.data_root={data_root}'
               for split in ('train', 'val', 'test')]
    return options + ([f'train_dataloader.batch_size={batch}']
                      if batch else [])


def log_interval_option(interval):
    """The ``--cfg-options`` entry of the training log's interval."""
    return f'default_hooks.logger.interval={interval}'


def stale_files(work_dir, training=True):
    """What an earlier run's commands left that :func:`train_log` and
    :func:`read_metrics` would read; the test's alone with ``training``
    False."""
    trained = glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')
                        ) + glob.glob(osp.join(work_dir, 'last_checkpoint'))
    return (trained if training else []) + \
        glob.glob(osp.join(work_dir, 'test', '*', '*.json')) + \
        glob.glob(osp.join(work_dir, 'test', '*', '*.log'))


def _scalars(path):
    """The training entries of one ``vis_data/scalars.json``."""
    entries = []
    with open(path) as f:
        for line in f:
            entry = json.loads(line) if line.strip() else {}
            if 'lr' in entry:  # training; evaluation lines have none
                entries.append(entry)
    return entries


def train_log(work_dir):
    """The training entries of mmengine's ``vis_data/scalars.json``: one
    dict per logging interval, with ``iter`` and the logged losses and
    diagnostics, those of a resumed run's sessions (one timestamped folder
    each) merged; [] before the first."""
    logs = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data',
                                     'scalars.json')))  # by time
    return merge_train_logs([_scalars(path) for path in logs])


def class_table(log_text):
    """The per-class table mmseg 1.x's ``IoUMetric`` logs, as
    ``{class: {column: value}}`` (values as printed, in percent)."""
    lines = log_text.split('per class results:', 1)[1].splitlines()
    rows = [[cell.strip() for cell in line.strip().strip('|').split('|')]
            for line in lines if line.strip().startswith('|')]
    header, body = rows[0], []
    for row in rows[1:]:
        if row == header:  # the first row of the next table
            break
        body.append(row)
    return {row[0]: {h: float(v) for h, v in zip(header[1:], row[1:])}
            for row in body}


def read_metrics(work_dir):
    """mmseg 1.x's evaluation of the last test, in the form of 0.x's
    evaluation dict (``mIoU``, ``IoU.<class>`` as fractions): mIoU from the
    json test.py saves, per-class IoU from the table it logs (its json
    holds only the means)."""
    (result, ) = glob.glob(osp.join(work_dir, 'test', '*', '*.json'))
    (log, ) = glob.glob(osp.join(work_dir, 'test', '*', '*.log'))
    with open(result) as f:
        means = json.load(f)
    with open(log) as f:
        table = class_table(f.read())
    metric = {k: v / 100 for k, v in means.items()
              if k in ('aAcc', 'mIoU', 'mAcc')}
    metric.update({f'IoU.{c}': row['IoU'] / 100 for c, row in table.items()})
    return metric


def predict(config, ckpt, paths):
    """Label maps (H, W) of the trained model for the images at ``paths``."""
    from mmseg.apis import inference_model, init_model
    model = init_model(config, ckpt, device='cpu')
    return [inference_model(model, p).pred_sem_seg.data[0].numpy()
            for p in paths]
