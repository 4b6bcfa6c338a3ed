"""The baseline twins of configs/mmseg1x, used as a user compares them with
SAR: the project's tools/train.py, tools/test.py on its checkpoint and
--resume (mmseg's own, after ``import sar``), in this environment (torch
>= 2.6 reads checkpoints weights-only, which mmengine 0.10's own
checkpoints need the glue's shim for). Each twin
keeps its runtime, schedule, imports and hooks; the tiny HRNet FCN and the
shapes data stand in for its model and data
(helpers1x.write_twin_run_config)."""
import glob
import os.path as osp

import pytest
from mmengine.config import Config

from helpers1x import (PY, ROOT, TOOL_TEST, TOOL_TRAIN, run,
                       write_twin_run_config)

FOLDER = osp.join(ROOT, 'configs', 'mmseg1x')
TWINS = sorted(
    osp.relpath(p, FOLDER)
    for p in glob.glob(osp.join(FOLDER, '*', '*.py'))
    if '/_base_/' not in p and not osp.basename(p).startswith('sar_'))
IMPORTS = dict(imports=['sar'], allow_failed_imports=False)


def test_every_sar_config_has_its_twin_here():
    sar = glob.glob(osp.join(FOLDER, "*", "sar_*.py"))
    assert len(TWINS) == len(sar) == 4
    assert 'baseline/fcn_hr48_4xb2-80k_cityscapes-512x1024.py' in TWINS


@pytest.mark.parametrize('twin', TWINS)
def test_twin_imports_sar_for_the_glues_shims(twin):
    # Without it mmseg's tools never load the glue: its checkpoints fail
    # to load under torch >= 2.6, CPU ranks fail, and a SAR checkpoint
    # would load into it with a random decode head.
    assert Config.fromfile(osp.join(FOLDER, twin)).custom_imports == IMPORTS


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    from sar.data import make_shapes_dataset
    return make_shapes_dataset(
        str(tmp_path_factory.mktemp('twins') / 'shapes'), num_train=4,
        num_val=2, size=32)


@pytest.mark.parametrize('twin', TWINS)
def test_twin_trains_tests_and_resumes_with_the_tools(tmp_path, shapes,
                                                         twin):
    cfg = write_twin_run_config(tmp_path / 'twin.py', osp.join(FOLDER, twin),
                                shapes, iters=2)
    work = str(tmp_path / 'work')
    run([PY, TOOL_TRAIN, cfg, '--work-dir', work])
    ckpt = osp.join(work, 'iter_2.pth')
    out = run([PY, TOOL_TEST, cfg, ckpt, '--work-dir', str(tmp_path / 'test')])
    assert '| background |' in out and 'mIoU' in out
    out = run([PY, TOOL_TRAIN, cfg, '--work-dir', work, '--resume',
               '--cfg-options', 'train_cfg.max_iters=3',
               'train_cfg.val_interval=3', 'param_scheduler.0.end=3'])
    assert 'resumed epoch: 0, iter: 2' in out  # mmengine's own line
    assert osp.isfile(osp.join(work, 'iter_3.pth'))
