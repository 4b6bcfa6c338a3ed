"""tools/: train, test, distributed train/test on CPU (gloo), resume, export.

Everything runs the scripts as a user does, in subprocesses, on small
generated data.
"""
import glob
import json
import os
import os.path as osp
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmcv.utils import Config
from mmseg.models import build_segmentor

from conftest import DEMO_BASELINE, DEMO_SAR, ROOT, tiny_batch

PY = sys.executable
PLUGINS = osp.join(ROOT, 'tests', 'plugins')


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return str(s.getsockname()[1])


def run(args, **env):
    # tests/plugins for test-only hooks; this checkout before any installed
    # sar (an editable install of another clone would answer the tools).
    path = os.pathsep.join(p for p in (PLUGINS, ROOT,
                                       os.environ.get('PYTHONPATH')) if p)
    full_env = dict(os.environ, PYTHONPATH=path, PYTHON=PY,
                    OMP_NUM_THREADS='1', **env)
    proc = subprocess.run(args, cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


def write_config(path, base, data_root, iters, samples=2, flip=True,
                 probe=False):
    """A test config over ``base``: tiny data, short schedule."""
    flip_line = '' if flip else '''
    train=dict(dataset=dict(pipeline=[
        dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
        dict(type='RandomFlip', prob=0.0),
        dict(type='Normalize', mean=[123.675, 116.28, 103.53],
             std=[58.395, 57.12, 57.375], to_rgb=True),
        dict(type='DefaultFormatBundle'),
        dict(type='Collect', keys=['img', 'gt_semantic_seg'])],
        data_root=r'{root}')),'''.format(root=data_root)
    train_line = '' if not flip else \
        f"\n    train=dict(dataset=dict(data_root=r'{data_root}')),"
    text = f'''_base_ = r'{base}'
data = dict(
    samples_per_gpu={samples},{flip_line}{train_line}
    val=dict(data_root=r'{data_root}'),
    test=dict(data_root=r'{data_root}'))
runner = dict(max_iters={iters})
checkpoint_config = dict(interval={iters})
evaluation = dict(interval={iters})
log_config = dict(interval=1, hooks=[dict(type='TextLoggerHook',
                                          by_epoch=False)])
'''
    if probe:
        text += '''custom_imports = dict(imports=['sar', 'sar_rank_probe'],
                      allow_failed_imports=False)
custom_hooks = [dict(type='SARRankProbeHook')]
'''
    path.write_text(text)
    return str(path)


def json_log(work_dir):
    (log, ) = glob.glob(osp.join(work_dir, '*.log.json'))
    with open(log) as f:
        return [json.loads(line) for line in f if '"mode": "train"' in line]


@pytest.fixture(scope='module')
def trained_sar(tmp_path_factory, shapes_root):
    """A SAR model trained 4 iterations by tools/train.py, with the rank
    probe: (config, work dir, checkpoint). The tests below only read it."""
    tmp = tmp_path_factory.mktemp('trained_sar')
    cfg = write_config(tmp / 'sar.py', DEMO_SAR, shapes_root, iters=4,
                       probe=True)
    work = str(tmp / 'work')
    run([PY, 'tools/train.py', cfg, '--work-dir', work, '--seed', '0'])
    return cfg, work, osp.join(work, 'iter_4.pth')


def test_train_then_test_prints_miou(tmp_path, trained_sar):
    cfg, _, ckpt = trained_sar
    assert osp.isfile(ckpt)
    work = str(tmp_path / 'eval')
    out = run([PY, 'tools/test.py', cfg, ckpt, '--eval', 'mIoU',
               '--work-dir', work, '--out', str(tmp_path / 'res.pkl')])
    assert 'mIoU' in out and '| background |' in out
    (metric_file, ) = glob.glob(osp.join(work, 'eval_*.json'))
    with open(metric_file) as f:
        metric = json.load(f)['metric']
    assert 0.0 <= metric['mIoU'] <= 1.0
    assert osp.isfile(tmp_path / 'res.pkl')


def test_train_log_has_stable_sar_keys(trained_sar):
    _, work, _ = trained_sar
    probe = torch.load(osp.join(work, 'rank0.pth'))
    assert len(probe['keys']) == 4
    assert all(k == probe['keys'][0] for k in probe['keys'])
    assert 'decode.loss_sar_pull' in probe['keys'][0]
    assert 'decode.sar.gate_open' in probe['keys'][0]


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU/gloo path')
def test_dist_train_two_cpu_processes(tmp_path, shapes_root):
    cfg = write_config(tmp_path / 'sar.py', DEMO_SAR, shapes_root, iters=8,
                       probe=True)
    work = str(tmp_path / 'work')
    # --diff_seed: each rank draws its own pre-defined anchors at build
    # time; they must still agree once training starts.
    out = run(['bash', 'tools/dist_train.sh', cfg, '2', '--work-dir', work,
               '--seed', '0', '--deterministic', '--diff_seed'],
              PORT=free_port())
    assert 'Distributed training: True' in out
    r0, r1 = (torch.load(osp.join(work, f'rank{r}.pth')) for r in range(2))
    assert (r0['rank'], r1['rank'], r0['world']) == (0, 1, 2)
    assert (r0['seed'], r1['seed']) == (0, 1)
    assert r0['keys'] == r1['keys'] and len(r0['keys']) == 8
    assert set(r0['sar_state']) == set(r1['sar_state'])
    for key, value in r0['sar_state'].items():
        if 'projector.norm' in key:
            continue  # BN statistics: per rank (broadcast_buffers=False)
        assert torch.equal(value, r1['sar_state'][key]), key
    assert bool(r0['sar_state']['0.initialised']), 'gate never opened'
    assert r0['sar_state']['0.semantic_anchors'].abs().sum() > 0
    assert osp.isfile(osp.join(work, 'iter_8.pth'))


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU/gloo path')
def test_dist_test_on_two_nodes_matches_single_process(tmp_path,
                                                       trained_sar):
    cfg, _, ckpt = trained_sar
    single, dist = str(tmp_path / 'single'), str(tmp_path / 'dist')
    run([PY, 'tools/test.py', cfg, ckpt, '--eval', 'mIoU', '--work-dir',
         single])
    # Two "nodes" of one process each, as NNODES=2 runs them: each node has
    # its own temp folder, as separate machines do; only the work dir is
    # shared. Rank 0 must still read rank 1's results.
    port = free_port()
    nodes = []
    for node in range(2):
        node_tmp = tmp_path / f'node{node}_tmp'
        node_tmp.mkdir()
        nodes.append(subprocess.Popen(
            ['bash', 'tools/dist_test.sh', cfg, ckpt, '1', '--eval', 'mIoU',
             '--work-dir', dist], cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
            env=dict(os.environ, PYTHONPATH=PLUGINS, PYTHON=PY,
                     OMP_NUM_THREADS='1', NNODES='2', NODE_RANK=str(node),
                     PORT=port, TMPDIR=str(node_tmp))))
    for proc in nodes:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-5000:]
    # The results' exchange folder is gone once rank 0 collected them.
    assert [f for f in os.listdir(dist) if f.startswith('.dist')] == []
    metrics = []
    for d in (single, dist):
        (f, ) = glob.glob(osp.join(d, 'eval_*.json'))
        with open(f) as fh:
            metrics.append(json.load(fh)['metric'])
    assert metrics[0] == metrics[1]


