"""SAR's cost against its baseline twin: the measurement behind
tools/benchmark_overhead.py, for either mmseg generation.

Twin models with the same weights, train and test steps taking turns, peak
memory in a fresh child process per model (see the tool for what is
measured and how). What depends on the generation (building a variant from
its config, a fixed batch, one train step, one test step, the test-time
logits) comes in as ``glue``: :mod:`sar.mmseg0x.overhead` or
:mod:`sar.mmseg1x.overhead`. Their config objects (mmcv's or mmengine's
``Config``) share what :func:`configure_variant` uses.
"""
import gc
import json
import os
import os.path as osp
import resource
import statistics
import subprocess
import tempfile
from collections import OrderedDict

import torch

from ..checkpoints import sar_to_plain_state_dict
from .timing import interleaved, median_ratio, spread

VARIANTS = ('baseline', 'sar_gate_closed', 'sar_pull_active')
SAR_VARIANTS = VARIANTS[1:]
TARGETS = OrderedDict(step_time_ratio=1.02, peak_memory_ratio=1.03,
                      inference_time_ratio=1.00)
# Bytes; glibc's initial value, kept fixed for the CPU memory children.
MMAP_THRESHOLD = 128 * 1024
GATE_SHUT = 1 - 1e-6  # update_conf of the gate-closed variant
# The inference path of SAR is the baseline's; a measured ratio this close
# to 1.00 counts as equal (timing noise).
INFERENCE_TOLERANCE = 0.01


def configure_variant(cfg, variant, path):
    """``cfg`` (read from ``path``) set up as ``variant``, in place.

    Random weights (no download); for the SAR variants, the pull mode or
    the gate's threshold of the variant.
    """
    if variant != 'baseline' and cfg.model.decode_head.get('type') != \
            'SARHead':
        raise ValueError(f'{path}: decode_head is not a SARHead')
    if variant != 'baseline':
        # A SARHead left with its default sar_loss gets the type spelt out,
        # so that the settings below merge into a complete loss config.
        cfg.model.decode_head.setdefault(
            'sar_loss', dict(type='SemanticAnchorLoss'))
    if variant == 'sar_pull_active':
        cfg.merge_from_dict({'model.decode_head.sar_loss.pull_mode':
                             'after_init'})
    if variant == 'sar_gate_closed':
        # Every anchor's CE would have to fall below -log(GATE_SHUT), about
        # 1e-6, to open the gate: with the paper's 0.8 the repeated batch
        # opened it within 35 steps on a GPU, and the variant timed the pull.
        cfg.merge_from_dict({'model.decode_head.sar_loss.update_conf':
                             GATE_SHUT})
    cfg.model.pretrained = None  # random weights: no download
    return cfg


def config_path(args, variant):
    return args.baseline if variant == 'baseline' else args.sar


def load_baseline_weights(sar_model, base_model):
    """The baseline's state dict into the SAR model; SAR's own state stays."""
    # The export mapping applied to the key names: plain key -> SAR key.
    sar_keys = sar_model.state_dict().keys()
    sar_key_of = sar_to_plain_state_dict(OrderedDict((k, k) for k in sar_keys))
    base = base_model.state_dict()
    if set(sar_key_of) != set(base):
        raise ValueError('the two configs are not twins: keys differ, e.g. '
                         f'{sorted(set(sar_key_of) ^ set(base))[:5]}')
    missing, unexpected = sar_model.load_state_dict(
        {sar_key_of[k]: v for k, v in base.items()}, strict=False)
    assert not unexpected and all('.sar_loss.' in k for k in missing), \
        (missing, unexpected)


def sar_module(model):
    return model.decode_head.sar_loss


def force_pull(model):
    """Semantic anchors set, so that 'after_init' pulls in every step."""
    reg = sar_module(model)
    assert reg.pull_mode == 'after_init'
    with torch.no_grad():
        reg.projector.eval()
        reg.semantic_anchors.copy_(reg.embed_anchors())
        reg.projector.train()
        reg.initialised.fill_(True)
        reg.iters_since_init.zero_()


def build_variant(glue, args, variant, base_model=None):
    """(model, optimizer) of ``variant``: with the baseline's weights when
    ``base_model`` is given, the pull forced on for 'sar_pull_active'."""
    model, optimizer = glue.build(args, variant)
    if base_model is not None:
        load_baseline_weights(model, base_model)
    if variant == 'sar_pull_active':
        force_pull(model)
    return model, optimizer


