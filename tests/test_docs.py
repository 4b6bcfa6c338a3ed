"""The docs cannot go stale silently (docs/development.md, "Docs that cannot
go stale silently").

- Every ``shell`` and ``python`` block of the README, the changelog and
  docs/ is run: unmarked, here, as typed, in a new shell; or by the test an
  HTML comment right before it names (``<!-- run by: tests/F.py::T -->``);
  or it says why not (``<!-- not run: REASON -->``, reported as skipped).
- Every relative link and image resolves, ``#anchors`` included.
- Every table of figures names the command that made them and the machine.
- The README stays short; the version is one in package, changelog and
  CITATION.cff.
The last tests plant each kind of defect in a scratch text and see the
checks catch it.
"""
import os
import os.path as osp
import re
import subprocess

import pytest
import yaml

from conftest import DEMO_BASELINE, ROOT
from test_newcomer import new_shell  # noqa: F401 (a fixture)

DOCS = ['README.md', 'CHANGELOG.md'] + sorted(
    f'docs/{name}' for name in os.listdir(osp.join(ROOT, 'docs'))
    if name.endswith('.md'))
# Links and command blocks are checked in the configs' notes too.
LINKED = DOCS + ['configs/sar/README.md',
                 'configs/demo/digitscenes_calibration.md']
COMMAND_LANGS = ('shell', 'bash', 'sh', 'console', 'python')
FENCE = re.compile(r'^```(\w*)[^\n]*\n(.*?)^```[ \t]*$', re.M | re.S)
MARKER = re.compile(r'<!--\s*(run by|not run):\s*(.*?)\s*-->\s*\Z', re.S)
TEST_REF = re.compile(r'(tests/[\w/]+\.py)::(\w+)')
BLOCK_TIMEOUT = 300


def read(path):
    with open(osp.join(ROOT, path), encoding='utf-8') as f:
        return f.read()


def blocks(text):
    """(lang, body, marker kind or None, marker text, line) per fenced block;
    the marker is an HTML comment with nothing but blank lines after it."""
    out = []
    for m in FENCE.finditer(text):
        before = text[:m.start()].rstrip()
        start = before.rfind('<!--')
        marker = MARKER.match(before[start:]) if start >= 0 else None
        kind, note = (marker.group(1), marker.group(2)) if marker else \
            (None, '')
        out.append((m.group(1), m.group(2), kind, note,
                    text.count('\n', 0, m.start()) + 1))
    return out


def command_blocks():
    return [(path, *block) for path in LINKED for block in blocks(read(path))
            if block[0] in COMMAND_LANGS]


def check_run_by(note):
    """The tests a 'run by' marker names exist; AssertionError if not."""
    refs = TEST_REF.findall(note)
    assert refs, f'"run by" names no tests/FILE.py::TEST: {note!r}'
    for file, name in refs:
        path = osp.join(ROOT, file)
        assert osp.isfile(path), f'{file} (named by a marker) is missing'
        with open(path) as f:
            assert re.search(rf'^def {name}\(', f.read(), re.M), \
                f'{file} has no test {name} (named by a marker)'


def run_block(lang, body, env):
    """Run an unmarked block as typed from the project root; AssertionError
    with its output if it fails."""
    if lang == 'python':
        argv = [osp.join(ROOT, '.venv', 'bin', 'python'), '-c', body]
    else:
        argv = ['bash', '-ec', body]
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=BLOCK_TIMEOUT)
    assert proc.returncode == 0, \
        f'exit {proc.returncode}:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}'


def check_block(lang, body, kind, note, env, where=''):
    """Skip, check the named tests, or run; ``env()`` gives the shell's
    environment, asked for only when the block runs here."""
    if kind == 'not run':
        assert note, 'a "not run" marker says why'
        pytest.skip(f'{where}not run: {note}')
    if kind == 'run by':
        check_run_by(note)
        return
    run_block(lang, body, env())


@pytest.mark.parametrize(
    'path,lang,body,kind,note',
    [b[:5] for b in command_blocks()],
    ids=[f'{b[0]}:{b[5]}' for b in command_blocks()])
def test_every_command_block_runs_or_says_why(path, lang, body, kind, note,
                                              request):
    # The new shell (tests/test_newcomer.py) only for blocks run here.
    line = request.node.callspec.id.rsplit(':', 1)[-1]
    check_block(lang, body, kind, note,
                lambda: request.getfixturevalue('new_shell'),
                where=f'{path}:{line}: ')


