"""Run a tool under the project's ``.venv`` when started by another Python.

``python tools/train.py ...`` typed in a new shell runs the system Python,
which has no torch; ``make install`` put everything in ``.venv``. Imported
first by every tool: if torch is missing here and ``.venv`` exists, the
tool starts again under ``.venv/bin/python`` with the same arguments;
without ``.venv`` it says how to get one.
"""
import importlib.util
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
    if in_venv:
        sys.exit(f'{VENV_PYTHON} has no torch: run `make install` in the '
                 'project again.')
    if not osp.exists(VENV_PYTHON):
        sys.exit(f'{sys.executable} has no torch, and {VENV_PYTHON} does not '
                 'exist: run `make install` in the project first (or install '
                 'torch, mmcv-full and mmsegmentation into this Python).')
    print(f'{sys.executable} has no torch: running under {VENV_PYTHON}',
          file=sys.stderr)
    os.execv(VENV_PYTHON, [VENV_PYTHON, *_arguments()])


def _arguments():
    """This process's command line after the interpreter.

    ``sys.orig_argv`` (Python >= 3.10) keeps the interpreter's own options
    (-u, -X, -W); older Pythons, a user's system python 3.8 or 3.9 among
    them, have only ``sys.argv``: the script and its arguments.
    """
    orig = getattr(sys, 'orig_argv', None)
    return orig[1:] if orig else sys.argv


def import_sar_torch_only():
    """Make ``sar``'s torch-only modules importable without ``sar/__init__``.

    That file checks and patches mmseg/mmcv whenever mmseg is importable
    (an mmseg 1.x install makes it raise). The checkpoint tools move
    tensors only and must run with torch alone, so they import
    ``sar.checkpoints`` from a package whose ``__init__`` is not executed.
    """
    spec = importlib.util.spec_from_file_location(
        'sar', osp.join(ROOT, 'sar', '__init__.py'),
        submodule_search_locations=[osp.join(ROOT, 'sar')])
    sys.modules['sar'] = importlib.util.module_from_spec(spec)


use_project_venv()
