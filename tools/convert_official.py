"""Convert a checkpoint of the authors' SAR release to this project's layout.

    python tools/convert_official.py THEIR_CKPT OUT_CKPT

The result loads into the matching config of configs/sar/ (e.g. the
HRNetV2-W48 FCN ones). See sar.checkpoints.official_to_sar_state_dict for the
key mapping; unknown keys stop the conversion with their names.
"""
import _venv  # first: re-runs under .venv if needed
import argparse
import os.path as osp
import pickle
import sys

_venv.import_sar_torch_only()
from sar.checkpoints import (  # noqa: E402
    official_to_sar_state_dict, read_checkpoint, save_new_checkpoint)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('checkpoint', help="the release's checkpoint (.pth)")
    parser.add_argument('out', help='converted checkpoint to write (.pth)')
    parser.add_argument('--force', action='store_true',
                        help='overwrite OUT if it exists')
    parser.add_argument('--trust', action='store_true',
                        help='unpickle the whole file (its meta may hold '
                        'more than tensors); only for files you trust')
    return parser.parse_args()


def main():
    args = parse_args()
    # A downloaded file: tensors and plain data only, unless --trust.
    try:
        ckpt = read_checkpoint(args.checkpoint, trust=args.trust)
    except pickle.UnpicklingError as err:
        sys.exit(f'convert_official: {args.checkpoint} holds more than '
                 f'tensors ({err}); pass --trust if you trust its source')
    state = ckpt.get('state_dict', ckpt)
    try:
        converted = official_to_sar_state_dict(state)
    except ValueError as err:
        sys.exit(f'convert_official: {args.checkpoint}: {err}')
    try:
        save_new_checkpoint(
            dict(meta=dict(converted_from=osp.basename(args.checkpoint)),
                 state_dict=converted), args.out, args.checkpoint, args.force)
    except FileExistsError as err:
        sys.exit(f'convert_official: {err}')
    print(f'wrote {args.out}: {len(converted)} tensors')


if __name__ == '__main__':
    main()