def test_paths_named_in_command_blocks_exist():
    named = set()
    for _, _, body, *_ in command_blocks():
        named.update(re.findall(r'(?:tools|configs|tests)/[\w./-]+', body))
    assert len(named) > 10
    for path in named:
        assert osp.exists(osp.join(ROOT, path.rstrip('.'))), path


def slug(heading):
    """GitHub's anchor for a heading."""
    text = re.sub(r'\[([^]]*)\]\([^)]*\)', r'\1', heading.replace('`', ''))
    text = re.sub(r'[^\w\- ]', '', text.strip().lower())
    return text.replace(' ', '-')


def anchors(text):
    seen, out = {}, set()
    for line in FENCE.sub('', text).splitlines():
        m = re.match(r'#{1,6}\s+(.*?)\s*#*\s*$', line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f'{base}-{n}')
    return out


def broken_links(text, path):
    """The relative links and images of ``text`` (the file ``path``,
    relative to ROOT) that do not resolve."""
    whole = text
    text = re.sub(r'<!--.*?-->', '', FENCE.sub('', text), flags=re.S)
    text = re.sub(r'`[^`\n]*`', '', text)
    bad = []
    for target in re.findall(r'\]\(([^)\s]+)(?:\s+"[^"]*")?\)', text):
        if re.match(r'[a-z][a-z0-9+.-]*:', target):  # http:, mailto:
            continue
        file, _, anchor = target.partition('#')
        if not file:  # an anchor of this text
            if anchor not in anchors(whole):
                bad.append(target)
            continue
        where = osp.normpath(osp.join(osp.dirname(osp.join(ROOT, path)),
                                      file))
        if not osp.exists(where):
            bad.append(target)
        elif anchor:
            if not where.endswith('.md'):
                bad.append(target)
                continue
            with open(where, encoding='utf-8') as f:
                if anchor not in anchors(f.read()):
                    bad.append(target)
    return bad


@pytest.mark.parametrize('path', LINKED)
def test_relative_links_resolve(path):
    assert broken_links(read(path), path) == []


FIGURE = re.compile(r'[+x~-]?\d+(\.\d+)?(\s*(%|s|ms|GB|MB))?'
                    r'(\s*[(/+].*)?')
COMMAND = re.compile(r'`(make |python |bash |tools/)[^`]*`')
MACHINE = re.compile(r'machine|H200|GPU|CPU|cores', re.I)


def tables_without_provenance(text):
    """The first row of each table of figures that names no command or no
    machine, in its own cells or in the text since the last heading or
    table; tables of mmseg's published figures say so instead."""
    bad, caption, lines = [], [], FENCE.sub('', text).splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith('|') and i + 1 < len(lines) and \
                re.match(r'\|\s*:?-{3,}', lines[i + 1]):
            end = i
            while end < len(lines) and lines[end].startswith('|'):
                end += 1
            table = lines[i:end]
            cells = [c.strip().replace('`', '') for row in table[2:]
                     for c in row.strip('|').split('|')]
            if any(FIGURE.fullmatch(c) for c in cells):
                told = '\n'.join(caption + table)
                if not ('published by mmseg' in told or (
                        COMMAND.search(told) and MACHINE.search(told))):
                    bad.append(line)
            caption, i = [], end
            continue
        caption = [line] if line.startswith('#') else caption + [line]
        i += 1
    return bad


@pytest.mark.parametrize('path', DOCS)
def test_every_table_of_figures_names_command_and_machine(path):
    assert tables_without_provenance(read(path)) == []


def test_the_readme_is_a_short_front_door():
    readme = read('README.md')
    assert len(readme.splitlines()) <= 200
    heads = [line for line in readme.splitlines() if line.startswith('## ')]
    # results, the quick start and the config lines come first, before any
    # page of measurements
    assert heads[:3] == ['## Results', '## Quick start',
                         '## SAR in your config']
    assert 'make test' in readme and 'make demo' in readme
    assert '![' in readme.split('## Results')[0]  # the demo picture
    for page in DOCS[2:]:
        assert f']({page})' in readme, f'the README links {page}'


def test_one_version_in_package_changelog_and_citation():
    import sar
    newest = re.search(r'^## (\d+\.\d+\.\d+) \(\d{4}-\d\d-\d\d\)$',
                       read('CHANGELOG.md'), re.M).group(1)
    cff = yaml.safe_load(read('CITATION.cff'))
    assert sar.__version__ == newest == cff['version']
    assert cff['cff-version'] == '1.2.0'
    assert cff['preferred-citation']['title'].startswith('Beyond Prototypes')
    bibtex = [b for lang, b, *_ in blocks(read('README.md'))
              if lang == 'bibtex']
    assert len(bibtex) == 1 and '2312.11872' in bibtex[0]