def child_main(args, glue):
    """Peak memory of training one model, in this fresh process."""
    if args.threads:
        torch.set_num_threads(args.threads)
    # Weights do not change the memory: no baseline to copy them from.
    model, optimizer = build_variant(glue, args, args.child)
    batch = glue.fixed_batch(model, args)
    gc.collect()
    cuda = args.device == 'cuda'
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for _ in range(args.memory_steps):
        glue.train_step(model, optimizer, batch)
    if cuda:
        torch.cuda.synchronize()
    if cuda:
        peak = torch.cuda.max_memory_allocated()
        measured = peak
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        measured = peak - before
    with open(args.child_out, 'w') as f:
        json.dump(dict(variant=args.child, bytes=measured, before=before,
                       peak=peak), f)


def measure_memory(args, child_command):
    """One child process per variant, one after the other.

    ``child_command`` (list) starts a process that runs :func:`child_main`
    with the flags appended (the tool's own ``--child``).
    """
    forwarded = ['--baseline', args.baseline, '--sar', args.sar, '--device',
                 args.device, '--size', str(args.size), '--batch',
                 str(args.batch), '--seed', str(args.seed), '--memory-steps',
                 str(args.memory_steps), '--threads',
                 str(args.threads or torch.get_num_threads())]
    env = dict(os.environ)
    if args.device == 'cpu':
        # A fixed glibc mmap threshold: large tensors get their own mappings
        # and leave RSS when freed. With the default, adaptive threshold the
        # heap keeps freed blocks and the peak RSS of identical runs varies
        # by several percent, more than SAR's share.
        env.setdefault('MALLOC_MMAP_THRESHOLD_', str(MMAP_THRESHOLD))
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in VARIANTS:
            out = osp.join(tmp, f'{variant}.json')
            subprocess.run(child_command + ['--child', variant,
                                            '--child-out', out] + forwarded,
                           env=env, check=True)
            with open(out) as f:
                peaks[variant] = json.load(f)['bytes']
    return peaks


def memory_description(device):
    if device == 'cuda':
        return ('torch.cuda.max_memory_allocated over the train steps, one '
                'child process per model: weights, gradients, optimizer '
                'state and activations')
    return ('growth of peak RSS (ru_maxrss) over the train steps beyond its '
            'value after building the model, one child process per model '
            f'(glibc MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}): gradients, '
            'optimizer state, activations and allocator slack; weights and '
            'libraries excluded')


def sync_of(device):
    """The device's synchronisation for timing, or None."""
    return torch.cuda.synchronize if device == 'cuda' else None


