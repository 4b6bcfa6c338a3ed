"""The locks of requirements/lock/ and the tool that reads them
(tools/locks.py): what `make install` installs is what the lock says, and
the lock says what the loose requirements ask for."""
import os
import os.path as osp
import subprocess
import sys

import pytest

from conftest import ROOT
from lock_env import assert_environment_is_its_lock, project_venv_or_skip

sys.path.insert(0, osp.join(ROOT, 'tools'))
import locks  # noqa: E402  (tools/locks.py)

LOCKS = osp.join(ROOT, 'requirements', 'lock')


def pins(name):
    return locks.read_pins(osp.join(LOCKS, name))


def loose(*names):
    """``{name: spec}`` of requirements/<name>, following -r and -c."""
    found = {}
    for name in names:
        with open(osp.join(ROOT, 'requirements', name)) as f:
            for line in f:
                line = line.split('#')[0].strip()
                if line.startswith(('-r ', '-c ')):
                    found.update(loose(line[3:].strip()))
                elif line:
                    req = line.replace(' ', '')
                    key = locks.normalise(req.split('==')[0].split('>')[0]
                                          .split('<')[0].split('!')[0])
                    found[key] = req
    return found


@pytest.mark.parametrize('line, expected', [
    ('torch==2.14.1 \\\n', {'torch': '2.14.1'}),
    ('PyYAML==6.0.4\n', {'pyyaml': '6.0.4'}),
    ('Typing_Extensions==4.16.0 ; sys_platform == "linux" \\\n',
     {'typing-extensions': '4.16.0'}),
    ('    --hash=sha256:0123\n', {}),
    ('    # via mmcls\n', {}),
    ('# torch==1.0\n', {}),
    ('-e /work/clone\n', {}),
    ('mmcv-full @ file:///tmp/mmcv_full-1.7.2-cp311.whl\n', {}),
    ('numpy>=1.0\n', {}),
])
def test_pins_are_the_exact_name_version_lines(line, expected):
    assert locks.parse_pins([line]) == expected


def test_differences_name_every_kind_of_drift():
    locked = {'a': '1', 'b': '2', 'c': '3'}
    present = {'a': '1', 'b': '2.1', 'd': '4', 'mmcv-full': '1.7.2'}
    assert locks.differences(locked, present, ['mmcv_full']) == [
        '  b: locked 2, installed 2.1',
        '  c==3 is locked, not installed',
        '  d==4 is installed, not in the lock']
    assert locks.differences(locked, dict(locked, sar='0.3'), ['sar']) == []


def test_a_freeze_and_its_lock_have_one_digest(tmp_path):
    lock = tmp_path / 'lock.txt'
    lock.write_text('numpy==2.4.6 \\\n    --hash=sha256:00\n'
                    '    # via torch\nPyYAML==6.0.4 \\\n    --hash=sha256:11\n')
    freeze = 'mmcv-full==1.7.2\npyyaml==6.0.4\nnumpy==2.4.6\n'
    proc = [subprocess.run(
        [sys.executable, 'tools/locks.py', 'digest', src, '--extra',
         'mmcv-full'], cwd=ROOT, input=freeze, capture_output=True,
        text=True) for src in ('-', str(lock))]
    assert proc[0].returncode == proc[1].returncode == 0
    assert proc[0].stdout == proc[1].stdout
    assert len(proc[0].stdout.strip()) == 64
    other = locks.digest({'numpy': '2.4.7', 'pyyaml': '6.0.4'})
    assert other != proc[0].stdout.strip()


