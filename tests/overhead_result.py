"""What a --smoke run of tools/benchmark_overhead.py must give, in either
mmseg generation (tests/test_benchmark_overhead.py,
tests/mmseg1x/test_benchmark_overhead_1x.py). Structure only: the speed
targets are read from the printed ratios of a real run, never asserted on
timings here."""
VARIANTS = ['baseline', 'sar_gate_closed', 'sar_pull_active']
SAR_VARIANTS = VARIANTS[1:]
RATIO_KEYS = ['step_time_ratio', 'peak_memory_ratio', 'inference_time_ratio',
              'step_cpu_time_ratio', 'inference_cpu_time_ratio']


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