def run(args, child_command, glue):
    """Every measurement of the tool; the dict it prints and saves.

    ``child_command`` (list) starts a process that runs :func:`child_main`
    (the tool's own ``--child``); ``glue`` is the generation's module.
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    peaks = measure_memory(args, child_command)

    base, base_opt = build_variant(glue, args, 'baseline')
    models = {'baseline': (base, base_opt)}
    for variant in SAR_VARIANTS:
        models[variant] = build_variant(glue, args, variant, base)
    batch = glue.fixed_batch(base, args)

    # Test time first, while all weights are still equal.
    with torch.no_grad():
        logits = [glue.logits(m, batch) for m, _ in models.values()]
    logits_equal = all(torch.equal(logits[0], x) for x in logits[1:])
    test_times, test_cpu, _ = interleaved(
        {v: (lambda m=m: glue.test_step(m, batch))
         for v, (m, _) in models.items()},
        args.steps, args.warmup, sync_of(args.device))
    train_times, train_cpu, log_vars = interleaved(
        {v: (lambda m=m, o=o: glue.train_step(m, o, batch))
         for v, (m, o) in models.items()},
        args.steps, args.warmup, sync_of(args.device))

    head = base.decode_head
    ratios = OrderedDict()
    for variant in SAR_VARIANTS:
        ratios[variant] = OrderedDict(
            step_time_ratio=median_ratio(train_times[variant],
                                         train_times['baseline']),
            peak_memory_ratio=peaks[variant] / peaks['baseline']
            if peaks['baseline'] > 0 else float('nan'),
            inference_time_ratio=median_ratio(test_times[variant],
                                              test_times['baseline']))
        if args.device == 'cpu':
            # Process CPU time leaves out the time other processes held the
            # cores: the robust figure on a shared machine. On CUDA it would
            # time kernel launches, not the work.
            ratios[variant].update(
                step_cpu_time_ratio=median_ratio(train_cpu[variant],
                                                 train_cpu['baseline']),
                inference_cpu_time_ratio=median_ratio(
                    test_cpu[variant], test_cpu['baseline']))
    device_name = torch.cuda.get_device_name() if args.device == 'cuda' \
        else f'CPU ({os.cpu_count()} cores visible)'
    return OrderedDict(
        baseline=osp.relpath(args.baseline, glue.ROOT),
        sar=osp.relpath(args.sar, glue.ROOT),
        device=args.device,
        device_name=device_name,
        threads=torch.get_num_threads(),
        batch=args.batch,
        size=args.size,
        steps=args.steps,
        warmup=args.warmup,
        memory_steps=args.memory_steps,
        num_classes=head.num_classes,
        channels=head.conv_seg.in_channels,
        memory_measure=memory_description(args.device),
        targets=TARGETS,
        ratios=ratios,
        step_time_s=train_times,
        inference_time_s=test_times,
        step_cpu_time_s=train_cpu if args.device == 'cpu' else None,
        inference_cpu_time_s=test_cpu if args.device == 'cpu' else None,
        peak_memory_bytes=peaks,
        checks=OrderedDict(
            inference_logits_equal=logits_equal,
            gate_stayed_closed=not bool(
                sar_module(models['sar_gate_closed'][0]).initialised),
            pull_loss_last={v: _number(log_vars[v].get(
                'decode.loss_sar_pull')) for v in SAR_VARIANTS}),
        noise=OrderedDict(
            baseline_step_spread=spread(train_times['baseline']),
            baseline_inference_spread=spread(test_times['baseline'])))


def _number(value):
    """A logged value as a float (mmengine logs tensors), None kept."""
    if torch.is_tensor(value):
        value = value.detach()
    return None if value is None else float(value)


def report(res):
    gib = 2.0**30
    lines = [
        f'SAR overhead: {res["sar"]} vs {res["baseline"]} '
        f'(C={res["num_classes"]}, D={res["channels"]})',
        f'device: {res["device_name"]}, {res["threads"]} torch threads; input '
        f'{res["batch"]}x3x{res["size"]}x{res["size"]} (--size default: 512 '
        'on cuda, 256 on cpu)',
        f'time: median over {res["steps"]} steps after {res["warmup"]} '
        'warm-up of the per-step SAR/baseline ratio, models taking turns in '
        'each step' + ('; wall clock, and process CPU time (not counting '
                       'time other processes held the cores)'
                       if res['device'] == 'cpu' else ''),
        f'memory: {res["memory_measure"]}; {res["memory_steps"]} train steps',
        '',
        f'{"SAR / baseline":<22}{"gate closed":>13}{"pull active":>13}'
        '   target',
    ]
    inference = f'1.00 (+-{INFERENCE_TOLERANCE:.2f} noise)'
    rows = [('train step time', 'step_time_ratio', '<= 1.02'),
            ('peak memory', 'peak_memory_ratio', '<= 1.03'),
            ('inference time', 'inference_time_ratio', inference)]
    if res['device'] == 'cpu':
        rows += [('train step CPU time', 'step_cpu_time_ratio', '<= 1.02'),
                 ('inference CPU time', 'inference_cpu_time_ratio',
                  inference)]
    for title, key, target in rows:
        values = [res['ratios'][v][key] for v in SAR_VARIANTS]
        if key.startswith('inference'):
            ok = all(abs(x - 1.0) <= INFERENCE_TOLERANCE for x in values)
        else:
            ok = all(x <= TARGETS[key.replace('_cpu', '')] for x in values)
        lines.append(f'{title:<22}' + ''.join(f'{x:>13.3f}' for x in values)
                     + f'   {target}: {"met" if ok else "NOT met"}')
    base_t = res['step_time_s']['baseline']
    base_i = res['inference_time_s']['baseline']
    mem = res['peak_memory_bytes']
    checks = res['checks']
    lines += [
        '',
        f'baseline: train step {statistics.median(base_t):.3f} s (spread '
        f'{100 * res["noise"]["baseline_step_spread"]:.1f}%), inference '
        f'{statistics.median(base_i):.3f} s (spread '
        f'{100 * res["noise"]["baseline_inference_spread"]:.1f}%), memory '
        f'{mem["baseline"] / gib:.3f} GiB',
        'SAR memory: ' + ', '.join(
            f'{v} {mem[v] / gib:.3f} GiB' for v in SAR_VARIANTS),
        f'checks: test-time logits equal to the baseline\'s: '
        f'{checks["inference_logits_equal"]}; gate stayed closed: '
        f'{checks["gate_stayed_closed"]}; last pull loss: ' + ', '.join(
            f'{v} {checks["pull_loss_last"][v]:.4g}' for v in SAR_VARIANTS),
    ]
    return '\n'.join(lines)
