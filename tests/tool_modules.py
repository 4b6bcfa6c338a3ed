"""The project's tools (tools/*.py) as modules, for tests of either mmseg
generation: ``load_tool('demo')`` runs tools/demo.py's top level (not its
``main``) and returns the module."""
import importlib.util
import os.path as osp
import sys

TOOLS = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'tools')


def load_tool(name):
    if TOOLS not in sys.path:
        sys.path.insert(0, TOOLS)  # tools import _venv from there
    spec = importlib.util.spec_from_file_location(
        f'{name}_tool', osp.join(TOOLS, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
