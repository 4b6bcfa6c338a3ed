"""Test-only mmengine hook: kills its own process after iteration N.

The mmseg 1.x twin of ``sar_fault.py``. ``SARKillHook(at_iter=N)`` sends
SIGKILL after iteration N, after every other hook of that iteration (give
it ``priority='LOWEST'``: the checkpoint of iteration N is written first).
It kills once per work dir (a marker file there), so the resumed run goes
on.
"""
import os
import signal

from mmengine.hooks import Hook
from mmseg.registry import HOOKS


@HOOKS.register_module()
class SARKillHook(Hook):

    def __init__(self, at_iter):
        self.at_iter = at_iter

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        # runner.iter counts the iterations done before this one.
        marker = os.path.join(runner.work_dir, 'killed_once')
        if runner.iter + 1 == self.at_iter and not os.path.exists(marker):
            open(marker, 'w').close()
            os.kill(os.getpid(), signal.SIGKILL)
