"""Test-only mmengine hook: records what each rank holds during training.

The mmseg 1.x twin of ``sar_rank_probe.py``. Imported by test configs
through ``custom_imports``; writes ``<work_dir>/rank<r>.pth`` at the end of
training with the log-variable keys of every iteration, its losses and
SAR's diagnostics, this rank's seed and the SAR state it holds (not the
checkpoint), and, as training starts (after a resume has loaded), the
iteration and the dynamic loss scale of an ``AmpOptimWrapper``.
"""
import os.path as osp

import torch
from mmengine.dist import get_dist_info
from mmengine.hooks import Hook
from mmseg.registry import HOOKS


@HOOKS.register_module()
class SARRankProbeHook(Hook):

    def __init__(self):
        self.keys = []
        self.losses = []
        self.diagnostics = []

    def before_train(self, runner):
        # The seed this rank was given (differs per rank with
        # randomness.diff_rank_seed), and the pre-defined anchors as the
        # first step finds them (DDP's wrapper has broadcast rank 0's).
        self.seed = runner.seed
        self.iter_at_start = runner.iter
        scaler = getattr(runner.optim_wrapper, 'loss_scaler', None)
        self.loss_scale_at_start = (
            float(scaler.get_scale()) if scaler is not None else None)
        self.init_anchors_at_start = {
            f'{i}': h.sar_loss.init_anchors.clone()
            for i, h in enumerate(self._heads(runner))
            if hasattr(h, 'sar_loss')}

    @staticmethod
    def _heads(runner):
        model = getattr(runner.model, 'module', runner.model)
        head = model.decode_head
        return head if isinstance(head, torch.nn.ModuleList) else [head]

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        self.keys.append(sorted(outputs))
        self.losses.append({k: float(v.detach()) for k, v in outputs.items()
                            if 'loss' in k})
        self.diagnostics.append({k: float(v.detach())
                                 for k, v in outputs.items() if 'sar.' in k})

    def after_train(self, runner):
        model = getattr(runner.model, 'module', runner.model)
        state = {f'{i}.{k}': v.detach().clone()
                 for i, h in enumerate(self._heads(runner))
                 if hasattr(h, 'sar_loss')
                 for k, v in h.sar_loss.state_dict().items()}
        norms = [type(m).__name__ for m in model.modules()
                 if 'BatchNorm' in type(m).__name__]
        rank, world = get_dist_info()
        torch.save(dict(rank=rank, world=world, keys=self.keys,
                        seed=self.seed, losses=self.losses, sar_state=state,
                        iter_at_start=self.iter_at_start,
                        loss_scale_at_start=self.loss_scale_at_start,
                        diagnostics=self.diagnostics,
                        init_anchors_at_start=self.init_anchors_at_start,
                        wrapper=type(runner.model).__name__,
                        norms=sorted(set(norms))),
                   osp.join(runner.work_dir, f'rank{rank}.pth'))
