"""The project's environments against their locks; both suites check their
own (.venv: requirements/lock/mmseg0.txt, .venv-mmseg1: mmseg1.txt,
.venv-onedl: onedl.txt)."""
import os.path as osp
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def project_venv_or_skip(name):
    """Skip unless this Python is the clone's ``name`` virtualenv made from
    its lock: a user's own environment (``pip install -e .``, or
    ``SAR_SYSTEM_SITE=1``, which sees the system's packages) keeps the loose
    ranges."""
    if osp.realpath(sys.prefix) != osp.realpath(osp.join(ROOT, name)):
        pytest.skip(f'not the project environment {name}')
    with open(osp.join(sys.prefix, 'pyvenv.cfg')) as f:
        if 'include-system-site-packages = true' in f.read():
            pytest.skip(f'{name} was made with SAR_SYSTEM_SITE=1: the user\'s '
                        'packages, loose ranges')


def assert_environment_is_its_lock(lock, mmcv):
    """This Python holds exactly ``requirements/lock/<lock>``, the mmcv
    wheel built here (``mmcv``, its distribution) and sar, and pip finds
    no broken requirement among them (the mmcv wheel is installed without
    its dependencies, so the lock must carry them)."""
    path = osp.join(ROOT, 'requirements', 'lock', lock)
    proc = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'locks.py'), 'check', path,
         '--extra', mmcv, '--extra', 'sar'],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = subprocess.run([sys.executable, '-m', 'pip', 'check'],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'No broken requirements found' in proc.stdout
