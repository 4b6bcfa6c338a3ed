"""Run a tool under the project's ``.venv`` when started by another Python,
and send users of mmseg 1.x from the 0.30-interface tools to mmseg's own.

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


# This project's tools of mmseg 0.30's interface, on mmcv 1.x's APIs.
MMSEG0_TOOLS = ('train.py', 'test.py')


def require_mmseg_0x(tool):
    """Stop with the right commands when mmseg 1.x is what is installed.

    ``tools/train.py`` and ``tools/test.py`` are mmseg 0.30's tools, on mmcv
    1.x's APIs; under mmseg 1.x they would fail on an mmcv import that
    names nothing ("cannot import name 'revert_sync_batchnorm' from
    'mmcv.cnn.utils'"). mmseg 1.x ships its own tools, which import ``sar``
    through the configs' ``custom_imports``.

    Args:
        tool (str): this tool's file name, e.g. ``'train.py'``.
    """
    try:
        import mmseg
        version = mmseg.__version__
    except Exception:  # noqa: BLE001  missing or broken: the tool says so
        return
    if version.split('.')[0] == '0':
        return
    tools = osp.join(osp.dirname(mmseg.__file__), '.mim', 'tools')
    launcher = 'dist_train.sh' if tool == 'train.py' else 'dist_test.sh'
    sys.exit(
        f'tools/{tool} is the mmseg 0.30 tool (mmcv 1.x APIs), but this '
        f'Python ({sys.executable}) has mmseg {version}. Under mmseg 1.x, '
        f"run mmseg's own {tool} on the 1.x configs (configs/mmseg1x/; "
        'they import sar through custom_imports):\n'
        f'  python {osp.join(tools, tool)} configs/mmseg1x/sar/CONFIG.py '
        '...\n'
        f'  bash {osp.join(tools, launcher)} configs/mmseg1x/sar/CONFIG.py '
        '... (several processes)\n'
        f'For the 0.x configs (configs/sar, configs/baseline), run '
        f'tools/{tool} with the 0.x environment: .venv/bin/python '
        f'tools/{tool} (make install builds it).')


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


def running_tool():
    """The file name of the tool of this folder being run, or None (an
    import from elsewhere: a test, another script)."""
    script = osp.realpath(sys.argv[0]) if sys.argv and sys.argv[0] else ''
    if osp.dirname(script) == osp.realpath(osp.join(ROOT, 'tools')):
        return osp.basename(script)
    return None


use_project_venv()
if running_tool() in MMSEG0_TOOLS:
    require_mmseg_0x(running_tool())
