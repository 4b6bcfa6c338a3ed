"""The README's tool commands typed in a new shell after `make install`:
no virtualenv activated, no PYTHON set, and a `python` on PATH without
torch. The tools and launchers must find the project's .venv themselves."""
import glob
import os
import os.path as osp
import re
import subprocess
import sys

import pytest

from conftest import DEMO_SAR, ROOT
from test_tools import free_port, write_config

VENV_PYTHON = osp.join(ROOT, '.venv', 'bin', 'python')


@pytest.fixture(scope='module')
def new_shell(tmp_path_factory):
    """Environment of a new shell whose `python` has no torch."""
    if not osp.exists(VENV_PYTHON):
        pytest.skip('needs the project .venv (make install)')
    bare = tmp_path_factory.mktemp('bare')
    base = getattr(sys, '_base_executable', sys.executable)
    subprocess.run([base, '-m', 'venv', '--without-pip', str(bare)],
                   check=True)
    check = subprocess.run([str(bare / 'bin' / 'python'), '-c',
                            'import torch'], capture_output=True)
    assert check.returncode != 0, 'the bare Python should lack torch'
    env = {k: v for k, v in os.environ.items()
           if k not in ('PYTHON', 'VIRTUAL_ENV', 'PYTHONPATH', 'PYTHONHOME')}
    env['PATH'] = f'{bare / "bin"}:/usr/bin:/bin'
    env['OMP_NUM_THREADS'] = '1'
    return env


def shell(command, env):
    proc = subprocess.run(['bash', '-c', command], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout + proc.stderr


def test_readme_says_how_to_activate():
    with open(osp.join(ROOT, 'README.md')) as f:
        readme = f.read()
    train_and_test = readme.split('## Train and test', 1)[1].split('\n## ')[0]
    assert 'source .venv/bin/activate' in train_and_test
    # the commands this test runs are the ones the README shows
    for command in ('python tools/train.py', 'bash tools/dist_train.sh',
                    'python tools/test.py', 'bash tools/dist_test.sh',
                    'python tools/export_plain.py'):
        assert re.search(rf'^{re.escape(command)} ', train_and_test, re.M), \
            command


def test_readme_commands_work_as_typed(tmp_path, shapes_root, new_shell):
    cfg = write_config(tmp_path / 'sar.py', DEMO_SAR, shapes_root, iters=2)
    work = tmp_path / 'work'
    shell(f'python tools/train.py {cfg} --work-dir {work}', new_shell)
    ckpt = work / 'iter_2.pth'
    assert ckpt.is_file()
    out = shell(f'python tools/test.py {cfg} {ckpt} --eval mIoU '
                f'--work-dir {tmp_path / "eval"}', new_shell)
    assert 'mIoU' in out
    dist_work = tmp_path / 'dist'
    env = dict(new_shell, PORT=free_port())
    shell(f'bash tools/dist_train.sh {cfg} 2 --work-dir {dist_work}', env)
    assert osp.isfile(dist_work / 'iter_2.pth')
    env = dict(new_shell, PORT=free_port())
    out = shell(f'bash tools/dist_test.sh {cfg} {ckpt} 2 --eval mIoU '
                f'--work-dir {tmp_path / "dist_eval"}', env)
    assert 'mIoU' in out
    assert glob.glob(str(tmp_path / 'dist_eval' / 'eval_*.json'))
    # After activating .venv, as the README's block starts.
    plain = tmp_path / 'plain.pth'
    shell(f'source .venv/bin/activate\n'
          f'python tools/export_plain.py {ckpt} {plain}', new_shell)
    assert plain.is_file()


@pytest.mark.parametrize('orig_argv', [
    None,  # Python 3.8 and 3.9: no sys.orig_argv
    ['/usr/bin/python3', '-u', 'tools/train.py', 'cfg.py', '--seed', '1'],
])
def test_a_python_without_torch_restarts_under_the_venv(
        orig_argv, tmp_path, monkeypatch):
    sys.path.insert(0, osp.join(ROOT, 'tools'))
    try:
        import _venv
    finally:
        sys.path.pop(0)
    fake_venv_python = tmp_path / 'venv' / 'bin' / 'python'
    fake_venv_python.parent.mkdir(parents=True)
    fake_venv_python.touch()
    monkeypatch.setattr(_venv, 'VENV_PYTHON', str(fake_venv_python))
    monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` fails
    monkeypatch.setattr(sys, 'argv', ['tools/train.py', 'cfg.py', '--seed',
                                      '1'])
    if orig_argv is None:
        monkeypatch.delattr(sys, 'orig_argv', raising=False)
    else:
        monkeypatch.setattr(sys, 'orig_argv', orig_argv, raising=False)
    calls = []
    monkeypatch.setattr(_venv.os, 'execv',
                        lambda path, argv: calls.append((path, argv)))
    _venv.use_project_venv()
    python = str(fake_venv_python)
    expected = orig_argv[1:] if orig_argv else sys.argv
    assert calls == [(python, [python, *expected])]
    assert '-u' in calls[0][1] if orig_argv else calls[0][1][1] == \
        'tools/train.py'
