"""The framework glues' layer rule: sar/transformers alone imports
transformers, sar/smp alone imports segmentation_models_pytorch, no glue
imports another, and ``import sar`` imports neither. A static scan of every
import statement (lazy ones included), plus ``import sar`` run with both
frameworks hidden. Needs neither framework.
"""
import os
import os.path as osp
import subprocess
import sys

import pytest

from test_layers import ROOT, SAR, imported_modules

# glue folder -> the framework only it may import
FRAMEWORK_GLUES = {'transformers': 'transformers',
                   'smp': 'segmentation_models_pytorch'}
ALL_GLUES = ('mmseg0x', 'mmseg1x') + tuple(FRAMEWORK_GLUES)


def files_under(folder):
    for here, _, names in os.walk(folder):
        for name in sorted(names):
            if name.endswith('.py'):
                yield osp.join(here, name)


def owner(path):
    """The top folder of sar/ a file is in ('' for sar/*.py)."""
    rel = osp.relpath(path, SAR).split(os.sep)
    return rel[0] if len(rel) > 1 else ''


def test_only_its_glue_imports_each_framework():
    assert any(owner(p) == 'transformers' for p in files_under(SAR))
    for path in files_under(SAR):
        for name in imported_modules(path):
            top = name.split('.')[0]
            for glue, framework in FRAMEWORK_GLUES.items():
                if top == framework:
                    assert owner(path) == glue, f'{path} imports {name}'


@pytest.mark.parametrize('glue', FRAMEWORK_GLUES)
def test_a_framework_glue_imports_no_other_glue(glue):
    for path in files_under(osp.join(SAR, glue)):
        for name in imported_modules(path):
            for other in ALL_GLUES:
                if other != glue:
                    assert not name.startswith(f'sar.{other}'), \
                        f'{path} imports {name}'


def test_no_other_glue_imports_a_framework_glue():
    for path in files_under(SAR):
        if owner(path) in FRAMEWORK_GLUES:
            continue
        for name in imported_modules(path):
            assert not any(name.startswith(f'sar.{g}')
                           for g in FRAMEWORK_GLUES), f'{path} imports {name}'


def test_import_sar_loads_neither_framework():
    code = '''
import sys
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in %r:
            raise ImportError('hidden')
sys.meta_path.insert(0, Hide())
import sar
from sar.core import SemanticAnchorRegularizer
assert 'transformers' not in sys.modules
assert 'segmentation_models_pytorch' not in sys.modules
print('sar without frameworks ok')
''' % (tuple(FRAMEWORK_GLUES.values()), )
    run = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert 'sar without frameworks ok' in run.stdout
