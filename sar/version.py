__version__ = '0.2.0'

# Ranges the mmseg 0.x glue is tested against; checked on import
# (sar.mmseg0x.compat).
SUPPORTED = {
    'torch': ('1.10', '3'),
    'mmcv': ('1.5.0', '1.8.0'),  # mmcv-full 1.x, as mmseg 0.30 requires
    'mmseg': ('0.30.0', '0.31.0'),
}

# Ranges of the mmseg 1.x glue; checked on import (sar.mmseg1x.compat).
# mmcv up to 2.3 and mmseg up to 1.4 admit OneDL's maintained fork
# (onedl-mmcv 2.3, onedl-mmengine 0.10.x, onedl-mmsegmentation 1.4), which
# installs the same module names.
SUPPORTED_MMSEG1 = {
    'torch': ('1.10', '3'),
    'mmcv': ('2.1.0', '2.4.0'),
    'mmengine': ('0.10.0', '0.11.0'),
    'mmseg': ('1.2.0', '1.5.0'),
}


def version_tuple(text):
    """'2.14.1+cu130' -> (2, 14, 1); a pre-release ('2.0.0rc4') ends it."""
    parts = []
    for piece in text.split('+')[0].split('.'):
        digits = ''
        for char in piece:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        parts.append(int(digits))
        if digits != piece:
            break
    return tuple(parts)


def out_of_range(found, supported):
    """The packages whose version is outside its range, as messages.

    Args:
        found (dict): package name -> version string.
        supported (dict): package name -> (lowest, first unsupported).

    Returns:
        list[str]: ``'name==v (supported: >=low, <high)'``, one per package
        out of range.
    """
    bad = []
    for name, (low, high) in supported.items():
        if not version_tuple(low) <= version_tuple(found[name]) < \
                version_tuple(high):
            bad.append(f'{name}=={found[name]} (supported: >={low}, <{high})')
    return bad
