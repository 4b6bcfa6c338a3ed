"""Fixtures of the mmseg 1.x suite: tiny models and data, CPU only.

Collected only where mmseg 1.x is installed (.venv-mmseg1); the 0.x suite
ignores this folder. Helpers the test files share live in
:mod:`helpers1x` (a conftest cannot be imported by name here: the parent
folder's conftest is ``conftest`` too).
"""
import sar

if sar.mmseg_generation() != 1:
    collect_ignore_glob = ['*.py']
else:
    from mmseg.utils import register_all_modules

    # The scope every mmseg config sets (default_scope), so that nested
    # builds (the data preprocessor) find mmseg's modules.
    register_all_modules(init_default_scope=True)
