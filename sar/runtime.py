"""Small runtime helpers shared by the tools (device choice, CPU fallbacks)."""
import torch


def adapt_cfg_to_machine(cfg):
    """Make a GPU config runnable on the machine at hand, in place.

    - ``persistent_workers`` needs worker processes: off when
      ``workers_per_gpu`` is 0 (torch refuses the combination).
    - Without CUDA, distributed runs use gloo instead of NCCL.
    """
    data = cfg.get('data')
    if data is not None and data.get('workers_per_gpu', 2) == 0:
        data['persistent_workers'] = False
    if not torch.cuda.is_available():
        dist_params = cfg.get('dist_params') or {}
        if dist_params.get('backend', 'nccl') != 'gloo':
            dist_params['backend'] = 'gloo'
        cfg.dist_params = dist_params
    return cfg
