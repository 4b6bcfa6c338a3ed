"""SAR's diagnostics in Trainer's logs."""
from transformers import TrainerCallback

from .sar_model import pop_diagnostics


class SARLogCallback(TrainerCallback):
    """Adds SAR's means since the last log to each training log.

    ``Trainer(..., callbacks=[SARLogCallback()])``: every training log
    (the one with ``loss``) gains ``loss_sar_pull``, ``loss_sar_anchor_ce``
    (parts of ``loss``, not added again) and the ``sar.*`` diagnostics
    (:func:`sar.transformers.pop_diagnostics`). The console and the
    callbacks after this one see them; integrations that Trainer puts
    before the user's callbacks (TensorBoard, W&B) do not: log from the
    model with :func:`pop_diagnostics` there.
    """

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if logs is not None and 'loss' in logs and model is not None:
            logs.update(pop_diagnostics(model))