def test_the_carried_set_is_the_device_lock_less_the_twin(tmp_path):
    (tmp_path / 'all.txt').write_text(
        'addict==2.4.0 \\\n    --hash=sha256:aa \\\n    --hash=sha256:ab\n'
        '    # via mmcv\ntorch==2.11.0 \\\n    --hash=sha256:cc\n'
        'yapf==0.40.1 \\\n    --hash=sha256:dd\n')
    (tmp_path / 'twin.txt').write_text('torch==2.11.0 \\\n'
                                       '    --hash=sha256:cc\n')
    proc = subprocess.run(
        [sys.executable, 'tools/locks.py', 'subset', str(tmp_path / 'all.txt'),
         '--minus', str(tmp_path / 'twin.txt')], cwd=ROOT,
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ('addict==2.4.0 \\\n    --hash=sha256:aa \\\n'
                           '    --hash=sha256:ab\n'
                           'yapf==0.40.1 \\\n    --hash=sha256:dd\n')


def test_every_lock_pins_every_entry_with_hashes():
    for name in ('mmseg0', 'mmseg1', 'onedl', 'build', 'build-onedl', 'uv',
                 'device-twin', 'device'):
        with open(osp.join(LOCKS, f'{name}.txt')) as f:
            found = list(locks.blocks(f))
        assert found, name
        for pkg, text in found:
            assert '--hash=sha256:' in text, (name, pkg)


@pytest.mark.parametrize('lock, inputs', [
    ('mmseg0.txt', ['tests.txt', 'frameworks.txt', 'constraints.txt']),
    ('mmseg1.txt', ['mmseg1.txt', 'test-tools.txt', 'demo.txt']),
    ('onedl.txt', ['onedl.txt', 'test-tools.txt', 'demo.txt']),
    ('device.txt', ['device.txt', 'device-twin.txt', 'constraints.txt']),
    ('device-twin.txt', ['device-twin.txt']),
])
def test_each_lock_holds_what_its_loose_requirements_ask(lock, inputs):
    # A loose requirement edited without `make lock` fails here, not on a
    # newcomer's machine.
    locked = pins(lock)
    for name, spec in loose(*inputs).items():
        assert name in locked, (lock, spec)
        if '==' in spec:
            assert locked[name] == spec.split('==')[1], (lock, spec)


def test_the_set_up_scripts_install_the_locked_versions():
    def value(script, var):
        with open(osp.join(ROOT, 'tools', script)) as f:
            for line in f:
                if line.startswith(f'{var}='):
                    return line.split('=', 1)[1].strip()

    assert pins('mmseg0.txt')['mmsegmentation'] == \
        value('setup_env.sh', 'MMSEG_VERSION')
    # mmcv's own requirements come from the lock (its wheel goes in with
    # --no-deps): mmcv 2.1.0 needs mmengine.
    assert 'mmengine' in pins('mmseg1.txt')
    assert 'onedl-mmengine' in pins('onedl.txt')
    # OneDL's stack takes the same modules from its own distributions, the
    # upstream ones would shadow them.
    assert not {'mmengine', 'mmsegmentation', 'mmcv'} & set(pins('onedl.txt'))
    assert pins('onedl.txt')['torch'] == pins('mmseg1.txt')['torch']
    assert pins('device-twin.txt')['torch'] == \
        loose('device-twin.txt')['torch'].split('==')[1]


def test_the_device_set_carries_what_mmseg_030_needs_at_the_tested_versions():
    carried = {n: v for n, v in pins('device.txt').items()
               if n not in pins('device-twin.txt')}
    assert carried['mmsegmentation'] == '0.30.0'
    # mmseg's and mmcv's needs that the device image lacks are all carried,
    # at the versions the 0.30 suite runs with (its lock).
    needed = {'mmcls', 'addict', 'yapf', 'prettytable', 'importlib-metadata',
              'lazy-importer'}
    assert needed <= set(carried)
    tested = pins('mmseg0.txt')
    for name in carried:
        assert carried[name] == tested[name], name
    assert loose('constraints.txt')['yapf'] == f"yapf=={carried['yapf']}"


def test_a_drifted_environment_is_brought_back_to_its_lock(tmp_path):
    # sync_locked removes what the lock does not name and leaves what it
    # pins; a second run finds nothing to do. Offline: both distributions
    # are made here, so no index is asked.
    venv = tmp_path / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)],
                   check=True)
    site = subprocess.run(
        [str(venv / 'bin' / 'python'), '-c',
         'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
        capture_output=True, text=True, check=True).stdout.strip()
    for name in ('kept', 'drifted'):
        info = osp.join(site, f'{name}-1.0.dist-info')
        os.makedirs(info)
        with open(osp.join(info, 'METADATA'), 'w') as f:
            f.write(f'Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n')
        with open(osp.join(info, 'INSTALLER'), 'w') as f:
            f.write('pip\n')
        with open(osp.join(info, 'RECORD'), 'w') as f:
            f.write(''.join(f'{name}-1.0.dist-info/{part},,\n'
                            for part in ('METADATA', 'INSTALLER', 'RECORD')))
    (tmp_path / 'lock.txt').write_text('kept==1.0\n')
    script = ('set -euo pipefail; log() { echo "LOG $*"; }; '
              f'ROOT={ROOT}; source tools/_env_common.sh; '
              f'PYTHON={sys.executable}; VENV={venv}; open_venv {venv}; '
              f'ensure_uv; sync_locked {tmp_path}/lock.txt')
    env = dict(os.environ, UV_OFFLINE='1')
    first, second = (subprocess.run(['bash', '-c', script], cwd=ROOT, env=env,
                                    capture_output=True, text=True)
                     for _ in range(2))
    assert first.returncode == 0, first.stdout + first.stderr
    assert 'LOG bringing' in first.stdout
    assert 'drifted==1.0 is installed, not in the lock' in first.stdout
    assert not osp.exists(osp.join(site, 'drifted-1.0.dist-info'))
    assert osp.exists(osp.join(site, 'kept-1.0.dist-info'))
    assert second.returncode == 0, second.stdout + second.stderr
    assert 'LOG bringing' not in second.stdout


def test_the_environment_is_exactly_its_lock():
    project_venv_or_skip('.venv')
    assert_environment_is_its_lock('mmseg0.txt', 'mmcv-full')
