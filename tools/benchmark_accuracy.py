"""Baseline, SAR and the prototype ablation on DigitScenes-LT, k seeds each.

Every (method, seed) runs the commands a user runs, with the same schedule
for all: tools/train.py, tools/test.py (mmseg's per-class IoU) and
tools/analyze_features.py on the val split (compactness, separability,
separability ratio and a PCA picture of the decode features). The
prototype ablation is the SAR config with
``model.decode_head.sar_loss.anchor_source=prototype``. Under mmseg 0.30
the configs are configs/demo's, under mmseg 1.x configs/mmseg1x/demo's
(the same model, data and schedule), whichever generation is installed;
the commands and result files are those of sar.mmseg0x.runs or
sar.mmseg1x.runs.
Reported, as mean +- std over seeds: mIoU, head- and tail-class IoU (the
more and less frequent half of the training digits), compactness,
separability (smallest distance between class means, in the features'
units), separability ratio (that distance over the mean distance to the
class mean: free of the features' scale), and the iteration by which
SAR's gate first opened (for the
prototype ablation: by which every class had a prototype), read from
mmseg's json log at its logging interval. Writes to --out-dir
``benchmark_accuracy.md``, ``benchmark_accuracy.json``, ``class_iou.png``
and ``features_pca.png`` (each method's first seed, side by side; the
stars are SAR's semantic anchors, and the prototypes in the prototype
ablation).

The defaults (3 seeds x 3 methods, the configs' 3000 iterations at batch
8, two runs at a time, one thread each) need about 240 s per run (measured:
0.073 s a training iteration with two trainings side by side on two free
cores, 20 s for starting the three tools, testing and analysing 200 val
scenes): an estimated 20 minutes on two free cores (not yet timed whole),
proportionally longer on shared ones. ``--smoke`` runs one seed of four
iterations on a tiny generated copy of the data set (about 35 CPU-seconds
for two methods, mostly starting Python) to check the plumbing.
"""
import _venv  # noqa: F401  first: re-runs under .venv if needed
import argparse
import json
import math
import os
import os.path as osp
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DATA = 'data/digitscenes-lt'  # the configs' data_root, relative to ROOT


def _runs():
    """The installed mmseg generation's commands and result files."""
    import sar
    if sar.mmseg_generation() == 1:
        from sar.mmseg1x import runs
    else:
        from sar.mmseg0x import runs
    return runs


RUNS = _runs()
# method -> (config, --cfg-options that make it that method)
METHODS = {
    'baseline': (RUNS.DEMO_CONFIGS['baseline'], []),
    'SAR': (RUNS.DEMO_CONFIGS['SAR'], []),
    'prototype': (RUNS.DEMO_CONFIGS['SAR'],
                  ['model.decode_head.sar_loss.anchor_source=prototype']),
}
# What the stars of each method's PCA panel are.
STARS = dict(baseline=None, SAR='semantic anchors', prototype='prototypes')
# --smoke: a data set and schedule that only check the plumbing.
SMOKE_DATA = dict(num_train=8, num_val=4, size=64)
SMOKE_SETTINGS = dict(iters=4, seeds=1, samples_per_gpu=2, log_interval=1,
                      max_pixels_per_class=100)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seeds', type=int,
                        help='seeds per method, 0 .. k-1 (default 3; '
                        '--smoke: 1)')
    parser.add_argument('--iters', type=int,
                        help='training iterations of every run (default: '
                        'the configs\', 3000; --smoke: 4)')
    parser.add_argument('--methods', nargs='+', choices=list(METHODS),
                        default=list(METHODS), help='methods to run')
    parser.add_argument('--work-dir', default='work_dirs/benchmark_accuracy',
                        help='training runs go to WORK_DIR/<method>/'
                        'seed_<s>/')
    parser.add_argument('--out-dir', help='where the table, json and '
                        'pictures go (default: --work-dir)')
    parser.add_argument('--smoke', action='store_true',
                        help='seconds-long check on tiny generated data')
    parser.add_argument('--skip-training', action='store_true',
                        help='re-test and re-measure the checkpoints and '
                        'training logs an earlier run left in --work-dir '
                        '(same flags otherwise) instead of training')
    parser.add_argument('--jobs', type=int, default=2,
                        help='runs at a time, each with cores/jobs threads')
    parser.add_argument('--log-interval', type=int, default=10,
                        help='mmseg logging interval: the resolution of the '
                        'gate iteration')
    parser.add_argument('--max-pixels-per-class', type=int, default=2000,
                        help='val pixel features sampled per class for '
                        'compactness, separability and PCA')
    args = parser.parse_args(argv)
    smoke = SMOKE_SETTINGS if args.smoke else {}
    if args.seeds is None:
        args.seeds = smoke.get('seeds', 3)
    if args.iters is None:
        args.iters = smoke.get('iters')  # None: the configs' schedule
    if args.smoke:
        args.log_interval = smoke['log_interval']
        args.max_pixels_per_class = smoke['max_pixels_per_class']
    args.out_dir = args.out_dir or args.work_dir
    if args.seeds < 1:
        parser.error('--seeds must be at least 1')
    return args