def test_resume_equals_straight_run(tmp_path):
    from sar.data import make_shapes_dataset
    # One training image, no flip: every iteration sees the same batch, so
    # the data order cannot differ between the two runs.
    root = make_shapes_dataset(str(tmp_path / 'one'), num_train=1,
                               num_val=1, size=64)
    n = 3
    straight_cfg = write_config(tmp_path / 'straight.py', DEMO_SAR, root,
                                iters=2 * n, samples=1, flip=False)
    straight = str(tmp_path / 'straight')
    run([PY, 'tools/train.py', straight_cfg, '--work-dir', straight,
         '--seed', '0', '--deterministic', '--cfg-options',
         f'checkpoint_config.interval={n}'])
    resumed = str(tmp_path / 'resumed')
    run([PY, 'tools/train.py', straight_cfg, '--work-dir', resumed,
         '--seed', '0', '--deterministic', '--resume-from',
         osp.join(straight, f'iter_{n}.pth'), '--cfg-options',
         f'checkpoint_config.interval={n}'])
    a = torch.load(osp.join(straight, f'iter_{2 * n}.pth'),
                   weights_only=False)
    b = torch.load(osp.join(resumed, f'iter_{2 * n}.pth'), weights_only=False)
    assert a['meta']['iters_done'] == b['meta']['iters_done'] == 2 * n
    assert list(a['state_dict']) == list(b['state_dict'])
    for key, value in a['state_dict'].items():
        assert torch.equal(value, b['state_dict'][key]), key
    for i, s in a['optimizer']['state'].items():
        assert torch.equal(s['momentum_buffer'],
                           b['optimizer']['state'][i]['momentum_buffer'])
    sar = 'decode_head.sar_loss.'
    assert bool(a['state_dict'][sar + 'initialised'])
    # Losses of iterations n+1..2n, from the two json logs.
    tail_a = [e for e in json_log(straight) if e['iter'] > n]
    tail_b = json_log(resumed)
    assert [e['iter'] for e in tail_a] == [e['iter'] for e in tail_b]
    for ea, eb in zip(tail_a, tail_b):
        for k, v in ea.items():
            if 'loss' in k or k.startswith('decode.sar'):
                assert v == eb[k], (ea['iter'], k)

    # Killed with SIGKILL, after iteration n+2 or while writing the
    # checkpoint of iteration 2n; --auto-resume then finishes the run from
    # the last complete checkpoint, and ends where the straight run ended.
    for name, kill in (('killed', f'at_iter={n + 2}'),
                       ('killed_saving', f'at_iter={2 * n}, '
                        'during_save=True')):
        cfg = tmp_path / f'{name}.py'
        cfg.write_text(f"""_base_ = r'{straight_cfg}'
custom_imports = dict(imports=['sar', 'sar_fault'],
                      allow_failed_imports=False)
custom_hooks = [dict(type='SARKillHook', {kill}, priority='LOWEST')]
""")
        work = str(tmp_path / name)
        args = [PY, 'tools/train.py', str(cfg), '--work-dir', work, '--seed',
                '0', '--deterministic', '--cfg-options',
                f'checkpoint_config.interval={n}']
        proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=PLUGINS,
                                       OMP_NUM_THREADS='1'), timeout=600)
        assert proc.returncode == -9, proc.stderr[-3000:]
        # A kill while saving leaves no partial file under a final name.
        assert not osp.exists(osp.join(work, f'iter_{2 * n}.pth'))
        assert os.readlink(osp.join(work, 'latest.pth')) == f'iter_{n}.pth'
        out = run(args + ['--auto-resume'])
        assert f'resumed after {n} iterations done' in out
        c = torch.load(osp.join(work, f'iter_{2 * n}.pth'),
                       weights_only=False)
        for key, value in a['state_dict'].items():
            assert torch.equal(value, c['state_dict'][key]), (name, key)


