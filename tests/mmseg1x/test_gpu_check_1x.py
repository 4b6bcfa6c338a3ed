"""The GPU check's mmseg 1.x steps (sar.mmseg1x.gpu_check): their CPU
rehearsal in this environment (the paper's HRNetV2-W48 model at 64 px,
2 iterations), the parts that decide pass or fail on their own, both
generations' checks in one budget (tools/gpu_check.py --stack), and the
rehearsal of the whole command in the GPU machine's twin
(tools/gpu_check.sh --cpu) where tools/build_device_wheels.sh has built it.
"""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config

from helpers1x import ROOT

from sar.mmseg1x import gpu_check

PY = sys.executable
PY0 = osp.join(ROOT, '.venv', 'bin', 'python')  # make install's, mmseg 0.30
DEVICE = osp.join(ROOT, '.device')
STEPS = ['env', 'data', 'train_sar_fp32', 'train_sar_fp16', 'resume_sar',
         'train_sar_bf16', 'test', 'dist', 'overhead', 'train_baseline_fp32']


def run(args, **env):
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS='1', **env),
                          timeout=1500)


def test_derived_config_keeps_the_model_and_changes_sizes(tmp_path):
    sizes = dict(gpu_check.CPU, size=48)
    dst = gpu_check.derive_config(
        gpu_check.PAPER_SAR, str(tmp_path / 'c.py'), '/data', sizes,
        iters=7, batch=3, amp='float16', probe=True, gloo=True,
        load_from='start.pth', init_scale=8.0)
    cfg = Config.fromfile(dst, import_custom_modules=False)
    paper = Config.fromfile(osp.join(ROOT, gpu_check.PAPER_SAR))
    assert cfg.model.pretrained is None and paper.model.pretrained
    assert cfg.model.decode_head.sar_loss.pull_mode == 'after_init'
    assert cfg.load_from == 'start.pth'
    cfg.model.decode_head.sar_loss.pull_mode = 'gate'
    paper.model.pretrained = None
    paper.model.data_preprocessor.size = (48, 48)
    assert cfg.model == paper.model  # SAR settings, head, SyncBN: as is
    assert cfg.optim_wrapper == dict(
        type='AmpOptimWrapper', dtype='float16',
        optimizer=paper.optim_wrapper.optimizer, clip_grad=None,
        loss_scale=dict(init_scale=8.0))
    assert cfg.randomness.seed == paper.randomness.seed
    assert cfg.randomness.diff_rank_seed is True
    assert cfg.env_cfg.dist_cfg == dict(backend='gloo')
    train = cfg.train_dataloader
    assert (train.batch_size, train.num_workers) == (3, sizes['workers'])
    assert train.dataset.data_root == cfg.test_dataloader.dataset.data_root \
        == '/data'
    steps = {t['type']: t for t in train.dataset.pipeline}
    assert steps['RandomCrop']['crop_size'] == (48, 48)
    assert steps['RandomResize']['scale'] == (192, 48)
    test_steps = {t['type']: t for t in cfg.test_dataloader.dataset.pipeline}
    assert test_steps['Resize']['scale'] == (192, 48)
    assert cfg.train_cfg.max_iters == cfg.param_scheduler[0].end == 7
    assert cfg.default_hooks.checkpoint.interval == 7
    assert cfg.val_cfg is None and cfg.val_dataloader is None
    assert cfg.custom_hooks == [dict(type='SARRankProbeHook')]
    assert cfg.custom_imports.imports == ['sar', gpu_check.PROBE]
    bf16 = Config.fromfile(gpu_check.derive_config(
        gpu_check.PAPER_BASELINE, str(tmp_path / 'b.py'), '/data', sizes,
        iters=2, batch=2, amp='bfloat16'))
    assert bf16.optim_wrapper.dtype == 'bfloat16'
    assert 'loss_scale' not in bf16.optim_wrapper
    assert bf16.model.decode_head.type == 'FCNHead'
    fp16 = Config.fromfile(gpu_check.derive_config(
        gpu_check.PAPER_SAR, str(tmp_path / 'd.py'), '/data', sizes,
        iters=2, batch=2, amp='float16'))
    assert fp16.optim_wrapper.loss_scale == 'dynamic'


def test_loss_scale_is_read_from_the_optimizer_entry(tmp_path):
    fp16 = tmp_path / 'fp16.pth'
    torch.save(dict(optimizer=dict(state={}, loss_scaler=dict(
        scale=32768.0, growth_factor=2.0)), state_dict={}), fp16)
    assert gpu_check.loss_scale(str(fp16)) == 32768.0
    fp32 = tmp_path / 'fp32.pth'
    torch.save(dict(optimizer=dict(state={}), state_dict={}), fp32)
    assert gpu_check.loss_scale(str(fp32)) is None
    assert gpu_check.loss_scale(str(tmp_path / 'absent.pth')) is None


