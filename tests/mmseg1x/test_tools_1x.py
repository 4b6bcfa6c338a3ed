"""This project's tools/train.py and tools/test.py under mmseg 1.x: they
import sar, then run mmseg's own tools (``mmseg/.mim/tools``) with the same
arguments, so that one command serves both generations and the configs'
``mmseg::`` bases resolve under OneDL's fork (whose mmengine maps the scope
to a distribution name that fork does not install)."""
import os.path as osp
import subprocess

import mmseg
import pytest

from helpers1x import PY, ROOT, run, write_twin_run_config

MMSEG_TOOLS = osp.join(osp.dirname(mmseg.__file__), '.mim', 'tools')
TWIN = osp.join(ROOT, 'configs', 'mmseg1x', 'baseline',
                'fcn_hr48_4xb2-80k_cityscapes-512x1024.py')


@pytest.mark.parametrize('tool,own_option', [('train.py', '--resume'),
                                             ('test.py', '--tta')])
def test_the_tools_take_mmsegs_own_arguments(tool, own_option):
    out = run([PY, osp.join('tools', tool), '--help'])
    assert own_option in out
    assert '--resume-from' not in out and '--eval ' not in out  # 0.30's


def test_test_py_names_the_fix_for_0x_eval_option():
    proc = subprocess.run([PY, 'tools/test.py', 'c.py', 'm.pth', '--eval',
                           'mIoU'], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert 'drop --eval' in proc.stderr


# A stand-in for OneDL's mmengine: the `mmseg` scope names a distribution
# that is not installed. Then run TOOL (with its arguments) as `python TOOL`.
UNMAPPED = """
import runpy, sys
from mmengine.config import utils
utils.MODULE2PACKAGE['mmseg'] = 'no-such-distribution'
tool = sys.argv[1]
sys.path.insert(0, __import__('os').path.dirname(tool))
sys.argv = sys.argv[1:]
runpy.run_path(tool, run_name='__main__')
"""


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    from sar.data import make_shapes_dataset
    return make_shapes_dataset(
        str(tmp_path_factory.mktemp('tools') / 'shapes'), num_train=2,
        num_val=1, size=32)


def test_mmseg_bases_resolve_through_the_tools_where_mmsegs_own_fail(
        tmp_path, shapes):
    cfg = write_twin_run_config(tmp_path / 'twin.py', TWIN, shapes, iters=1)
    work = str(tmp_path / 'work')
    out = run([PY, '-c', UNMAPPED, osp.join(MMSEG_TOOLS, 'train.py'), cfg,
               '--work-dir', work], expect=1)
    assert 'no-such-distribution' in out  # the failure the tools avoid
    run([PY, '-c', UNMAPPED, osp.join(ROOT, 'tools', 'train.py'), cfg,
         '--work-dir', work])
    assert osp.isfile(osp.join(work, 'iter_1.pth'))
