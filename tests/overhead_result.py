"""What a --smoke run of tools/benchmark_overhead.py must give, in either
mmseg generation (tests/test_benchmark_overhead.py,
tests/mmseg1x/test_benchmark_overhead_1x.py). Structure only: the speed
targets are read from the printed ratios of a real run, never asserted on
timings here."""
import json

import torch

VARIANTS = ['baseline', 'sar_gate_closed', 'sar_pull_active']
SAR_VARIANTS = VARIANTS[1:]
RATIO_KEYS = ['step_time_ratio', 'peak_memory_ratio', 'inference_time_ratio',
              'step_cpu_time_ratio', 'inference_cpu_time_ratio']


def check_smoke_run(run, py, tmp_path, pair, num_classes, channels):
    """``python tools/benchmark_overhead.py --smoke`` with ``run(cmd)`` of
    the suite's helpers and its ``py``; checks its json and output
    (:func:`check_smoke_result`)."""
    out_json = tmp_path / 'overhead.json'
    out = run([py, 'tools/benchmark_overhead.py', '--smoke', '--device',
               'cpu', '--json', str(out_json)])
    with open(out_json) as f:
        res = json.load(f)
    check_smoke_result(res, out, pair, num_classes, channels)
    assert f'wrote {out_json}' in out


def check_smoke_result(res, out, pair, num_classes, channels):
    """``res``: the tool's json; ``out``: what it printed; ``pair``: the
    (baseline, SAR) configs it should have measured."""
    assert list(res) == [
        'baseline', 'sar', 'device', 'device_name', 'threads', 'batch',
        'size', 'steps', 'warmup', 'memory_steps', 'num_classes', 'channels',
        'memory_measure', 'targets', 'ratios', 'step_time_s',
        'inference_time_s', 'step_cpu_time_s', 'inference_cpu_time_s',
        'peak_memory_bytes', 'checks', 'noise'
    ]
    assert (res['baseline'], res['sar']) == pair
    assert (res['device'], res['size'], res['batch'], res['steps'],
            res['warmup'], res['memory_steps']) == ('cpu', 32, 2, 2, 1, 1)
    assert (res['num_classes'], res['channels']) == (num_classes, channels)
    assert 'ru_maxrss' in res['memory_measure']
    assert res['targets'] == dict(step_time_ratio=1.02,
                                  peak_memory_ratio=1.03,
                                  inference_time_ratio=1.00)
    assert list(res['ratios']) == SAR_VARIANTS
    for variant in SAR_VARIANTS:
        assert list(res['ratios'][variant]) == RATIO_KEYS
        assert all(isinstance(v, float) and v > 0
                   for v in res['ratios'][variant].values())
    for key in ('step_time_s', 'inference_time_s', 'step_cpu_time_s',
                'inference_cpu_time_s'):
        assert list(res[key]) == VARIANTS
        assert all(len(v) == 2 and min(v) > 0 for v in res[key].values())
    assert list(res['peak_memory_bytes']) == VARIANTS
    assert all(v > 0 for v in res['peak_memory_bytes'].values())
    checks = res['checks']
    assert checks['inference_logits_equal'] is True
    assert checks['pull_loss_last']['sar_pull_active'] > 0
    # The gate-closed variant measures what it says, however fast its
    # anchors learn (it once opened within 35 GPU steps).
    assert checks['gate_stayed_closed'] is True
    assert checks['pull_loss_last']['sar_gate_closed'] == 0
    assert set(res['noise']) == {'baseline_step_spread',
                                 'baseline_inference_spread'}
    for title in ('train step time', 'peak memory', 'inference time',
                  'train step CPU time', 'inference CPU time'):
        (line, ) = [x for x in out.splitlines() if x.startswith(title)]
        assert ('<= 1.0' in line or '1.00 (' in line), line
    assert f'{res["ratios"]["sar_pull_active"]["step_time_ratio"]:.3f}' in out


def twin_with_other_init(measure, glue, args, variant):
    """The baseline and ``variant`` built from another seed with the
    baseline's weights, checked key by key: (baseline, (model, optimizer))."""
    base, _ = measure.build_variant(glue, args, 'baseline')
    torch.manual_seed(123)  # a different init than the baseline's
    model, optimizer = measure.build_variant(glue, args, variant, base)
    state = model.state_dict()
    for key, value in base.state_dict().items():
        sar_key = key.replace('decode_head.', 'decode_head.head.', 1)
        assert torch.equal(state[sar_key], value), key
    return base, (model, optimizer)
