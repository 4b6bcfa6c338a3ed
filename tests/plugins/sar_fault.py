"""Test-only mmcv hook: kills its own process at a chosen point of training.

``SARKillHook(at_iter=N)`` sends SIGKILL after iteration N (after every
other hook of that iteration, a checkpoint included); with
``during_save=True`` it kills while the checkpoint of iteration N is being
written, after half of its bytes reached the disk. It kills once per work
dir (a marker file there), so the resumed run goes on.
"""
import os
import signal

from mmcv.fileio.file_client import HardDiskBackend
from mmcv.runner import HOOKS, Hook


@HOOKS.register_module()
class SARKillHook(Hook):

    def __init__(self, at_iter, during_save=False):
        self.at_iter = at_iter
        self.during_save = during_save

    def _armed(self, runner):
        marker = os.path.join(runner.work_dir, 'killed_once')
        if runner.iter + 1 != self.at_iter or os.path.exists(marker):
            return False
        open(marker, 'w').close()
        return True

    def before_train_iter(self, runner):
        if self.during_save and self._armed(runner):
            def put_half_then_die(backend, obj, filepath):
                with open(filepath, 'wb') as f:
                    f.write(obj[:len(obj) // 2])
                    f.flush()
                    os.fsync(f.fileno())
                os.kill(os.getpid(), signal.SIGKILL)

            HardDiskBackend.put = put_half_then_die

    def after_train_iter(self, runner):
        if not self.during_save and self._armed(runner):
            os.kill(os.getpid(), signal.SIGKILL)
