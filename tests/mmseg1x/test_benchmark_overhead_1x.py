"""tools/benchmark_overhead.py under mmseg 1.x (sar.evaluation.overhead with
sar.mmseg1x.overhead): the 1.x configs, twin weights, the pull variant, and
the --smoke run end to end with the same result as under 0.30."""
import os.path as osp

import pytest

from helpers1x import PY, ROOT, run
from overhead_result import check_smoke_run, twin_with_other_init
from sar.evaluation import overhead as measure
from sar.mmseg1x import overhead
from tool_modules import load_tool


@pytest.fixture(scope='module')
def tool():
    return load_tool('benchmark_overhead')


def test_the_tool_takes_the_1x_glue_and_configs(tool):
    assert tool.GLUE is overhead
    args = tool.parse_args(['--device', 'cpu'])
    assert args.baseline == osp.join(ROOT, 'configs', 'mmseg1x', 'baseline',
                                     'fcn_hr48_4xb4-160k_ade20k-512x512.py')
    assert args.sar == osp.join(ROOT, overhead.PAPER[1])


def test_twins_share_weights_and_the_pull_acts_from_the_first_step(tool):
    args = tool.parse_args(['--smoke', '--device', 'cpu'])
    _, (model, wrapper) = twin_with_other_init(measure, overhead, args,
                                               'sar_pull_active')
    reg = model.decode_head.sar_loss
    assert reg.pull_mode == 'after_init' and bool(reg.initialised)
    batch = overhead.fixed_batch(model, args)
    # Trained at the measured size, not padded to the config's 64 x 64 crop.
    assert model.data_preprocessor(batch, True)['inputs'].shape[-2:] == \
        (32, 32)
    assert overhead.logits(model, batch).shape[-2:] == (32, 32)
    log_vars = overhead.train_step(model, wrapper, batch)
    assert log_vars['decode.loss_sar_pull'] > 0


def test_smoke_run_end_to_end(tmp_path):
    check_smoke_run(run, PY, tmp_path, overhead.SMOKE, num_classes=11,
                    channels=64)