def test_a_resume_passes_only_from_its_checkpoint_and_loss_scale():
    def probe(at, steps, scale=None):
        return dict(iter_at_start=at, keys=[['loss']] * steps,
                    loss_scale_at_start=scale)

    judge = gpu_check.judge_resume
    assert all(judge(probe(2, 1), 2, 1)[0].values())
    # Trained from scratch, or stopped early: not a resume.
    assert not judge(probe(0, 3), 2, 1)[0]['continued_from_the_checkpoint']
    assert not judge(probe(2, 0), 2, 1)[0]['continued_from_the_checkpoint']
    assert judge(None, 2, 1)[0] == dict(probe_written=False)
    init = gpu_check.RESUME_INIT_SCALE
    checks, results = judge(probe(2, 1, 1024.0), 2, 1, fp16=True,
                            saved_scale=1024.0)
    assert all(checks.values()) and results['config_init_scale'] == init
    for at_start, saved in ((init, 1024.0), (1024.0, None), (init, init),
                            (65536.0, 1024.0)):
        assert not judge(probe(2, 1, at_start), 2, 1, fp16=True,
                         saved_scale=saved)[0]['loss_scale_restored']


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU rehearsal')
def test_cpu_rehearsal_passes_every_step(tmp_path):
    out = tmp_path / 'out'
    proc = run([PY, 'tools/gpu_check.py', str(out), '--cpu'])
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-6000:]
    report = json.loads((out / 'gpu_check.json').read_text())
    steps = report['steps']
    assert list(steps) == STEPS
    assert all(s['ok'] for s in steps.values()), text[-6000:]
    assert report['env']['mmseg'].startswith('1.')
    assert report['env']['mmengine']
    assert 'decode.loss_sar_pull' in steps['train_sar_fp32']['results'][
        'sar_keys']
    for name in ('train_sar_fp16', 'train_sar_bf16'):
        assert steps[name]['checks'] == dict(refused_on_cpu=True)
    assert steps['resume_sar']['results'] == dict(iter_at_start=2,
                                                  iterations_run=1)
    assert 0 <= steps['test']['results']['mIoU'] <= 100
    dist = steps['dist']
    assert dist['checks']['sar_state_bit_identical']
    assert dist['checks']['pull_ran_on_both_ranks']
    assert '0.semantic_anchors' in dist['results']['compared']
    assert dist['results']['wrapper'] == 'MMDistributedDataParallel'
    assert dist['results']['rank_seeds'][0] != dist['results']['rank_seeds'][1]
    ratios = steps['overhead']['results']['ratios']
    assert set(ratios) == {'sar_gate_closed', 'sar_pull_active'}
    assert 'PASS resume_sar' in (out / 'gpu_check.txt').read_text()


@pytest.mark.skipif(not osp.exists(PY0), reason='needs make install (.venv)')
def test_both_generations_share_one_budget(tmp_path):
    # Each stack's check in turn, each with its interpreter, in one
    # budget: the second gets what the first leaves.
    out = tmp_path / 'out'
    proc = run([PY, 'tools/gpu_check.py', str(out), '--cpu', '--only', 'env',
                '--stack', 'mmseg0x', PY0, '--stack', 'mmseg1x', PY])
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-6000:]
    assert 'mmseg0x passed, mmseg1x passed' in proc.stdout
    reports = {name: json.loads((out / name / 'gpu_check.json').read_text())
               for name in ('mmseg0x', 'mmseg1x')}
    assert reports['mmseg0x']['env']['mmseg'] == '0.30.0'
    assert reports['mmseg1x']['env']['mmseg'].startswith('1.')
    for report in reports.values():
        assert list(report['steps']) == ['env', 'data']
    # One deadline: the second check had what the first left of it.
    zero, one = reports['mmseg0x'], reports['mmseg1x']
    assert zero['deadline'] == one['deadline'] is not None
    assert one['budget_s'] <= zero['budget_s'] - zero['elapsed_s'] + 1


def twin_built():
    sets = [osp.join(DEVICE, name, 'SHA256SUMS')
            for name in ('wheels', 'wheels-mmseg1')]
    if not all(osp.isfile(s) for s in sets):
        return False
    with open(osp.join(DEVICE, 'wheels', 'twin')) as f:
        return osp.isfile(osp.join(f.read().strip(), 'bin', 'python'))


@pytest.mark.skipif(not twin_built(), reason='the GPU machine\'s twin and '
                    'wheel sets: bash tools/build_device_wheels.sh')
def test_the_whole_command_in_the_gpu_machines_twin(tmp_path):
    # What the GPU machine runs, on this CPU: both sets installed from
    # their wheels alone into the twin (Python 3.12, the machine's torch),
    # then both generations' steps within one budget.
    out = tmp_path / 'out'
    proc = run(['bash', 'tools/gpu_check.sh', '--cpu', str(out)])
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-6000:]
    assert 'mmseg0x passed, mmseg1x passed' in proc.stdout
    one = json.loads((out / 'mmseg1x' / 'gpu_check.json').read_text())
    assert list(one['steps']) == STEPS and one['passed']
    assert one['env']['python'].startswith('3.12.')
    assert one['env']['mmcv'] == '2.1.0'
    zero = json.loads((out / 'mmseg0x' / 'gpu_check.json').read_text())
    assert zero['passed'] and zero['env']['mmcv'] == '1.7.2'
