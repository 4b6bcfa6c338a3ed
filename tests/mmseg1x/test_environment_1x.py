"""The 1.x environment is exactly its lock (requirements/lock/mmseg1.txt)."""
from lock_env import assert_environment_is_its_lock, project_venv_or_skip


def test_the_environment_is_exactly_its_lock():
    project_venv_or_skip('.venv-mmseg1')
    assert_environment_is_its_lock('mmseg1.txt', 'mmcv')
