"""Checkpoint conversion and weights-only loading (torch and numpy only).

No mmcv, mmseg or mmengine here, so the export tools run wherever torch
does, whatever mmseg generation (if any) is installed.
"""
from .config_text import sar_to_plain_config_text
from .convert import (is_sar_state_dict, official_to_sar_state_dict,
                      read_checkpoint, sar_to_plain_state_dict,
                      save_new_checkpoint)
from .safe_load import (UnreadRecord, allow_numpy_in_checkpoints,
                        allow_records_in_checkpoints, load_weights_only,
                        numpy_safe_globals, record_safe_globals)

__all__ = [
    'is_sar_state_dict', 'sar_to_plain_state_dict', 'sar_to_plain_config_text',
    'official_to_sar_state_dict', 'read_checkpoint', 'save_new_checkpoint',
    'load_weights_only', 'allow_numpy_in_checkpoints', 'numpy_safe_globals',
    'allow_records_in_checkpoints', 'record_safe_globals', 'UnreadRecord'
]