def test_export_plain_gives_identical_logits(tmp_path, shapes_root,
                                             trained_sar):
    cfg, _, sar_ckpt = trained_sar
    plain_ckpt = str(tmp_path / 'plain.pth')
    out = run([PY, 'tools/export_plain.py', sar_ckpt, plain_ckpt])
    assert 'SAR entries dropped' in out
    refused = subprocess.run([PY, 'tools/export_plain.py', sar_ckpt,
                              plain_ckpt], cwd=ROOT, capture_output=True,
                             text=True)
    assert refused.returncode != 0 and '--force' in refused.stderr
    # The config the checkpoint carries (mmcv: meta['config']) is the
    # twin's: building from it needs no sar.
    assert "meta['config']: the config, SARHead unwrapped" in out
    text = torch.load(plain_ckpt, weights_only=False)['meta']['config']
    (tmp_path / 'exported.py').write_text(text)
    exported = Config.fromfile(str(tmp_path / 'exported.py'),
                               import_custom_modules=False)
    assert exported.custom_imports['imports'] == ['sar_rank_probe']
    (tmp_path / 'twin.py').write_text(
        Config.fromfile(DEMO_BASELINE).pretty_text)
    assert exported.model == Config.fromfile(str(tmp_path / 'twin.py')).model

    from mmcv.runner import load_checkpoint
    from mmcv.cnn.utils import revert_sync_batchnorm
    models = []
    for config, ckpt in ((DEMO_SAR, sar_ckpt), (DEMO_BASELINE, plain_ckpt)):
        model = revert_sync_batchnorm(build_segmentor(
            Config.fromfile(config).model))
        load_checkpoint(model, ckpt, map_location='cpu', strict=True)
        models.append(model.eval())
    img, metas, _ = tiny_batch(B=1, size=48)
    with torch.no_grad():
        logits = [m.encode_decode(img, metas) for m in models]
    assert torch.equal(logits[0], logits[1])
    # Stock mmseg tooling on the exported checkpoint: same metric as SAR's.
    base_cfg = write_config(tmp_path / 'plain.py', DEMO_BASELINE,
                            shapes_root, iters=2)
    metrics = []
    # c: the baseline config given the SAR checkpoint itself (mapped on load)
    for config, ckpt, name in ((cfg, sar_ckpt, 'a'),
                               (base_cfg, plain_ckpt, 'b'),
                               (base_cfg, sar_ckpt, 'c')):
        run([PY, 'tools/test.py', config, ckpt, '--eval', 'mIoU',
             '--work-dir', str(tmp_path / name)])
        (f, ) = glob.glob(str(tmp_path / name / 'eval_*.json'))
        with open(f) as fh:
            metrics.append(json.load(fh)['metric'])
    assert metrics[0] == metrics[1] == metrics[2]


