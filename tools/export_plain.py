"""Export a SAR checkpoint as a plain mmseg checkpoint of its baseline twin.

    python tools/export_plain.py SAR_CKPT OUT_CKPT

The anchor branch (``sar_loss.*``) is dropped and the wrapped head's
parameters move up one level, so the result loads into the baseline twin
config with stock mmseg and no plugin, and gives the same logits. The
optimizer state is dropped (a deployment checkpoint); ``meta`` is kept.
"""
import _venv  # first: re-runs under .venv if needed
import argparse
import os.path as osp
import pickle
import sys

_venv.import_sar_torch_only()
from sar.checkpoints import (  # noqa: E402
    sar_to_plain_state_dict, read_checkpoint, save_new_checkpoint)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('checkpoint', help='SAR checkpoint (.pth)')
    parser.add_argument('out', help='plain checkpoint to write (.pth)')
    parser.add_argument('--force', action='store_true',
                        help='overwrite OUT if it exists')
    return parser.parse_args()


def main():
    args = parse_args()
    # Tensors, plain data and numpy values only: an mmseg checkpoint needs
    # nothing more, and nothing in it gets to run code.
    try:
        ckpt = read_checkpoint(args.checkpoint)
    except pickle.UnpicklingError as err:
        sys.exit(f'export_plain: {args.checkpoint} holds more than tensors, '
                 f'plain data and numpy values: {err}')
    state = ckpt.get('state_dict', ckpt)
    try:
        plain = sar_to_plain_state_dict(state)
    except ValueError as err:
        sys.exit(f'export_plain: {args.checkpoint}: {err}')
    meta = dict(ckpt.get('meta', {}))
    meta['exported_from_sar'] = osp.basename(args.checkpoint)
    try:
        save_new_checkpoint(dict(meta=meta, state_dict=plain), args.out,
                            args.checkpoint, args.force)
    except FileExistsError as err:
        sys.exit(f'export_plain: {err}')
    dropped = len(state) - len(plain)
    print(f'wrote {args.out}: {len(plain)} tensors ({dropped} SAR entries '
          'dropped)')


if __name__ == '__main__':
    main()
