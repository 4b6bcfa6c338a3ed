"""Export a SAR checkpoint as a plain mmseg checkpoint of its baseline twin.

    python tools/export_plain.py SAR_CKPT OUT_CKPT

The anchor branch (``sar_loss.*``) is dropped and the wrapped head's
parameters move up one level, so the result loads into the baseline twin
config with stock mmseg and no plugin, and gives the same logits. The
optimizer state and the logs are dropped (a deployment checkpoint);
``meta`` is kept, but for the run's config text (mmengine's ``cfg``, mmcv's
``config``), which is rewritten as the twin's: SARHead unwrapped, ``sar``
out of ``custom_imports`` (mmengine's inferencers build the model from it
when given weights only, where ``sar`` may not be installed).
"""
import _venv  # first: re-runs under .venv if needed
import argparse
import os.path as osp
import pickle
import sys

_venv.import_sar_torch_only()
from sar.checkpoints import (  # noqa: E402
    read_checkpoint, sar_to_plain_config_text, sar_to_plain_state_dict,
    save_new_checkpoint)

# Where mmengine (mmseg 1.x) and mmcv 1.x (mmseg 0.x) keep the config text.
CONFIG_KEYS = ('cfg', 'config')


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
    notes = plain_config_in(meta)
    try:
        save_new_checkpoint(dict(meta=meta, state_dict=plain), args.out,
                            args.checkpoint, args.force)
    except FileExistsError as err:
        sys.exit(f'export_plain: {err}')
    dropped = len(state) - len(plain)
    print(f'wrote {args.out}: {len(plain)} tensors ({dropped} SAR entries '
          'dropped)')
    for note in notes:
        print(note)


def plain_config_in(meta):
    """Rewrite the config texts of ``meta`` as the twin's, in place.

    A text that cannot be rewritten is dropped rather than kept: kept, it
    would make stock mmseg build the SAR model (and import ``sar``) from a
    plain checkpoint. Returns what was done, for the user.
    """
    notes = []
    for key in CONFIG_KEYS:
        if not isinstance(meta.get(key), str):
            continue
        try:
            meta[key] = sar_to_plain_config_text(meta[key])
            notes.append(f"meta['{key}']: the config, SARHead unwrapped and "
                         'without sar in custom_imports')
        except ValueError as err:
            del meta[key]
            notes.append(f"meta['{key}'] dropped ({err}): give mmseg the "
                         "baseline twin's config with the exported weights")
    return notes


if __name__ == '__main__':
    main()
