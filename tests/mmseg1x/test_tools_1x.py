"""This project's tools/train.py and tools/test.py are mmseg 0.30's (mmcv
1.x APIs): under mmseg 1.x they stop at once and name mmseg's own tools,
instead of failing on an mmcv import that names nothing."""
import os.path as osp
import subprocess

import mmseg
import pytest

from helpers1x import PY, ROOT

MMSEG_TOOLS = osp.join(osp.dirname(mmseg.__file__), '.mim', 'tools')
SAR_CONFIG = 'configs/mmseg1x/sar/sar_fcn_hr48_4xb2-80k_cityscapes-512x1024.py'


@pytest.mark.parametrize('tool,args', [
    ('train.py', [SAR_CONFIG]),
    ('test.py', [SAR_CONFIG, 'model.pth', '--eval', 'mIoU']),
])
def test_the_0x_tools_name_mmsegs_own_tools(tool, args):
    proc = subprocess.run([PY, osp.join('tools', tool), *args], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert f'has mmseg {mmseg.__version__}' in proc.stderr
    assert f'python {osp.join(MMSEG_TOOLS, tool)} configs/mmseg1x/' in \
        proc.stderr
    assert '.venv/bin/python tools/' + tool in proc.stderr
