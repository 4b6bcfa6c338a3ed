"""tools/gpu_check.py and its shell entry: the rehearsal of the GPU check.

The check itself needs a GPU machine; here its CPU rehearsal runs every
step of it (the paper's HRNetV2-W48 model at 64 px, 2 iterations) under
this environment, and the parts that decide pass or fail are checked on
their own.
"""
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmcv.utils import Config
from PIL import Image

from conftest import ROOT

from sar.data import make_ade_like
from sar.mmseg0x import gpu_check

sys.path.insert(0, osp.join(ROOT, 'tools'))
import gpu_check as tool  # noqa: E402  (tools/gpu_check.py: the flags)

PY = sys.executable


def run(args, **env):
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS='1', **env),
                          timeout=1200)


def test_generated_data_has_ades_layout_and_values(tmp_path):
    info = make_ade_like(str(tmp_path), 3, 2, size=40)
    for split, count in (('training', 3), ('validation', 2)):
        imgs = sorted(os.listdir(tmp_path / 'images' / split))
        anns = sorted(os.listdir(tmp_path / 'annotations' / split))
        assert len(imgs) == len(anns) == count
        assert all(f.endswith('.jpg') for f in imgs)
        label = np.array(Image.open(tmp_path / 'annotations' / split /
                                    anns[0]))
        assert label.shape == (40, 40)
        # 0 ("other", ignored by reduce_zero_label) or a present class.
        assert set(np.unique(label)) <= {0, *info['present_classes']}
        assert len(np.unique(label)) > 3
    assert all(1 <= c <= 150 for c in info['present_classes'])


def test_derived_config_keeps_the_model_and_changes_sizes(tmp_path):
    data = str(tmp_path / 'data')
    sizes = dict(gpu_check.CPU, size=48)
    dst = gpu_check.derive_config(gpu_check.PAPER_SAR,
                                  str(tmp_path / 'c.py'), data, sizes,
                                  iters=7, batch=3, fp16=True, probe=True,
                                  gloo=True, load_from='start.pth')
    cfg = Config.fromfile(dst, import_custom_modules=False)
    paper = Config.fromfile(osp.join(ROOT, gpu_check.PAPER_SAR))
    assert cfg.model.pretrained is None and paper.model.pretrained
    paper.model.pretrained = None
    assert cfg.model.decode_head.sar_loss.pull_mode == 'after_init'
    assert cfg.load_from == 'start.pth'
    cfg.model.decode_head.sar_loss.pull_mode = 'gate'
    assert cfg.model == paper.model  # SAR settings, head, SyncBN: as is
    assert cfg.optimizer == paper.optimizer and cfg.seed == paper.seed
    # Repeated: mmcv's IterLoader pauses 2 s at every epoch end.
    assert cfg.data.train.type == 'RepeatDataset'
    train = cfg.data.train.dataset
    assert all(d.data_root == data for d in (train, cfg.data.val,
                                             cfg.data.test))
    assert cfg.data.workers_per_gpu == sizes['workers']
    steps = {t['type']: t for t in train.pipeline}
    assert steps['RandomCrop']['crop_size'] == (48, 48)
    assert steps['Pad']['size'] == (48, 48)
    assert steps['Resize']['img_scale'] == (192, 48)
    assert cfg.data.test.pipeline[1]['img_scale'] == (192, 48)
    assert (cfg.runner.max_iters, cfg.checkpoint_config.interval,
            cfg.data.samples_per_gpu) == (7, 7, 3)
    assert cfg.fp16 == dict(loss_scale='dynamic')
    assert cfg.custom_hooks == [dict(type='SARRankProbeHook')]
    assert 'sar' in cfg.custom_imports.imports
    assert cfg.dist_params == dict(backend='gloo')


