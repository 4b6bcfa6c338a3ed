"""The README's commands: the Quick start is what CI and users run, and
every path it names exists. Its config lines and the docs' blocks are run
by tests/test_docs.py."""
import os
import os.path as osp
import re
import subprocess

from bare_run import bare_collection
from conftest import ROOT

with open(osp.join(ROOT, 'README.md')) as f:
    README = f.read()
BLOCKS = re.findall(r'```(\w+)\n(.*?)```', README, re.S)


def test_quick_start_is_make_demo_then_make_test():
    quick = README.split('## Quick start', 1)[1].split('\n## ', 1)[0]
    shell = [body.strip() for lang, body in
             re.findall(r'```(\w+)\n(.*?)```', quick, re.S)]
    assert shell == ['make demo', 'make test']
    with open(osp.join(ROOT, 'Makefile')) as f:
        makefile = f.read()
    assert re.search(r'^demo: install$', makefile, re.M)
    # make test sets up both environments and runs both suites.
    env = {k: v for k, v in os.environ.items()
           if k not in ('MAKEFLAGS', 'MFLAGS', 'MAKELEVEL')}  # under make
    planned = subprocess.run(
        ['make', '-n', '--no-print-directory', 'test'], cwd=ROOT, env=env,
        capture_output=True, text=True, check=True).stdout.splitlines()
    assert planned == [
        'bash tools/setup_env.sh',
        '.venv/bin/python -m pytest -n auto --dist loadfile '
        '--no-loadscope-reorder tests --ignore=tests/mmseg1x',
        'bash tools/setup_env_mmseg1.sh',
        '.venv-mmseg1/bin/python -m pytest -n auto --dist loadfile '
        '--no-loadscope-reorder tests/mmseg1x']
    with open(osp.join(ROOT, '.ci', 'run')) as f:
        ci = [line for line in f.read().splitlines()
              if line and not line.startswith('#')]
    assert ci[-1] == 'make test'


def test_the_files_run_first_exist():
    # A renamed file would silently drop out of the longest-first order.
    from conftest import LONGEST_FIRST
    assert LONGEST_FIRST and [name for name in LONGEST_FIRST
                              if not osp.isfile(osp.join(ROOT, name))] == []


def test_paths_named_in_shell_blocks_exist():
    named = set()
    for lang, body in BLOCKS:
        if lang == 'shell':
            named.update(re.findall(r'(?:tools|configs)/[\w./-]+', body))
    assert named
    for path in named:
        assert osp.exists(osp.join(ROOT, path)), path


def test_a_bare_pytest_collects_this_suite_only():
    # With mmseg 0.x, tests/mmseg1x (its conftest would shadow this one's
    # helpers) stays out.
    ids = bare_collection()
    assert ids and not [i for i in ids if i.startswith('tests/mmseg1x/')]
    assert 'tests/test_readme.py::test_a_bare_pytest_collects_this_suite_' \
        'only' in ids
