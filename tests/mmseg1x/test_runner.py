"""mmseg 1.x's own tools with SAR: train, test, two CPU ranks, resume,
export. Every run is mmseg's shipped ``tools/train.py`` / ``tools/test.py``
(``mmseg/.mim/tools``) in a subprocess, as a user runs them, on the shapes
data, except the two ranks: the project's ``tools/dist_train.sh``, which
runs mmseg's train.py after ``import sar``. Configs are written per test
(helpers1x.write_config)."""
import glob
import json
import os
import os.path as osp

import pytest
import torch

from helpers1x import (PY, ROOT, TEST, TRAIN, free_port, image_batch, run,
                       write_config)

PROBE = dict(imports=['sar_rank_probe_1x'],
             hooks=[dict(type='SARRankProbeHook')])


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A SAR model trained 4 iterations by mmseg's tools/train.py, with the
    rank probe: (config, work dir, checkpoint, data root). The tests below
    only read it."""
    from sar.data import make_shapes_dataset
    tmp = tmp_path_factory.mktemp('trained_sar')
    root = make_shapes_dataset(str(tmp / 'shapes'), num_train=8, num_val=4,
                               size=32)
    cfg = write_config(tmp / 'sar.py', root, iters=4, **PROBE)
    work = str(tmp / 'work')
    run([PY, TRAIN, cfg, '--work-dir', work])
    return cfg, work, osp.join(work, 'iter_4.pth'), root


def test_train_log_has_stable_keys_and_only_losses_in_the_total(trained):
    _, work, ckpt, _ = trained
    probe = torch.load(osp.join(work, 'rank0.pth'), weights_only=False)
    assert len(probe['keys']) == 4
    assert all(k == probe['keys'][0] for k in probe['keys'])
    for key in ('decode.loss_sar_pull', 'decode.loss_sar_anchor_ce',
                'decode.sar.gate_open', 'decode.sar.anchor_acc'):
        assert key in probe['keys'][0], key
    for losses in probe['losses']:  # mmengine's parse_losses
        parts = sum(v for k, v in losses.items() if k != 'loss')
        assert losses['loss'] == pytest.approx(parts, rel=1e-5)
    (log, ) = glob.glob(osp.join(work, '*', '*.log'))
    with open(log) as f:
        text = f.read()
    assert 'decode.sar.anchor_acc:' in text and 'decode.sar.gate_open:' in \
        text
    assert osp.isfile(ckpt)


def test_mmsegs_test_tool_on_a_sar_checkpoint(tmp_path, trained):
    # tools/test.py loads the runner's own checkpoint: torch >= 2.6 needs
    # compat shim 3 for its message hub.
    cfg, _, ckpt, _ = trained
    out = run([PY, TEST, cfg, ckpt, '--work-dir', str(tmp_path)])
    assert '| background |' in out
    metric = saved_metrics(tmp_path)
    assert 0 <= metric['mIoU'] <= 100


def saved_metrics(work_dir):
    """The means mmseg 1.x's test.py saved under ``work_dir``."""
    (path, ) = glob.glob(osp.join(str(work_dir), '*', '*.json'))
    with open(path) as f:
        metric = json.load(f)
    return {k: v for k, v in metric.items() if k in ('aAcc', 'mIoU', 'mAcc')}


def test_export_plain_loads_into_stock_mmseg_with_identical_results(
        tmp_path, trained):
    from mmengine.runner import load_checkpoint
    from mmseg.registry import MODELS
    from mmengine.config import Config
    cfg, _, sar_ckpt, root = trained
    plain_ckpt = str(tmp_path / 'plain.pth')
    out = run([PY, 'tools/export_plain.py', sar_ckpt, plain_ckpt])
    assert 'SAR entries dropped' in out
    source = torch.load(sar_ckpt, weights_only=False)
    exported = torch.load(plain_ckpt, weights_only=True)  # plain data only
    assert {'optimizer', 'message_hub', 'param_schedulers'} <= set(source)
    assert set(exported) == {'meta', 'state_dict'}
    for key, value in source['meta'].items():
        if key != 'cfg':  # the config: the twin's (see the next test)
            assert exported['meta'][key] == value, key
    # The baseline twin: no custom_imports, so mmseg without sar.
    base_cfg = write_config(tmp_path / 'plain.py', root, iters=4, sar=False)
    assert 'custom_imports' not in Config.fromfile(base_cfg)
    run([PY, TEST, base_cfg, plain_ckpt, '--work-dir',
         str(tmp_path / 'plain')])
    run([PY, TEST, cfg, sar_ckpt, '--work-dir', str(tmp_path / 'sar')])
    assert saved_metrics(tmp_path / 'plain') == saved_metrics(tmp_path / 'sar')
    # A twin that imports sar, as configs/mmseg1x/baseline do, given the SAR
    # checkpoint itself: the glue maps it as it loads (without, the decode
    # head stayed random, with only a missing/unexpected-key warning).
    twin_cfg = write_config(tmp_path / 'twin.py', root, iters=4, sar=False,
                            import_sar=True)
    out = run([PY, TEST, twin_cfg, sar_ckpt, '--work-dir',
               str(tmp_path / 'twin')])
    assert saved_metrics(tmp_path / 'twin') == saved_metrics(tmp_path / 'sar')
    assert 'tools/export_plain.py' in out  # the glue says what it did
    # And the logits, in this process.
    logits = []
    for config, path in ((cfg, sar_ckpt), (base_cfg, plain_ckpt)):
        model = MODELS.build(Config.fromfile(
            config, import_custom_modules=False).model)
        load_checkpoint(model, path, map_location='cpu', strict=True)
        imgs, batch = image_batch(B=1, size=32)
        with torch.no_grad():
            logits.append(model.eval().predict(imgs, batch)[0]
                          .seg_logits.data)
    assert torch.equal(logits[0], logits[1])


