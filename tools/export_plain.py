"""Export a SAR checkpoint as a plain mmseg checkpoint of its baseline twin.

    python tools/export_plain.py SAR_CKPT OUT_CKPT

The anchor branch (``sar_loss.*``) is dropped and the wrapped head's
parameters move up one level, so the result loads into the baseline twin
config with stock mmseg and no plugin, and gives the same logits. The
optimizer state is dropped (a deployment checkpoint); ``meta`` is kept.
"""
import argparse
import os
import os.path as osp
import sys

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from sar.export import sar_to_plain_state_dict  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('checkpoint', help='SAR checkpoint (.pth)')
    parser.add_argument('out', help='plain checkpoint to write (.pth)')
    parser.add_argument('--force', action='store_true',
                        help='overwrite OUT if it exists')
    return parser.parse_args()


def main():
    args = parse_args()
    if osp.abspath(args.out) == osp.abspath(args.checkpoint):
        sys.exit('export_plain: OUT must differ from the input checkpoint')
    if osp.exists(args.out) and not args.force:
        sys.exit(f'export_plain: {args.out} exists; pass --force to replace')
    # Our own training output: it holds the runner's meta, not only tensors.
    ckpt = torch.load(args.checkpoint, map_location='cpu',
                      weights_only=False)
    state = ckpt.get('state_dict', ckpt)
    try:
        plain = sar_to_plain_state_dict(state)
    except ValueError as err:
        sys.exit(f'export_plain: {args.checkpoint}: {err}')
    meta = dict(ckpt.get('meta', {}))
    meta['exported_from_sar'] = osp.basename(args.checkpoint)
    tmp = f'{args.out}.tmp'
    torch.save(dict(meta=meta, state_dict=plain), tmp)
    os.replace(tmp, args.out)  # never leave a half-written checkpoint
    dropped = len(state) - len(plain)
    print(f'wrote {args.out}: {len(plain)} tensors ({dropped} SAR entries '
          'dropped)')


if __name__ == '__main__':
    main()
