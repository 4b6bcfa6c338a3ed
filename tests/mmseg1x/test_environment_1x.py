"""The 1.x environments are exactly their locks: .venv-mmseg1
requirements/lock/mmseg1.txt, .venv-onedl (OneDL's fork) onedl.txt."""
import pytest
from lock_env import assert_environment_is_its_lock, project_venv_or_skip


@pytest.mark.parametrize('venv,lock,mmcv', [
    ('.venv-mmseg1', 'mmseg1.txt', 'mmcv'),
    ('.venv-onedl', 'onedl.txt', 'onedl-mmcv'),
])
def test_the_environment_is_exactly_its_lock(venv, lock, mmcv):
    project_venv_or_skip(venv)
    assert_environment_is_its_lock(lock, mmcv)