def test_training_summary_fails_on_missing_keys_and_nan():
    rows = [dict(iter=1, time=9.0, loss=1.0, memory=10,
                 **{'decode.loss_sar_pull': 0.0,
                    'decode.loss_sar_anchor_ce': 2.0,
                    'decode.sar.gate_open': 0.0,
                    'decode.sar.anchor_max_cos': 0.4}),
            dict(iter=2, time=1.0, loss=0.5, memory=12,
                 **{'decode.loss_sar_pull': 0.1,
                    'decode.loss_sar_anchor_ce': 1.0,
                    'decode.sar.gate_open': 1.0,
                    'decode.sar.anchor_max_cos': 0.4})]
    summary, checks = gpu_check.summarize_training(rows, sar=True)
    assert all(checks.values())
    assert summary['time_per_iter_s'] == 1.0  # the first interval left out
    assert summary['max_memory_mb'] == 12
    assert summary['last_sar']['decode.sar.gate_open'] == 1.0
    rows[1]['loss'] = float('nan')
    assert not gpu_check.summarize_training(rows, True)[1]['losses_finite']
    plain = [{k: v for k, v in r.items() if 'sar' not in k} for r in rows]
    assert not gpu_check.summarize_training(plain, True)[1][
        'sar_keys_logged']
    assert not gpu_check.summarize_training([], True)[1]['logged']


def test_fp16_is_read_from_the_loss_scale_the_checkpoint_keeps(tmp_path):
    fp16 = tmp_path / 'fp16.pth'
    torch.save(dict(meta=dict(fp16=dict(loss_scaler=dict(scale=32768.0))),
                    state_dict={}), fp16)
    assert gpu_check.loss_scale(str(fp16)) == 32768.0
    fp32 = tmp_path / 'fp32.pth'
    torch.save(dict(meta=dict(iter=2), state_dict={}), fp32)
    assert gpu_check.loss_scale(str(fp32)) is None
    assert gpu_check.loss_scale(str(tmp_path / 'absent.pth')) is None


def test_the_dist_steps_start_loads_as_a_whole_with_its_anchors_set(
        tmp_path):
    # SAR loads its state as one unit or none of it: a start that lacked a
    # key would load nothing, and the dist step would then compare two
    # ranks that never pulled.
    import warnings

    from mmcv.runner import load_checkpoint
    from torch import nn

    from sar.core import SemanticAnchorRegularizer

    def model():
        m = nn.Module()
        m.decode_head = nn.Module()
        m.decode_head.sar_loss = SemanticAnchorRegularizer(5, 8)
        return m

    src = tmp_path / 'trained.pth'
    torch.save(dict(state_dict=model().state_dict(), meta={}), src)
    dst = gpu_check.pulling_start(str(src), str(tmp_path / 'start.pth'))
    written = torch.load(dst, weights_only=False)['state_dict']
    torch.manual_seed(1)  # another rank's draw
    rank = model()
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        load_checkpoint(rank, dst, map_location='cpu')
    sar = rank.decode_head.sar_loss
    assert bool(sar.initialised) and int(sar.iters_since_init) == 0
    prefix = 'decode_head.sar_loss.'
    for key in ('semantic_anchors', 'init_anchors'):
        assert torch.equal(getattr(sar, key), written[prefix + key]), key
    assert sar.semantic_anchors.abs().sum() > 0


def test_a_step_that_raises_fails_alone(tmp_path):
    check = gpu_check.Check(tool.parse_args(
        [str(tmp_path / 'out'), '--cpu', '--work-dir', str(tmp_path / 'w')]))
    assert check.guarded('broken', lambda: 1 / 0) is False
    check.guarded('fine', lambda: check.record('fine', checks=dict(a=True)))
    steps = check.report['steps']
    assert not steps['broken']['ok']
    assert 'ZeroDivisionError' in steps['broken']['error']
    assert steps['fine']['ok']
    assert check.finish() == 1
    text = (tmp_path / 'out' / 'gpu_check.txt').read_text()
    assert 'FAIL broken' in text and 'PASS fine' in text


