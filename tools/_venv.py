"""Run a tool under the project's ``.venv`` when started by another Python,
and hand ``train.py`` and ``test.py`` to mmseg's own tools under mmseg 1.x.

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


# This project's tools that serve both generations: mmseg 0.30's interface
# here, mmseg's own tools under 1.x (:func:`run_mmseg1_tool`).
GENERATION_TOOLS = ('train.py', 'test.py')


def mmseg_1x_tools():
    """The folder of mmseg's own tools when mmseg 1.x is installed, else
    None (0.x, missing or broken: the tool goes on and says so itself)."""
    try:
        import mmseg
        version = mmseg.__version__
    except Exception:  # noqa: BLE001  missing or broken: the tool says so
        return None
    if version.split('.')[0] == '0':
        return None
    return osp.join(osp.dirname(mmseg.__file__), '.mim', 'tools')


def run_mmseg1_tool(tool, tools):
    """Run mmseg 1.x's own ``tool`` in this process, after ``import sar``.

    ``tools/train.py`` and ``tools/test.py`` implement mmseg 0.30's
    interface on mmcv 1.x's APIs. Under mmseg 1.x they hand over to the
    tools mmseg ships (``mmseg/.mim/tools``), with the same arguments. sar
    is imported first: mmseg's tools read the config, ``mmseg::`` bases
    included, before its ``custom_imports`` run, and under OneDL's fork
    those bases resolve only with the glue's scope mapping in place
    (:func:`sar.mmseg1x.compat.apply`). Never returns.

    Args:
        tool (str): this tool's file name, e.g. ``'train.py'``.
        tools (str): the folder of mmseg's own tools.
    """
    script = osp.join(tools, tool)
    if not osp.isfile(script):
        sys.exit(f'tools/{tool}: mmseg 1.x is installed, but {script} is '
                 "missing: reinstall mmseg (its wheel ships its tools in "
                 "mmseg/.mim/tools).")
    if tool == 'test.py' and '--eval' in sys.argv:
        sys.exit('tools/test.py: --eval is mmseg 0.30\'s option. Under mmseg '
                 "1.x the config's test_evaluator computes the metrics "
                 '(mIoU in configs/mmseg1x): drop --eval.')
    import runpy

    import sar  # noqa: F401  registers SAR, applies the 1.x glue's shims
    sys.argv[0] = script
    runpy.run_path(script, run_name='__main__')
    sys.exit(0)


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
if running_tool() in GENERATION_TOOLS:
    _tools = mmseg_1x_tools()
    if _tools:
        run_mmseg1_tool(running_tool(), _tools)
