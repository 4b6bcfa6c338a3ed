from .sar_head import SARHead
from .sar_loss import SemanticAnchorLoss

__all__ = ['SARHead', 'SemanticAnchorLoss']
