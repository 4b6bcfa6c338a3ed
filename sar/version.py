__version__ = '0.1.0'

# Ranges the mmseg 0.x glue is tested against; checked on import
# (sar.mmseg0x.compat).
SUPPORTED = {
    'torch': ('1.10', '3'),
    'mmcv': ('1.5.0', '1.8.0'),  # mmcv-full 1.x, as mmseg 0.30 requires
    'mmseg': ('0.30.0', '0.31.0'),
}
