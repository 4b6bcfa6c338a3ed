"""The mmseg 1.x blocks of the docs, run as a user runs them: the README's
and docs/mmseg1x.md's config lines build, and their commands work as typed
in a new shell whose `python` has no torch (placeholders such as CONFIG
and the paper config replaced by a tiny config on generated data). The
markers that name these tests are checked by tests/test_docs.py."""
import glob
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
from mmengine.config import Config
from mmseg.registry import MODELS

from helpers1x import ROOT, free_port, write_config

FENCE = re.compile(r'^```(\w*)[^\n]*\n(.*?)^```[ \t]*$', re.M | re.S)
DEMO = osp.join(ROOT, 'configs', 'mmseg1x', 'demo',
                'fcn_r18slim-d8_1xb8-3000_digitscenes-lt-64x64.py')
PAPER = dict(pull_weight=0.1, anchor_ce_weight=1.0, filter_conf=0.9,
             update_conf=0.8, ema_momentum=0.999, anchor_init='gaussian',
             distance='mse', pull_mode='gate')


def block(path, lang, *words):
    """The one ``lang`` block of ``path`` that holds every word."""
    with open(osp.join(ROOT, path), encoding='utf-8') as f:
        text = f.read()
    (body, ) = [b for la, b in FENCE.findall(text)
                if la == lang and all(w in b for w in words)]
    return body


@pytest.fixture(scope='module')
def new_shell(tmp_path_factory):
    """Environment of a new shell whose `python` has no torch."""
    if not osp.exists(osp.join(ROOT, '.venv-mmseg1', 'bin', 'activate')):
        pytest.skip('needs the project .venv-mmseg1 (make install-mmseg1)')
    bare = tmp_path_factory.mktemp('bare')
    base = getattr(sys, '_base_executable', sys.executable)
    subprocess.run([base, '-m', 'venv', '--without-pip', str(bare)],
                   check=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ('PYTHON', 'VIRTUAL_ENV', 'PYTHONPATH', 'PYTHONHOME')}
    env['PATH'] = f'{bare / "bin"}:/usr/bin:/bin'
    env['OMP_NUM_THREADS'] = '1'
    return env


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    from sar.data import make_shapes_dataset
    return make_shapes_dataset(str(tmp_path_factory.mktemp('shapes')),
                               num_train=8, num_val=2, size=32)


def as_typed(body, words, extra):
    """The block's lines with each placeholder word replaced and, on a line
    holding a key of ``extra``, its value appended."""
    lines = []
    for line in body.strip().splitlines():
        for old, new in words.items():
            line = re.sub(rf'(?<![\w/.-]){re.escape(old)}(?![\w/.-])', new,
                          line)
        for key, args in extra.items():
            if key in line:
                line = f'{line} {args}'
        lines.append(line)
    return '\n'.join(lines)


def shell(script, env):
    proc = subprocess.run(['bash', '-ec', script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    return proc.stdout + proc.stderr


def check_wrapped(model, head_type, num_classes):
    head = model.decode_head
    assert type(head).__name__ == 'SARHead'
    assert type(head.head).__name__ == head_type
    assert head.sar_loss.num_classes == num_classes
    for key, value in PAPER.items():
        assert getattr(head.sar_loss, key) == value, key


def test_the_readme_1x_config_lines_build(tmp_path):
    # over any 1.x config with a decode head: the 1.x demo's baseline here
    body = block('README.md', 'python', 'head=_base_.model.decode_head')
    assert len(body.strip().splitlines()) == 5
    path = tmp_path / 'cfg.py'
    path.write_text(f"_base_ = [r'{DEMO}']\n{body}")
    base = Config.fromfile(DEMO).model.decode_head
    check_wrapped(MODELS.build(Config.fromfile(str(path)).model),
                  base.type, base.num_classes)


def test_the_docs_1x_config_lines_build(tmp_path):
    body = block('docs/mmseg1x.md', 'python', 'SARHead')
    path = tmp_path / 'cfg.py'
    path.write_text(body)
    check_wrapped(MODELS.build(Config.fromfile(str(path)).model), 'FCNHead',
                  150)


def test_the_readme_1x_commands_work_as_typed(tmp_path, shapes, new_shell):
    cfg = write_config(tmp_path / 'sar.py', shapes, iters=2)
    work = tmp_path / 'work'
    script = as_typed(
        block('README.md', 'shell', 'source .venv-mmseg1'),
        dict(CONFIG=cfg, CHECKPOINT=str(work / 'iter_2.pth')),
        {'tools/train.py': f'--work-dir {work}',
         'tools/test.py': f'--work-dir {tmp_path / "eval"}',
         'tools/analyze_features.py': f'--out-dir {tmp_path / "features"} '
         '--max-images 2'})
    assert script.startswith('source .venv-mmseg1/bin/activate\n')
    out = shell(script, new_shell)
    assert '| background |' in out
    assert glob.glob(str(tmp_path / 'eval' / '*' / '*.json'))
    assert 'separability ratio:' in out
    assert (tmp_path / 'features' / 'features.json').is_file()


def test_the_docs_1x_commands_work_as_typed(tmp_path, shapes, new_shell):
    cfg = write_config(tmp_path / 'sar.py', shapes, iters=2)
    work, dist = tmp_path / 'work', tmp_path / 'dist'
    ckpt, plain = work / 'iter_2.pth', tmp_path / 'plain.pth'
    paper = 'configs/mmseg1x/sar/sar_fcn_hr48_4xb4-160k_ade20k-512x512.py'
    body = block('docs/mmseg1x.md', 'shell', 'source .venv-mmseg1')
    assert f'tools/train.py {paper}' in body
    script = as_typed(
        body.replace(f'dist_train.sh {paper} 4', f'dist_train.sh {paper} 2'),
        {paper: cfg, 'CONFIG': cfg, 'SAR_CHECKPOINT': str(ckpt),
         'PLAIN_CHECKPOINT': str(plain), 'CHECKPOINT': str(ckpt)},
        {'tools/train.py': f'--work-dir {work}',
         'dist_train.sh': f'--work-dir {dist}',
         'tools/test.py': f'--work-dir {tmp_path / "eval"}'})
    assert 'dist_train.sh' in script and 'export_plain.py' in script
    shell(script, dict(new_shell, PORT=free_port()))
    assert osp.isfile(dist / 'iter_2.pth')
    assert glob.glob(str(tmp_path / 'eval' / '*' / '*.json'))
    assert plain.is_file()


def test_the_docs_one_test_command_runs(new_shell):
    # docs/development.md: one test file with the 1.x environment's Python
    out = shell(block('docs/development.md', 'shell',
                      '.venv-mmseg1/bin/python'), new_shell)
    assert re.search(r'\b\d+ passed\b', out), out[-2000:]
