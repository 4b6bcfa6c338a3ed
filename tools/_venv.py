"""Run a tool under the project's ``.venv`` when started by another Python.

``python tools/train.py ...`` typed in a new shell runs the system Python,
which has no torch; ``make install`` put everything in ``.venv``. Imported
first by every tool: if torch is missing here and ``.venv`` exists, the
tool starts again under ``.venv/bin/python`` with the same arguments;
without ``.venv`` it says how to get one.
"""
import os
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
VENV_PYTHON = osp.join(ROOT, '.venv', 'bin', 'python')


def use_project_venv():
    try:
        import torch  # noqa: F401
        return
    except ImportError:
        pass
    # A venv's python is a link to the base interpreter: compare prefixes.
    in_venv = osp.realpath(sys.prefix) == osp.realpath(osp.dirname(
        osp.dirname(VENV_PYTHON)))
    if osp.exists(VENV_PYTHON) and not in_venv:
        os.execv(VENV_PYTHON, [VENV_PYTHON, *sys.argv])
    sys.exit(f'{sys.executable} has no torch, and {VENV_PYTHON} does not '
             'exist: run `make install` in the project first (or install '
             'torch, mmcv-full and mmsegmentation into this Python).')


use_project_venv()