def test_a_spent_budget_fails_the_check(tmp_path):
    proc = run([PY, 'tools/gpu_check.py', str(tmp_path / 'out'), '--cpu',
                '--budget', '5'])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    with open(tmp_path / 'out' / 'gpu_check.json') as f:
        report = json.load(f)
    assert report['passed'] is False
    assert report['steps']['env']['skipped'] == 'the time budget was spent'
    assert 'FAIL env' in (tmp_path / 'out' / 'gpu_check.txt').read_text()


def test_the_budget_is_the_sum_of_the_step_limits(tmp_path):
    # Checked alone, each step may use all of its own limit.
    check = gpu_check.Check(tool.parse_args(
        [str(tmp_path / 'out'), '--work-dir', str(tmp_path / 'work')]))
    steps = []
    check.guarded = lambda name, step: steps.append(name) or True
    check.steps()
    kinds = [n.split('_')[0] for n in steps if n not in ('env', 'data')]
    limits = gpu_check.GPU['limits']
    assert kinds.count('train') == gpu_check.TRAIN_STEPS
    total = sum(limits[k] for k in kinds + ['env'])
    assert gpu_check.default_budget(gpu_check.GPU, gpu_check.TRAIN_STEPS) \
        == total
    assert check.budget.left() == pytest.approx(total, abs=5)
    # With the 1.x check in one command (--stack), even at every limit
    # these steps leave the 1.x ones a part of the shared budget.
    assert total < tool.GPU_BUDGET - 100


def test_a_step_stopped_at_the_deadline_still_ends_by_it(tmp_path):
    # A step's limit leaves its TERM grace (torchrun's 40 s for the ranks)
    # and the report's seconds within the budget.
    check = gpu_check.Check(tool.parse_args(
        [str(tmp_path / 'out'), '--cpu', '--budget', '100', '--work-dir',
         str(tmp_path / 'w')]))
    assert check.limit('train') == pytest.approx(85, abs=1)
    assert check.limit('dist') == pytest.approx(55, abs=1)
    check.budget = gpu_check.Budget(50)
    assert check.limit('dist') is None and check.limit('train') > 30


def test_a_shared_deadline_caps_the_budget():
    import time
    assert gpu_check.Budget(100).left() == pytest.approx(100, abs=1)
    assert gpu_check.Budget(100, deadline=time.time() + 30).left() == \
        pytest.approx(30, abs=1)
    assert gpu_check.Budget(10, deadline=time.time() + 30).left() == \
        pytest.approx(10, abs=1)


def test_stacks_are_named_once_each(capsys):
    for argv in (['out', '--stack', 'mmseg2x', PY],
                 ['out', '--stack', 'mmseg0x'],
                 ['out', '--stack', 'mmseg0x', PY, '--stack', 'mmseg0x', PY]):
        with pytest.raises(SystemExit):
            tool.parse_args(argv)
    args = tool.parse_args(['out', '--stack', 'mmseg0x', PY, '/site',
                            '--stack', 'mmseg1x', PY])
    assert args.stack == [['mmseg0x', PY, '/site'], ['mmseg1x', PY]]
    assert tool.stack_budget(args) == tool.GPU_BUDGET
    args.cpu = True
    one = gpu_check.SIZES['mmseg1x']
    assert tool.stack_budget(args) == gpu_check.default_budget(
        gpu_check.CPU, gpu_check.TRAIN_STEPS) + gpu_check.default_budget(
            one['cpu'], one['train_steps'])


def test_a_stack_run_reports_each_generation_in_its_folder(tmp_path):
    # The shared budget spent before the first step: the stack's check
    # fails, with its report in OUT/mmseg0x, and so does the whole run.
    out = tmp_path / 'out'
    proc = run([PY, 'tools/gpu_check.py', str(out), '--cpu', '--budget', '5',
                '--stack', 'mmseg0x', PY])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert 'mmseg0x FAILED' in proc.stdout
    report = json.loads((out / 'mmseg0x' / 'gpu_check.json').read_text())
    assert report['steps']['env']['skipped'] == 'the time budget was spent'