# The baseline twins, as a user compares them with SAR: this project's
# tools/train.py, tools/test.py on its checkpoint, and --resume-from. Each
# keeps its runtime and schedule; the tiny HRNet FCN and the shapes data
# stand in for its model and data.
TWINS = sorted(osp.relpath(p, ROOT) for p in glob.glob(
    osp.join(ROOT, 'configs', 'baseline', '*.py')) + glob.glob(
        osp.join(ROOT, 'configs', 'demo', 'fcn_*.py')))
# What a twin's short run takes from the twin (the rest is the test's).
RUN_SETTINGS = ('optimizer', 'optimizer_config', 'lr_config', 'runner',
                'checkpoint_config', 'evaluation', 'log_config',
                'dist_params', 'log_level', 'load_from', 'resume_from',
                'workflow', 'cudnn_benchmark', 'custom_imports',
                'custom_hooks', 'fp16', 'seed')


def write_twin_config(path, twin, data_root, iters):
    model = Config.fromfile(osp.join(
        ROOT, 'configs', '_base_', 'models', 'fcn_hrtiny.py')).model.to_dict()
    data = Config.fromfile(osp.join(
        ROOT, 'configs', '_base_', 'datasets', 'shapes.py')).data.to_dict()
    for split in (data['train']['dataset'], data['val'], data['test']):
        split['data_root'] = data_root
    data['train']['times'] = 1
    data.update(samples_per_gpu=2, _delete_=True)
    path.write_text(f"""_base_ = r'{osp.join(ROOT, twin)}'
model = {dict(model, _delete_=True)!r}
data = {data!r}
runner = dict(type='IterBasedRunner', max_iters={iters}, _delete_=True)
checkpoint_config = dict(by_epoch=False, interval={iters})
evaluation = dict(interval={iters}, metric='mIoU', pre_eval=True)
log_config = dict(interval=1, hooks=[dict(type='TextLoggerHook',
                                          by_epoch=False)])
""")
    return str(path)


