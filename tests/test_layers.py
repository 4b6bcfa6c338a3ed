"""The package's layers: what imports what (docs/development.md, "The layer
rule").

The method (sar/core), data generation (sar/data), evaluation
(sar/evaluation) and checkpoint conversion (sar/checkpoints) import no
mmcv, mmseg or mmengine and no generation glue; the glues (sar/mmseg0x,
sar/mmseg1x) never import each other. Checked twice: statically over every
import statement (lazy ones inside functions included), and by running the
layers with mmcv, mmseg and mmengine hidden. Generation-free: no mmcv here.
"""
import ast
import os
import os.path as osp
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SAR = osp.join(ROOT, 'sar')
OPENMMLAB = ('mmcv', 'mmseg', 'mmengine')
FREE_LAYERS = ('core', 'data', 'evaluation', 'checkpoints')
GLUES = ('mmseg0x', 'mmseg1x')


def imported_modules(path, package=None):
    """Absolute names of every module a file imports, at any depth.

    ``package``: the file's package (by default, from its place in ROOT).
    """
    package = package or osp.relpath(osp.dirname(path), ROOT).replace(
        os.sep, '.')
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')
                base = base[:len(base) - node.level + 1]
                module = '.'.join(base + ([node.module] if node.module
                                          else []))
            else:
                module = node.module
            names.append(module)
            # `from sar import mmseg0x` imports a submodule
            names += [f'{module}.{alias.name}' for alias in node.names]
    return names


def python_files(layer):
    folder = osp.join(SAR, layer)
    return sorted(osp.join(folder, f) for f in os.listdir(folder)
                  if f.endswith('.py'))


@pytest.mark.parametrize('layer', FREE_LAYERS)
def test_plain_layers_import_no_openmmlab_and_no_glue(layer):
    files = python_files(layer)
    assert files, layer
    for path in files:
        for name in imported_modules(path):
            top = name.split('.')[0]
            assert top not in OPENMMLAB, f'{path} imports {name}'
            assert not any(name.startswith(f'sar.{g}') for g in GLUES), \
                f'{path} imports the glue {name}'


@pytest.mark.parametrize('glue', GLUES)
def test_a_glue_never_imports_the_other(glue):
    other = [g for g in GLUES if g != glue]
    for path in python_files(glue):
        for name in imported_modules(path):
            assert not any(name.startswith(f'sar.{g}') for g in other), \
                f'{path} imports {name}'


def test_the_import_scan_sees_relative_and_lazy_imports(tmp_path):
    # The scanner itself: a check that cannot see an import proves nothing.
    probe = tmp_path / 'probe.py'
    probe.write_text('def late():\n    from ..mmseg0x import compat\n'
                     '    import mmcv.ops\n    from . import functional\n')
    names = imported_modules(str(probe), package='sar.core')
    assert 'sar.mmseg0x.compat' in names and 'mmcv.ops' in names
    assert 'sar.core.functional' in names


def test_plain_layers_run_with_openmmlab_hidden():
    # A meta-path finder that hides mmcv, mmseg and mmengine, as on a
    # machine with plain torch only; every layer imports and works.
    code = '''
import sys
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in %r:
            raise ImportError('hidden')
sys.meta_path.insert(0, Hide())
import torch
import sar
from sar.core import SemanticAnchorRegularizer, wrapping
from sar.data import make_shapes_dataset, longtail_counts
from sar.evaluation import benchmark, report, visualize
from sar.evaluation.features import feature_stats
from sar.checkpoints import sar_to_plain_state_dict
assert not hasattr(sar, 'SARHead') and sar.mmseg_generation() is None
stats = feature_stats(torch.eye(2).repeat(2, 1), torch.tensor([0, 1, 0, 1]), 2)
assert stats['intra'] == 0.0
plain = sar_to_plain_state_dict({'decode_head.head.conv_seg.weight': 1,
                                 'decode_head.sar_loss.init_anchors': 2})
assert dict(plain) == {'decode_head.conv_seg.weight': 1}
assert longtail_counts(3, 1.0, 3).tolist() == [1, 1, 1]
loaded = [m for m in sys.modules if m.split('.')[0] in %r]
assert not loaded, loaded
print('plain layers ok')
''' % (OPENMMLAB, OPENMMLAB)
    run = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert 'plain layers ok' in run.stdout