def cfg_options(method, args, data_root):
    """The --cfg-options of every command of one method's run."""
    options = list(METHODS[method][1])
    if data_root != DATA:
        options += RUNS.data_options(
            data_root, SMOKE_SETTINGS['samples_per_gpu'] if args.smoke
            else None)
    return options


def run_logged(cmd, out_file, threads):
    """One tool as a subprocess of this Python, its output in ``out_file``."""
    with open(out_file, 'w') as f:
        proc = subprocess.run(
            [sys.executable, *cmd], cwd=ROOT, stdout=f,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, OMP_NUM_THREADS=str(threads),
                     MKL_NUM_THREADS=str(threads)))
    if proc.returncode != 0:
        with open(out_file) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f'{" ".join(cmd)} failed ({proc.returncode}); '
                           f'see {out_file}:\n{tail}')


def one_run(method, seed, args, data_root, threads):
    """Train, test and analyse one (method, seed); the files it wrote."""
    config, _ = METHODS[method]
    work = osp.join(args.work_dir, method, f'seed_{seed}')
    abs_work = osp.join(ROOT, work)
    os.makedirs(abs_work, exist_ok=True)
    for name in RUNS.stale_files(abs_work, training=not args.skip_training):
        os.remove(name)  # one log and one evaluation per run
    options = cfg_options(method, args, data_root)
    start = time.time()
    if args.skip_training:
        if not _trained(abs_work):
            raise RuntimeError(f'--skip-training: {work} needs the '
                               'checkpoint and training log of an earlier '
                               'run')
    else:
        run_logged(RUNS.train_command(
            config, work, seed, args.iters,
            options + [RUNS.log_interval_option(args.log_interval)]),
                   osp.join(abs_work, 'train.out'), threads)
    trained = time.time()
    ckpt = RUNS.checkpoint(abs_work)
    run_logged(RUNS.test_command(config, abs_work, options),
               osp.join(abs_work, 'test.out'), threads)
    run_logged(['tools/analyze_features.py', config, ckpt, '--out-dir',
                osp.join(work, 'features'), '--device', 'cpu',
                '--max-pixels-per-class', str(args.max_pixels_per_class)] +
               (['--cfg-options', *options] if options else []),
               osp.join(abs_work, 'analyze.out'), threads)
    print(f'[benchmark] {method} seed {seed} done: train '
          f'{trained - start:.0f} s, test+features '
          f'{time.time() - trained:.0f} s', flush=True)
    return dict(method=method, seed=seed, work=abs_work,
                features=osp.join(abs_work, 'features', 'features.json'),
                pca_npz=osp.join(abs_work, 'features', 'features_pca.npz'),
                train_s=None if args.skip_training else trained - start)


def _trained(work):
    """Whether ``work`` holds a checkpoint and a training log."""
    try:
        ckpt = RUNS.checkpoint(work)
    except OSError:  # 1.x: no last_checkpoint file
        return False
    return osp.isfile(ckpt) and bool(RUNS.train_log(work))


def collect(run, classes, head, tail):
    """One run's row: mmseg's IoU, the gate, the feature statistics."""
    from sar.evaluation.benchmark import seed_row
    from sar.evaluation.report import gate_summary
    row = seed_row(RUNS.read_metrics(run['work']), classes, head, tail)
    with open(run['features']) as f:
        features = json.load(f)
    row['compactness'] = features['compactness']
    row['separability'] = features['separability']
    row['separability_ratio'] = features['separability_ratio']
    gate = gate_summary(RUNS.train_log(run['work']))
    row['gate_first_open_iter'] = gate['first_open_iter']
    row['train_s'] = run['train_s']
    return row


def pca_panel(npz, method, seed):
    """One method's PCA panel from tools/analyze_features.py's npz."""
    import numpy as np
    with np.load(npz) as saved:
        coords, labels, anchors, explained = (
            saved['coords'], saved['labels'], saved['anchors'],
            saved['explained'])
    share = ', '.join(f'{100 * e:.0f}%' for e in explained)
    return dict(coords=coords, labels=labels,
                anchors=anchors if STARS[method] else None,
                anchors_label=STARS[method] or 'semantic anchors',
                title=f'{method} (seed {seed}): val decode features, PCA '
                f'(variance {share})')