def _block(path, *words):
    (body, ) = [b for lang, b, *_ in blocks(read(path))
                if lang == 'python' and all(w in b for w in words)]
    return body


def _build(tmp_path, body):
    from mmcv.utils import Config
    from mmseg.models import build_segmentor
    cfg_file = tmp_path / 'cfg.py'
    cfg_file.write_text(f"_base_ = r'{DEMO_BASELINE}'\n{body}")
    cfg = Config.fromfile(str(cfg_file))
    return build_segmentor(cfg.model)


PAPER = dict(pull_weight=0.1, anchor_ce_weight=1.0, filter_conf=0.9,
             update_conf=0.8, ema_momentum=0.999, anchor_init='gaussian',
             distance='mse', pull_mode='gate')


def _check_sar_model(model, **expected):
    from mmcv.utils import Config
    head = model.decode_head
    assert type(head).__name__ == 'SARHead'
    base = Config.fromfile(DEMO_BASELINE).model.decode_head
    assert type(head.head).__name__ == base.type
    paper = Config.fromfile(osp.join(ROOT, 'configs/_base_/sar_paper.py'))
    assert {k: v for k, v in paper.sar_loss.items() if k != 'type'} == PAPER
    for key, value in dict(PAPER, **expected).items():
        assert getattr(head.sar_loss, key) == value, key


def test_the_readme_config_lines_build(tmp_path):
    # over any base config with a decode head: the demo's baseline here
    body = _block('README.md', 'SARHead', '{{_base_')
    assert len(body.strip().splitlines()) == 5
    _check_sar_model(_build(tmp_path, body))  # the paper's defaults


def test_the_full_config_block_builds_with_these_values(tmp_path):
    body = _block('docs/configuration.md', 'SARHead')
    _check_sar_model(_build(tmp_path, body), anchor_source='embedded')


def test_plain_torch_example_runs():
    code = _block('docs/configuration.md', 'from sar.core')
    scope = {}
    exec(compile(code, 'docs/configuration.md', 'exec'), scope)
    assert scope['loss'].requires_grad
    # A fresh classifier rarely opens the gate: then the pull is an exact
    # zero that is not computed, and only the anchor CE has a gradient.
    if scope['out']['gate_open'].item():
        assert scope['feats'].grad is not None
    else:
        assert scope['out']['pull'].item() == 0
        assert scope['feats'].grad is None


# The checks catch what they are for.

SCRATCH = '''# Scratch

## A heading

<!-- not run: needs a GPU -->
```shell
gpu-only-command
```

<!-- run by: tests/test_docs.py::no_such_test -->
```shell
echo named
```

```shell
exit 3
```

[ok](#a-heading) [gone](docs/no_such_page.md) [bad anchor](#no-heading)
[web](https://example.org/x.md)

Measured somewhere:

| what | value |
| --- | --- |
| step | 2.23 s |
'''


def test_the_checks_fail_on_planted_defects(tmp_path):
    (gpu, named, unmarked) = blocks(SCRATCH)
    assert gpu[2:4] == ('not run', 'needs a GPU')
    with pytest.raises(pytest.skip.Exception, match='needs a GPU'):
        check_block(*gpu[:4], env=None)
    with pytest.raises(AssertionError, match='no test no_such_test'):
        check_block(*named[:4], env=None)
    assert unmarked[2] is None
    with pytest.raises(AssertionError, match='exit 3'):
        check_block(*unmarked[:4], env=lambda: dict(os.environ))
    assert broken_links(SCRATCH, 'README.md') == ['docs/no_such_page.md',
                                                  '#no-heading']
    assert tables_without_provenance(SCRATCH) == ['| what | value |']
    told = SCRATCH.replace('Measured somewhere:',
                           'Measured by `python tools/x.py` on machine 1:')
    assert tables_without_provenance(told) == []


def test_slugs_are_githubs():
    assert slug("OneDL's fork: tried, not supported yet") == \
        'onedls-fork-tried-not-supported-yet'
    assert slug('Decode heads of the 1.x zoo') == 'decode-heads-of-the-1x-zoo'
    assert slug('Reusing an installed torch: `SAR_SYSTEM_SITE`') == \
        'reusing-an-installed-torch-sar_system_site'
    assert anchors('## A\n## A\n```\n## not a heading\n```\n') == {'a', 'a-1'}
