"""The installed stack: sar registers, mmcv's compiled ops load, a zoo model
trains a step on CPU, and the core imports without mmseg."""
import os
import os.path as osp
import subprocess
import sys

import mmseg
import torch
from mmcv.cnn.utils import revert_sync_batchnorm
from mmcv.utils import Config
from mmseg.models import build_segmentor
from mmseg.models.builder import HEADS, LOSSES

from conftest import ROOT, tiny_batch


def test_sar_registers_on_import():
    import sar
    assert HEADS.get('SARHead') is sar.SARHead
    assert LOSSES.get('SemanticAnchorLoss') is sar.SemanticAnchorLoss


def test_mmcv_compiled_ops_run():
    from mmcv.ops import nms
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]],
                         dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    _, keep = nms(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [0, 2]


def test_zoo_config_trains_one_cpu_step():
    path = osp.join(osp.dirname(mmseg.__file__), '.mim', 'configs', 'fcn',
                    'fcn_r18-d8_769x769_80k_cityscapes.py')
    cfg = Config.fromfile(path)
    cfg.model.pretrained = None
    torch.manual_seed(0)
    model = revert_sync_batchnorm(build_segmentor(cfg.model))
    model.train()
    img, metas, gt = tiny_batch(num_classes=19, size=64)
    before = model.decode_head.conv_seg.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    outputs = model.train_step(
        dict(img=img, img_metas=metas, gt_semantic_seg=gt), optimizer)
    assert torch.isfinite(outputs['loss'])
    outputs['loss'].backward()
    optimizer.step()
    assert not torch.equal(before, model.decode_head.conv_seg.weight)


def test_core_imports_without_mmseg():
    # A meta-path finder that hides mmseg and mmcv, as on a machine with
    # plain torch only.
    code = '''
import sys
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('mmseg', 'mmcv'):
            raise ImportError('hidden')
sys.meta_path.insert(0, Hide())
import sar
from sar.core import SemanticAnchorRegularizer
assert not hasattr(sar, 'SARHead')
assert 'mmseg' not in sys.modules and 'mmcv' not in sys.modules
print('core-only ok')
'''
    run = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert 'core-only ok' in run.stdout


def test_runtime_environment_has_no_broken_requirements():
    # The mmcv build tools (setuptools<70) once went into this environment
    # and broke torch's own requirement: pip printed an ERROR on every fresh
    # install. They live in a throwaway build venv now.
    run = subprocess.run([sys.executable, '-m', 'pip', 'check'],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert 'No broken requirements found' in run.stdout


def test_the_set_up_upgrades_an_xdist_without_the_makefiles_option(tmp_path):
    # `make test` passes --no-loadscope-reorder (pytest-xdist >= 3.8); an
    # older xdist imports fine, so the set-up scripts read its version.
    def tools_ok(version):
        fake = tmp_path / version / 'xdist'
        fake.mkdir(parents=True)
        (fake / '__init__.py').write_text(f'__version__ = {version!r}\n')
        script = ('log() { :; }; source tools/_env_common.sh; '
                  f'PY={sys.executable}; EMPTY={tmp_path}; test_tools_ok')
        return subprocess.run(
            ['bash', '-c', script], cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(tmp_path / version))
        ).returncode == 0

    assert not tools_ok('3.7.0')
    assert tools_ok('3.8.0') and tools_ok('3.10.1') and tools_ok('4.0')
