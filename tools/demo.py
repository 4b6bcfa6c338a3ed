"""`make demo`: SAR against its baseline on DigitScenes-LT, on the CPU.

Writes the DigitScenes-LT data set once (tools/prepare_digitscenes.py's
defaults: long-tailed training digits, balanced validation), trains the
baseline and its SAR twin (same seed and schedule) with tools/train.py,
evaluates both with tools/test.py (the commands a user runs), and prints
mmseg's per-class IoU side by side with head and tail means, then a picture
of validation scenes with tail digits. The last line is, for scripts,
``mIoU baseline B SAR S (gain +G)``. About ten minutes on two cores.
"""
import argparse
import glob
import json
import os
import os.path as osp
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DATA = 'data/digitscenes-lt'  # the configs' data_root, relative to ROOT
CONFIGS = {
    'baseline':
    'configs/demo/fcn_r18slim-d8_1xb16-1500_digitscenes-lt-64x64.py',
    'SAR': 'configs/demo/sar_fcn_r18slim-d8_1xb16-1500_digitscenes-lt-64x64.py',
}


def run(*args):
    print('+', ' '.join(args), flush=True)
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True)


def train_and_test(config, work_dir, args):
    """tools/train.py then tools/test.py; mmseg's evaluation dict and log."""
    train = ['tools/train.py', config, '--work-dir', work_dir,
             '--no-validate', '--deterministic']
    if args.seed is not None:
        train += ['--seed', str(args.seed)]
    if args.iters is not None:
        train += ['--cfg-options', f'runner.max_iters={args.iters}',
                  f'checkpoint_config.interval={args.iters}']
    for old in glob.glob(osp.join(ROOT, work_dir, '*.log.json')) + \
            glob.glob(osp.join(ROOT, work_dir, 'eval_*.json')):
        os.remove(old)
    run(*train)
    run('tools/test.py', config, osp.join(work_dir, 'latest.pth'), '--eval',
        'mIoU', '--work-dir', work_dir)
    (result, ) = glob.glob(osp.join(ROOT, work_dir, 'eval_*.json'))
    with open(result) as f:
        metric = json.load(f)['metric']
    (log, ) = glob.glob(osp.join(ROOT, work_dir, '*.log.json'))
    return metric, log


def tail_scenes(root, tail_ids, count):
    """The first ``count`` val scenes (by file name) holding a tail digit."""
    import numpy as np
    from PIL import Image
    found = []
    for name in sorted(os.listdir(osp.join(root, 'ann_dir', 'val'))):
        label = np.asarray(Image.open(osp.join(root, 'ann_dir', 'val', name)))
        if np.isin(label, tail_ids).any():
            found.append(name)
            if len(found) == count:
                break
    return found


def picture(names, work_dirs, out_file):
    """image | ground truth | baseline | SAR for the named val scenes."""
    import numpy as np
    from mmseg.apis import inference_segmentor, init_segmentor
    from PIL import Image

    from sar.datasets import DIGITSCENES_CLASSES, DIGITSCENES_PALETTE
    from sar.visualize import comparison_figure
    root = osp.join(ROOT, DATA)
    paths = [osp.join(root, 'img_dir', 'val', n) for n in names]
    images = [np.asarray(Image.open(p).convert('RGB')) for p in paths]
    gts = [np.asarray(Image.open(osp.join(root, 'ann_dir', 'val', n)))
           for n in names]
    predictions = {}
    for method, config in CONFIGS.items():
        model = init_segmentor(
            osp.join(ROOT, config),
            osp.join(ROOT, work_dirs[method], 'latest.pth'), device='cpu')
        predictions[method] = [inference_segmentor(model, p)[0]
                               for p in paths]
    fig = comparison_figure(images, gts, predictions, DIGITSCENES_PALETTE,
                            class_names=list(DIGITSCENES_CLASSES),
                            row_titles=names)
    fig.savefig(out_file, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--iters', type=int,
                        help='training iterations (default: the configs\')')
    parser.add_argument('--seed', type=int,
                        help='training seed (default: the configs\')')
    parser.add_argument('--num-pictures', type=int, default=4,
                        help='val scenes with tail digits in the picture')
    args = parser.parse_args()
    start = time.time()

    from sar.datasets import (DIGITSCENES_CLASSES, head_tail_classes,
                              make_digitscenes)
    from sar.report import (comparison_table, gate_summary, read_train_log,
                            summary_line)
    print(f'[demo] DigitScenes-LT in {DATA} (written once)', flush=True)
    meta = make_digitscenes(osp.join(ROOT, DATA))
    print(f'[demo] train digits 0-9: {meta["train"]["instances"]} '
          f'instances; val: {meta["val"]["instances"]}', flush=True)

    metrics, logs, work_dirs = {}, {}, {}
    for method, config in CONFIGS.items():
        work_dirs[method] = osp.join(args.work_dir, method.lower())
        print(f'[demo] {method}: train and test '
              f'({time.time() - start:.0f} s so far)', flush=True)
        metrics[method], logs[method] = train_and_test(
            config, work_dirs[method], args)

    head, tail = head_tail_classes(meta['train']['instances'])
    table, rows = comparison_table(metrics, DIGITSCENES_CLASSES, head, tail)
    gate = gate_summary(read_train_log(logs['SAR']))
    out_file = osp.join(args.work_dir, 'digitscenes_val_tail.png')
    names = tail_scenes(osp.join(ROOT, DATA),
                        [DIGITSCENES_CLASSES.index(c) for c in tail],
                        args.num_pictures)
    picture(names, work_dirs, osp.join(ROOT, out_file))

    iters = args.iters or 'the configs\''
    print(f'\nDigitScenes-LT val (balanced, {meta["val"]["num_scenes"]} '
          f'scenes), IoU in %, mmseg\'s evaluation; {iters} iterations, '
          'one seed; head/tail: the more/less frequent half of the digits '
          'in training.')
    print(table)
    if gate['first_open_iter'] is None:
        print('SAR: the anchor gate never opened (no pull toward semantic '
              'anchors); see decode.sar.anchor_acc in '
              f'{osp.relpath(logs["SAR"], ROOT)}')
    else:
        print(f'SAR: anchor gate first open by iteration '
              f'{gate["first_open_iter"]} (logged every interval); last '
              f'anchor accuracy {gate["last_anchor_acc"]:.2f}, last pull '
              f'loss {gate["last_pull"]:.4f}')
    print(f'Picture (image | ground truth | baseline | SAR, val scenes with '
          f'tail digits): {out_file}')
    print(f'Total time {time.time() - start:.0f} s')
    print(summary_line(rows['baseline']['mIoU'], rows['SAR']['mIoU']))


if __name__ == '__main__':
    main()