def test_shell_entry_says_what_is_missing(tmp_path):
    good = tmp_path / 'good'
    good.mkdir()
    (good / 'b.whl').write_bytes(b'listed')
    subprocess.run(['bash', '-c', f'cd {good} && sha256sum b.whl > '
                    'SHA256SUMS'], check=True)
    for sets in (dict(SAR_DEVICE_WHEELS=str(tmp_path / 'none'),
                      SAR_DEVICE_WHEELS_MMSEG1=str(good)),
                 dict(SAR_DEVICE_WHEELS=str(good),
                      SAR_DEVICE_WHEELS_MMSEG1=str(tmp_path / 'none'))):
        proc = run(['bash', 'tools/gpu_check.sh', str(tmp_path / 'out')],
                   **sets)
        assert proc.returncode == 2
        assert f'no wheels in {tmp_path / "none"}' in proc.stderr
        assert 'run \'bash tools/build_device_wheels.sh\'' in proc.stderr
    wheels = tmp_path / 'wheels'
    wheels.mkdir()
    (wheels / 'a.whl').write_bytes(b'not the wheel that was listed')
    (wheels / 'SHA256SUMS').write_text('0' * 64 + '  a.whl\n')
    for sets in (dict(SAR_DEVICE_WHEELS=str(wheels),
                      SAR_DEVICE_WHEELS_MMSEG1=str(good)),
                 dict(SAR_DEVICE_WHEELS=str(good),
                      SAR_DEVICE_WHEELS_MMSEG1=str(wheels))):
        proc = run(['bash', 'tools/gpu_check.sh', str(tmp_path / 'out')],
                   PYTHON=PY, **sets)
        assert proc.returncode != 0
        assert 'FAILED' in proc.stderr + proc.stdout  # sha256sum's verdict
        assert not (tmp_path / 'out').exists()
    proc = run(['bash', 'tools/gpu_check.sh', '--stacks', 'mmseg2x',
                str(tmp_path / 'out')])
    assert proc.returncode == 2 and 'no stack named mmseg2x' in proc.stderr
    proc = run(['bash', 'tools/build_device_wheels.sh'],
               PYTHON312='/bin/false')
    assert proc.returncode == 2 and 'needs a Python 3.12' in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU rehearsal')
def test_cpu_rehearsal_passes_every_step(tmp_path):
    out = tmp_path / 'out'
    proc = run([PY, 'tools/gpu_check.py', str(out), '--cpu'])
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-6000:]
    with open(out / 'gpu_check.json') as f:
        report = json.load(f)
    steps = report['steps']
    assert list(steps) == [
        'env', 'data', 'train_sar_fp32', 'train_sar_fp16', 'test', 'dist',
        'overhead', 'train_baseline_fp32', 'train_baseline_fp16']
    assert all(s['ok'] for s in steps.values()), text[-6000:]
    assert report['env']['mmseg'] == '0.30.0'
    sar = steps['train_sar_fp32']['results']
    assert 'decode.loss_sar_pull' in sar['sar_keys']
    assert steps['train_sar_fp16']['checks'] == dict(refused_on_cpu=True)
    assert 0 <= steps['test']['results']['mIoU'] <= 1
    dist = steps['dist']
    assert dist['checks']['sar_state_bit_identical']
    assert dist['checks']['pull_ran_on_both_ranks']
    assert '0.semantic_anchors' in dist['results']['compared']
    assert dist['results']['rank_seeds'][0] != dist['results']['rank_seeds'][1]
    ratios = steps['overhead']['results']['ratios']
    assert set(ratios) == {'sar_gate_closed', 'sar_pull_active'}
    assert sorted(os.listdir(out)) == ['gpu_check.json', 'gpu_check.txt',
                                       'logs.tar.gz', 'overhead.json']


