"""What a bare ``python -m pytest`` in the checkout collects (setup.cfg's
testpaths); both suites check that it is their own."""
import os.path as osp
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def bare_collection():
    """The test ids a bare pytest collects with this Python; asserts that
    collection succeeded."""
    proc = subprocess.run(
        [sys.executable, '-m', 'pytest', '--collect-only', '-q',
         '-p', 'no:cacheprovider'], cwd=ROOT, capture_output=True,
        text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [line for line in proc.stdout.splitlines() if '::' in line]