def _json_safe(x):
    """NaN and inf are not JSON: None instead."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


COLUMNS = [('mIoU', 'mIoU'), ('head', 'head IoU'), ('tail', 'tail IoU'),
           ('compactness', 'compactness (lower: tighter)', 4),
           ('separability', 'separability', 4),
           ('separability_ratio', 'separability ratio (higher: further '
            'apart)', 3),
           ('gate_first_open_iter', 'gate first open (iter)', 0)]


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    from sar.data import (DIGITSCENES_CLASSES, DIGITSCENES_PALETTE,
                          head_tail_classes, make_digitscenes)
    data_root = osp.join(args.work_dir, 'smoke_data') if args.smoke else DATA
    meta = make_digitscenes(osp.join(ROOT, data_root),
                            **(SMOKE_DATA if args.smoke else {}))
    classes = list(DIGITSCENES_CLASSES)
    head, tail = head_tail_classes(meta['train']['instances'])
    seeds = list(range(args.seeds))
    jobs = [(m, s) for s in seeds for m in args.methods]
    threads = max(1, len(os.sched_getaffinity(0)) // args.jobs)
    print(f'[benchmark] {len(jobs)} runs ({", ".join(args.methods)} x seeds '
          f'{seeds}), {args.jobs} at a time, {threads} thread(s) each, '
          f'data {data_root}', flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(
            lambda job: one_run(*job, args, data_root, threads), jobs))

    from sar.evaluation.benchmark import (class_iou_bars, markdown_table,
                                          pca_row, summarize_seeds)
    rows = {m: [] for m in args.methods}
    for run in runs:
        rows[run['method']].append(
            dict(seed=run['seed'], **collect(run, classes, head, tail)))
    summaries = {m: summarize_seeds([{k: v for k, v in r.items()
                                      if k != 'seed'} for r in rows[m]],
                                    classes) for m in args.methods}

    os.makedirs(osp.join(ROOT, args.out_dir), exist_ok=True)
    out = {name: osp.join(args.out_dir, name) for name in (
        'benchmark_accuracy.md', 'benchmark_accuracy.json', 'class_iou.png',
        'features_pca.png')}
    mean = [[summaries[m]['iou'][c]['mean'] for c in classes]
            for m in args.methods]
    std = [[summaries[m]['iou'][c]['std'] for c in classes]
           for m in args.methods]
    import numpy as np
    fig = class_iou_bars(np.array(mean, dtype=float),
                         np.array(std, dtype=float), classes, args.methods,
                         tail=tail, title=f'DigitScenes-LT val IoU, mean +- '
                         f'std over {len(seeds)} seed(s)')
    fig.savefig(osp.join(ROOT, out['class_iou.png']))
    first = {r['method']: r for r in runs if r['seed'] == seeds[0]}
    fig = pca_row([pca_panel(first[m]['pca_npz'], m, seeds[0])
                   for m in args.methods], classes, DIGITSCENES_PALETTE)
    fig.savefig(osp.join(ROOT, out['features_pca.png']))

    iters = args.iters
    if iters is None:
        iters = RUNS.schedule(osp.join(ROOT, METHODS[args.methods[0]][0]))[1]
    table = markdown_table(summaries, COLUMNS)
    class_table = markdown_table(
        {m: summaries[m]['iou'] for m in args.methods},
        [(c, c) for c in classes])
    text = '\n'.join([
        '# DigitScenes-LT accuracy benchmark', '',
        f'{len(seeds)} seed(s) ({", ".join(map(str, seeds))}) per method, '
        f'{iters} iterations each, val split of `{data_root}` '
        f'({meta["val"]["num_scenes"]} scenes). IoU in % from mmseg\'s '
        'evaluation, mean +- sample std over seeds; head: digits '
        f'{", ".join(head)}, tail: {", ".join(tail)} (by training '
        'instances). Compactness, separability (smallest distance between '
        'class means) and separability ratio (that distance over the mean '
        'distance to the class mean; free of the features\' scale) of val '
        'pixel features from tools/analyze_features.py. Gate: iteration '
        'of the first '
        f'logging interval ({args.log_interval} iterations) in which it '
        'opened, over the seeds where it did (n/a: never); for the '
        'prototype ablation, every class had a prototype.', '',
        table, '', '## Per-class IoU', '', class_table, '',
        f'![per-class IoU]({osp.basename(out["class_iou.png"])})', '',
        f'![PCA of val features]({osp.basename(out["features_pca.png"])})',
        ''])
    with open(osp.join(ROOT, out['benchmark_accuracy.md']), 'w') as f:
        f.write(text)
    result = dict(
        settings=dict(methods=args.methods, seeds=seeds, iters=iters,
                      smoke=args.smoke, skip_training=args.skip_training,
                      data_root=data_root,
                      log_interval=args.log_interval,
                      max_pixels_per_class=args.max_pixels_per_class,
                      configs={m: METHODS[m][0] for m in args.methods},
                      cfg_options={m: METHODS[m][1] for m in args.methods}),
        classes=classes, head=head, tail=tail,
        methods={m: dict(summary=summaries[m], per_seed=rows[m])
                 for m in args.methods},
        files=dict(markdown=out['benchmark_accuracy.md'],
                   class_iou_png=out['class_iou.png'],
                   pca_png=out['features_pca.png']),
        elapsed_s=time.time() - start)
    with open(osp.join(ROOT, out['benchmark_accuracy.json']), 'w') as f:
        json.dump(_json_safe(result), f, indent=2)
    print(table)
    print(f'[benchmark] wrote {", ".join(out.values())} in '
          f'{time.time() - start:.0f} s', flush=True)


if __name__ == '__main__':
    main()
