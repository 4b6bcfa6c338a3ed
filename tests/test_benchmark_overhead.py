"""tools/benchmark_overhead.py under mmseg 0.30 (sar.evaluation.overhead with
sar.mmseg0x.overhead): twin weights, and the --smoke run end to end.

Only the structure of its output is tested; the speed targets are read from
the printed ratios of a real run, never asserted on timings here.
"""
import os.path as osp

import pytest

from conftest import DEMO_BASELINE, ROOT
from overhead_result import check_smoke_run, twin_with_other_init
from sar.evaluation import overhead as measure
from sar.mmseg0x import overhead
from test_tools import PY, run
from tool_modules import load_tool


def tool_smoke_pair():
    return ('configs/demo/fcn_hrtiny_1xb4-300_shapes-64x64.py',
            'configs/demo/sar_fcn_hrtiny_1xb4-300_shapes-64x64.py')


@pytest.fixture(scope='module')
def tool():
    return load_tool('benchmark_overhead')


def test_sar_model_gets_the_baseline_weights(tool):
    args = tool.parse_args(['--smoke', '--device', 'cpu'])
    _, (model, _) = twin_with_other_init(measure, overhead, args,
                                         'sar_gate_closed')
    reg = model.decode_head.sar_loss
    assert reg.pull_mode == 'gate' and not bool(reg.initialised)


def test_pull_active_variant_pulls_from_the_first_step(tool):
    args = tool.parse_args(['--smoke', '--device', 'cpu'])
    base, _ = measure.build_variant(overhead, args, 'baseline')
    model, optimizer = measure.build_variant(overhead, args,
                                             'sar_pull_active', base)
    reg = model.decode_head.sar_loss
    assert reg.pull_mode == 'after_init' and bool(reg.initialised)
    assert reg.semantic_anchors.abs().sum() > 0
    batch = overhead.fixed_batch(model, args)
    log_vars = overhead.train_step(model, optimizer, batch)
    assert log_vars['decode.loss_sar_pull'] > 0


def test_configs_that_are_not_twins_are_refused(tool, tmp_path):
    other = tmp_path / 'other.py'
    other.write_text(f"_base_ = r'{DEMO_BASELINE}'\n"
                     "model = dict(decode_head=dict(type='SARHead', "
                     "_delete_=True, head=dict(type='FCNHead', "
                     "in_channels=64, in_index=3, channels=16, "
                     "num_classes=4)))\n")
    args = tool.parse_args(['--smoke', '--device', 'cpu', '--sar',
                            str(other)])
    base, _ = measure.build_variant(overhead, args, 'baseline')
    with pytest.raises(ValueError, match='not twins'):
        measure.build_variant(overhead, args, 'sar_gate_closed', base)
    args = tool.parse_args(['--smoke', '--device', 'cpu', '--sar',
                            DEMO_BASELINE])
    with pytest.raises(ValueError, match='not a SARHead'):
        measure.build_variant(overhead, args, 'sar_gate_closed', base)


def test_defaults_follow_the_device(tool):
    cpu = tool.parse_args(['--device', 'cpu'])
    assert (cpu.size, cpu.batch, cpu.steps, cpu.warmup) == (256, 2, 10, 2)
    assert cpu.baseline == osp.join(ROOT, overhead.PAPER[0])
    assert cpu.sar == osp.join(ROOT, overhead.PAPER[1])
    smoke = tool.parse_args(['--smoke', '--device', 'cpu', '--steps', '3'])
    assert (smoke.size, smoke.batch, smoke.steps) == (32, 2, 3)


def test_smoke_run_end_to_end(tmp_path):
    check_smoke_run(run, PY, tmp_path, tool_smoke_pair(), num_classes=4,
                    channels=120)