# mmseg's inferencer given weights only, where sar is not installed: it
# builds the model from the checkpoint's meta['cfg'].
INFER_WITHOUT_SAR = """
import sys
sys.modules['sar'] = None  # `import sar` fails, as without the plugin
import numpy as np
import torch
from mmseg.apis import MMSegInferencer
inferencer = MMSegInferencer(model=None, weights=sys.argv[1], device='cpu')
state = torch.load(sys.argv[1], weights_only=True)['state_dict']
model = inferencer.model.state_dict()
assert set(model) == set(state), set(model) ^ set(state)
assert all(torch.equal(model[k], v) for k, v in state.items())
out = inferencer(np.zeros((32, 32, 3), np.uint8), return_datasamples=True)
print(type(inferencer.model.decode_head).__name__,
      tuple(out.pred_sem_seg.shape))
"""


def test_exported_checkpoint_builds_in_mmseg_without_sar(tmp_path, trained):
    _, _, sar_ckpt, _ = trained
    plain_ckpt = str(tmp_path / 'plain.pth')
    notes = run([PY, 'tools/export_plain.py', sar_ckpt, plain_ckpt])
    out = run([PY, '-c', INFER_WITHOUT_SAR, plain_ckpt])
    assert 'FCNHead (32, 32)' in out
    assert "meta['cfg']: the config, SARHead unwrapped" in notes
    meta = torch.load(plain_ckpt, weights_only=True)['meta']
    assert 'SARHead' not in meta['cfg'] and "'sar'" not in meta['cfg']


def test_sar_diagnostics_are_logged_as_means_since_the_last_line(tmp_path):
    # mmengine logs the last iteration's value of a key that is not a loss
    # (the gate's 0.0 after it had been open 40 of 50 iterations). With 8
    # images in batches of 2 and a log interval of 11, mmengine writes a
    # line at the end of the first pass over the data (4) and at 11: the
    # second covers iterations 5-11.
    from sar.data import make_shapes_dataset
    from sar.mmseg1x.runs import train_log
    root = make_shapes_dataset(str(tmp_path / 'shapes'), num_train=8,
                               num_val=1, size=32)
    cfg = write_config(tmp_path / 'sar.py', root, iters=12, log_interval=11,
                       **PROBE)
    work = str(tmp_path / 'work')
    run([PY, TRAIN, cfg, '--work-dir', work])
    values = torch.load(osp.join(work, 'rank0.pth'),
                        weights_only=False)['diagnostics']
    entries = train_log(work)
    assert [e['iter'] for e in entries] == [4, 11]
    start = 0
    for entry in entries:
        since = values[start:entry['iter']]
        for name in ('sar.gate_open', 'sar.anchor_acc', 'sar.anchor_max_cos',
                     'sar.nonfinite'):
            mean = sum(v[f'decode.{name}'] for v in since) / len(since)
            assert entry[f'decode.{name}'] == pytest.approx(mean, abs=1e-6), \
                (entry['iter'], name)
        # a counter: its value at the line
        assert entry['decode.sar.iters_since_init'] == \
            since[-1]['decode.sar.iters_since_init']
        start = entry['iter']


