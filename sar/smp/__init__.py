"""SAR for segmentation_models.pytorch (imports smp; import by name).

    from sar.smp import SARModel
    model = SARModel(smp.FPN('resnet34', classes=11), ignore_index=255)

See :mod:`sar.smp.sar_model` for the contract and the classifier decision.
"""
from .sar_model import SARModel, classify_constant_map, find_layout

__all__ = ['SARModel', 'classify_constant_map', 'find_layout']
