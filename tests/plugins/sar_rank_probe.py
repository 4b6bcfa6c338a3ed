"""Test-only mmcv hook: records what each rank holds during training.

Imported by test configs through ``custom_imports``; writes
``<work_dir>/rank<r>.pth`` at the end of the run with the log-variable keys
of every iteration and the SAR state seen by that rank (not the checkpoint).
"""
import os.path as osp

import torch
from mmcv.runner import HOOKS, Hook, get_dist_info


@HOOKS.register_module()
class SARRankProbeHook(Hook):

    def __init__(self):
        self.keys = []
        self.losses = []
        # The seed this rank was given (differs per rank under --diff_seed).
        self.seed = torch.initial_seed()

    def after_train_iter(self, runner):
        log_vars = runner.outputs['log_vars']
        self.keys.append(sorted(log_vars))
        self.losses.append({k: v for k, v in log_vars.items()
                            if 'loss' in k})

    def after_run(self, runner):
        model = runner.model
        model = getattr(model, 'module', model)
        head = model.decode_head
        heads = head if isinstance(head, torch.nn.ModuleList) else [head]
        state = {f'{i}.{k}': v.detach().clone()
                 for i, h in enumerate(heads) if hasattr(h, 'sar_loss')
                 for k, v in h.sar_loss.state_dict().items()}
        rank, world = get_dist_info()
        torch.save(dict(rank=rank, world=world, keys=self.keys,
                        seed=self.seed,
                        losses=self.losses, sar_state=state),
                   osp.join(runner.work_dir, f'rank{rank}.pth'))
