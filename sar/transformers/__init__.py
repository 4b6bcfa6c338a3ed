"""SAR for Hugging Face transformers (imports transformers; import by name).

    from sar.transformers import add_sar, SARLogCallback
    model = add_sar(SegformerForSemanticSegmentation.from_pretrained(...))

See :mod:`sar.transformers.sar_model` for the contract.
"""
from .callback import SARLogCallback
from .sar_model import (SUPPORTED, SARDPTForSemanticSegmentation,
                        SARSegformerForSemanticSegmentation,
                        SARUperNetForSemanticSegmentation, add_sar,
                        check_supported, pop_diagnostics, remove_sar,
                        sar_class)

__all__ = [
    'add_sar', 'remove_sar', 'sar_class', 'check_supported',
    'pop_diagnostics', 'SARLogCallback', 'SUPPORTED',
    'SARSegformerForSemanticSegmentation',
    'SARUperNetForSemanticSegmentation', 'SARDPTForSemanticSegmentation'
]