def test_a_terminated_check_stops_its_step_and_still_reports(tmp_path):
    import signal
    import time
    out, work = tmp_path / 'out', tmp_path / 'work'
    proc = subprocess.Popen(
        [PY, 'tools/gpu_check.py', str(out), '--cpu', '--work-dir',
         str(work), '--only', 'train_sar_fp32'], cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=dict(os.environ, OMP_NUM_THREADS='1'))
    log = work / 'logs' / 'train_sar_fp32.log'
    deadline = time.monotonic() + 120
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert log.exists(), 'the training step never started'
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    report = json.loads((out / 'gpu_check.json').read_text())
    assert list(report['steps']) == ['env', 'data']
    assert report['interrupted'] and not report['passed']
    assert 'FAILED' in (out / 'gpu_check.txt').read_text()
    assert (out / 'logs.tar.gz').exists()
    # The step's own process group (tools/train.py) is gone too.
    left = subprocess.run(['pgrep', '-f', str(work)], capture_output=True,
                          text=True).stdout.split()
    assert left == []


def test_a_terminated_stack_run_starts_no_later_check(tmp_path):
    import signal
    import time
    out, work = tmp_path / 'out', tmp_path / 'work'
    proc = subprocess.Popen(
        [PY, 'tools/gpu_check.py', str(out), '--cpu', '--work-dir',
         str(work), '--only', 'train_sar_fp32', '--stack', 'mmseg0x', PY,
         '--stack', 'mmseg1x', PY], cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS='1'))
    log = work / 'mmseg0x' / 'logs' / 'train_sar_fp32.log'
    deadline = time.monotonic() + 120
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert log.exists(), 'the training step never started'
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    report = json.loads((out / 'mmseg0x' / 'gpu_check.json').read_text())
    assert report['interrupted'] and not report['passed']
    assert not (out / 'mmseg1x').exists()


def test_a_stack_must_be_the_generation_its_interpreter_has(tmp_path):
    proc = run([PY, 'tools/gpu_check.py', str(tmp_path / 'out'), '--cpu',
                '--expect-stack', 'mmseg1x'])
    assert proc.returncode == 1
    assert '--stack mmseg1x runs an interpreter with mmseg 0.x' in \
        proc.stderr


def test_the_wheel_set_replaces_only_what_it_wrote(tmp_path):
    # DEVICE_OUT may name a folder of the user's: build_device_wheels.sh
    # once ran rm -rf on it.
    new_set, out = tmp_path / 'set', tmp_path / 'mine'
    new_set.mkdir()
    out.mkdir()
    (new_set / 'a-2.0-py3-none-any.whl').write_bytes(b'new a')
    (out / 'a-1.0-py3-none-any.whl').write_bytes(b'old a')
    (out / 'gone-1.0-py3-none-any.whl').write_bytes(b'old, listed')
    (out / 'SHA256SUMS').write_text(
        'x  a-1.0-py3-none-any.whl\nx  gone-1.0-py3-none-any.whl\n'
        'x  ../outside.txt\n')
    (out / 'notes.txt').write_text('precious')
    (out / 'other-1.0-py3-none-any.whl').write_bytes(b'not listed')
    (tmp_path / 'outside.txt').write_text('beside the folder')
    subprocess.run(['bash', '-c', f'cd {new_set} && sha256sum *.whl > '
                    'SHA256SUMS'], check=True)
    script = osp.join(ROOT, 'tools', '_device_set.sh')
    proc = subprocess.run(
        ['bash', '-c', f'set -euo pipefail; source {script}; '
         f'place_device_set {new_set} {out} /path/of/twin'],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out)) == [
        'SHA256SUMS', 'a-2.0-py3-none-any.whl', 'notes.txt',
        'other-1.0-py3-none-any.whl', 'twin']
    assert (out / 'notes.txt').read_text() == 'precious'
    assert (tmp_path / 'outside.txt').read_text() == 'beside the folder'
    assert (out / 'twin').read_text() == '/path/of/twin\n'
    assert (out / 'SHA256SUMS').read_text() == \
        (new_set / 'SHA256SUMS').read_text()