def test_dist_train_two_cpu_ranks_agree(tmp_path):
    # The project's dist_train.sh on two ranks (mmseg's own train.py after
    # ``import sar``), with a config that asks for NCCL
    # and SyncBN and has nothing of SAR's but custom_imports: compat shims
    # 1 and 2 make it run on gloo. Per-rank seeds: each rank draws its own
    # A0 at build time.
    from sar.data import make_shapes_dataset
    root = make_shapes_dataset(str(tmp_path / 'shapes'), num_train=8,
                               num_val=2, size=32)
    cfg = write_config(tmp_path / 'sar.py', root, iters=8,
                       diff_rank_seed=True, **PROBE)
    work = str(tmp_path / 'work')
    # As the README runs it, with the suite's python.
    out = run(['bash', osp.join(ROOT, 'tools', 'dist_train.sh'), cfg, '2',
               '--work-dir', work], PORT=free_port(), PYTHON=PY)
    assert "using the gloo backend instead of 'nccl'" in out
    r0, r1 = (torch.load(osp.join(work, f'rank{r}.pth'), weights_only=False)
              for r in range(2))
    assert (r0['rank'], r1['rank'], r0['world']) == (0, 1, 2)
    assert r0['wrapper'] == 'MMDistributedDataParallel'
    assert r0['norms'] == ['_BatchNormXd']  # SyncBN reverted on the CPU
    # Each rank built its model, A0 included, from its own seed; DDP's
    # construction broadcasts rank 0's buffers before the first hook runs,
    # and SAR broadcasts A0 itself at its first step for wrappers that
    # do not (the 0.x suite and test_core_regularizer cover that path).
    assert r0['seed'] != r1['seed']
    assert r0['keys'] == r1['keys'] and len(r0['keys']) == 8
    assert set(r0['sar_state']) == set(r1['sar_state'])
    for key, value in r0['sar_state'].items():
        assert torch.equal(value, r1['sar_state'][key]), key
    assert torch.equal(r0['sar_state']['0.init_anchors'],
                       r0['init_anchors_at_start']['0'])  # rank 0's won
    assert bool(r0['sar_state']['0.initialised']), 'gate never opened'
    assert r0['sar_state']['0.semantic_anchors'].abs().sum() > 0
    assert osp.isfile(osp.join(work, 'iter_8.pth'))


def test_resume_after_sigkill_equals_straight_run(tmp_path):
    from sar.data import make_shapes_dataset
    # One training image (twice per batch: BN needs two values per
    # channel at the 1x1 lowest branch), no flip, no dropout in the model:
    # every iteration sees the same batch and draws nothing at random, so
    # the two runs cannot differ by data order or by mmengine re-seeding
    # the generators on resume.
    root = make_shapes_dataset(str(tmp_path / 'one'), num_train=1,
                               num_val=1, size=32)
    n = 3
    straight_cfg = write_config(tmp_path / 'straight.py', root, iters=2 * n,
                                batch=2, flip=0.0, checkpoint=n)
    straight = str(tmp_path / 'straight')
    run([PY, TRAIN, straight_cfg, '--work-dir', straight])
    killed_cfg = write_config(
        tmp_path / 'killed.py', root, iters=2 * n, batch=2, flip=0.0,
        checkpoint=n, imports=['sar_fault_1x'],
        hooks=[dict(type='SARKillHook', at_iter=n + 1, priority='LOWEST')])
    work = str(tmp_path / 'killed')
    args = [PY, TRAIN, killed_cfg, '--work-dir', work]
    run(args, expect=-9)  # SIGKILL after iteration n + 1
    assert not osp.exists(osp.join(work, f'iter_{2 * n}.pth'))
    with open(osp.join(work, 'last_checkpoint')) as f:
        assert f.read().strip().endswith(f'iter_{n}.pth')
    out = run(args + ['--resume'])
    assert f'resumed epoch: 0, iter: {n}' in out  # mmengine's own line
    a = torch.load(osp.join(straight, f'iter_{2 * n}.pth'),
                   weights_only=False)
    b = torch.load(osp.join(work, f'iter_{2 * n}.pth'), weights_only=False)
    assert a['meta']['iter'] == b['meta']['iter'] == 2 * n
    assert list(a['state_dict']) == list(b['state_dict'])
    for key, value in a['state_dict'].items():
        assert torch.equal(value, b['state_dict'][key]), key
    for i, s in a['optimizer']['state'].items():
        assert torch.equal(s['momentum_buffer'],
                           b['optimizer']['state'][i]['momentum_buffer'])
    sar = 'decode_head.sar_loss.'
    assert sar + 'semantic_anchors' in a['state_dict']
    # The killed run really resumed: it ran iterations n+1..2n again, not
    # from scratch (the first run's checkpoint of iteration n is kept).
    assert 'Advance dataloader' in out or f'Iter(train) [{n + 1}/' in out
    assert f'Iter(train) [1/{2 * n}]' not in out
    assert os.path.isfile(osp.join(work, f'iter_{n}.pth'))