def twin_runs():
    """The twins grouped by the settings their short runs take from them:
    one run per group tries every way of training that the twins have."""
    import tempfile
    groups = {}
    with tempfile.TemporaryDirectory() as tmp:
        for twin in TWINS:
            cfg = Config.fromfile(write_twin_config(
                Path(tmp, 'twin.py'), twin, 'data', iters=2))
            key = repr({k: cfg.get(k) for k in RUN_SETTINGS})
            groups.setdefault(key, []).append(twin)
    return list(groups.values())


TWIN_RUNS = twin_runs()


def test_twin_runs_cover_every_twin():
    assert sorted(t for group in TWIN_RUNS for t in group) == TWINS
    assert len(TWINS) == 12 and len(TWIN_RUNS) < len(TWINS)


@pytest.mark.parametrize('twins', TWIN_RUNS,
                         ids=[osp.basename(g[0]) for g in TWIN_RUNS])
def test_twin_trains_tests_and_resumes(tmp_path, shapes_root, twins):
    cfg = write_twin_config(tmp_path / 'twin.py', twins[0], shapes_root,
                            iters=2)
    work = str(tmp_path / 'work')
    run([PY, 'tools/train.py', cfg, '--work-dir', work, '--seed', '0'])
    eval_dir = str(tmp_path / 'eval')
    out = run([PY, 'tools/test.py', cfg, osp.join(work, 'iter_2.pth'),
               '--eval', 'mIoU', '--work-dir', eval_dir])
    assert '| background |' in out
    assert glob.glob(osp.join(eval_dir, 'eval_*.json'))
    run([PY, 'tools/train.py', cfg, '--work-dir', work, '--seed', '0',
         '--resume-from', osp.join(work, 'iter_2.pth'), '--cfg-options',
         'runner.max_iters=3'])
    ckpt = torch.load(osp.join(work, 'iter_3.pth'), weights_only=False)
    assert ckpt['meta']['iters_done'] == 3


def test_slurm_scripts_pass_arguments_through(tmp_path):
    fake = tmp_path / 'srun'
    fake.write_text('#!/usr/bin/env bash\necho "srun $*"\n')
    fake.chmod(0o755)
    env = dict(PATH=f'{tmp_path}:{os.environ["PATH"]}')
    out = run(['bash', 'tools/slurm_train.sh', 'part', 'job', 'cfg.py',
               '--seed', '1'], **env)
    assert '-p part --job-name=job' in out
    assert 'tools/train.py cfg.py --seed 1 --launcher slurm' in out
    out = run(['bash', 'tools/slurm_test.sh', 'part', 'job', 'cfg.py',
               'ckpt.pth', '--eval', 'mIoU'], **env)
    assert 'tools/test.py cfg.py ckpt.pth --eval mIoU --launcher slurm' in out


def test_make_clean_keeps_the_users_runs(tmp_path):
    # tools/train.py puts every run under work_dirs/<config>; make clean
    # once removed all of work_dirs.
    made = ['work_dirs/demo/sar/latest.pth',
            'work_dirs/benchmark_accuracy/seed0/log.json',
            'data/digitscenes-lt/meta.json', 'data/shapes/img_dir/a.png']
    kept = ['work_dirs/my_config/iter_80000.pth', 'data/cityscapes/x.png']
    for name in made + kept:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    proc = subprocess.run(['make', '-f', osp.join(ROOT, 'Makefile'), 'clean'],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert [n for n in made if (tmp_path / n).exists()] == []
    assert all((tmp_path / n).read_text() == n for n in kept)
