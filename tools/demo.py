"""`make demo`: train and test the demo baseline and its SAR twin.

Generates the small shapes data set, runs tools/train.py and tools/test.py
(the commands a user runs) for both configs, and prints their mIoU side by
side. CPU-sized: a few minutes on two cores.
"""
import argparse
import glob
import json
import os
import os.path as osp
import subprocess
import sys

from prettytable import PrettyTable

from sar.datasets import make_shapes_dataset

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = {
    'baseline': 'configs/demo/fcn_hrtiny_1xb4-300_shapes-64x64.py',
    'SAR': 'configs/demo/sar_fcn_hrtiny_1xb4-300_shapes-64x64.py',
}


def run(*args):
    print('+', ' '.join(args), flush=True)
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--iters', type=int, default=300)
    args = parser.parse_args()
    make_shapes_dataset(osp.join(ROOT, 'data', 'shapes'), num_train=64,
                        num_val=16, size=64, seed=0)
    table = PrettyTable(['method', 'config', 'mIoU', 'mAcc', 'aAcc'])
    for method, config in CONFIGS.items():
        work_dir = osp.join(args.work_dir, method.lower())
        run('tools/train.py', config, '--work-dir', work_dir,
            '--no-validate', '--deterministic', '--cfg-options',
            f'runner.max_iters={args.iters}',
            f'checkpoint_config.interval={args.iters}')
        ckpt = osp.join(work_dir, 'latest.pth')
        for old in glob.glob(osp.join(ROOT, work_dir, 'eval_*.json')):
            os.remove(old)
        run('tools/test.py', config, ckpt, '--eval', 'mIoU', '--work-dir',
            work_dir)
        (result, ) = glob.glob(osp.join(ROOT, work_dir, 'eval_*.json'))
        with open(result) as f:
            metric = json.load(f)['metric']
        table.add_row([method, osp.basename(config)] +
                      [f'{100 * metric[k]:.2f}' for k in
                       ('mIoU', 'mAcc', 'aAcc')])
    print(f'\nDemo: {args.iters} iterations on generated shapes (64x64), '
          'one seed; a smoke run, not a benchmark.')
    print(table)


if __name__ == '__main__':
    main()
