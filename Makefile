# One-command set-up and entry points. Every target installs what it needs.
#   make install         .venv: exactly requirements/lock/mmseg0.txt (torch,
#                        mmseg 0.30, ...), mmcv-full 1.7.2 (built once,
#                        cached) and sar
#   make install-mmseg1  .venv-mmseg1: exactly requirements/lock/mmseg1.txt
#                        (torch, mmengine 0.10, mmseg 1.2, ...), mmcv 2.1.0
#                        (built once, cached) and sar
#   make install-onedl   .venv-onedl: exactly requirements/lock/onedl.txt
#                        (OneDL's maintained fork of mmseg 1.x: onedl-mmengine
#                        0.10, onedl-mmsegmentation 1.4, ...), onedl-mmcv
#                        2.3.6 (built once, cached) and sar
#   make lock            resolve requirements/lock/*.txt anew from the loose
#                        requirements (uv pip compile; tools/lock.sh)
#   make test            both environments, then both suites: tests/ on
#                        mmseg 0.30, tests/mmseg1x on mmseg 1.x
#   make test-onedl      tests/mmseg1x on OneDL's fork (.venv-onedl)
#   make test-all        make test, then make test-onedl
#   make demo            SAR against its baseline on DigitScenes-LT (generated
#                        once from scikit-learn's digits), mmseg 0.30
#   make demo-mmseg1     the same demo through mmseg 1.x's runner
#   make demo-transformers
#                        the same data: a small SegFormer, transformers'
#                        Trainer, with and without SAR (.venv)
#   make demo-smp        the same data: an smp FPN, a plain loop (.venv)
PY := .venv/bin/python
PY1 := .venv-mmseg1/bin/python
PY1O := .venv-onedl/bin/python
# pytest-xdist, one process per core; --dist loadfile keeps a file's tests
# (and the models its module fixtures train once) on one worker;
# --no-loadscope-reorder hands files out in tests/conftest.py's order,
# longest first.
PYTEST := -m pytest -n auto --dist loadfile --no-loadscope-reorder

.PHONY: install install-mmseg1 install-onedl lock test test-mmseg0 \
	test-mmseg1 test-onedl test-all demo demo-mmseg1 demo-transformers \
	demo-smp clean

install:
	bash tools/setup_env.sh

install-mmseg1:
	bash tools/setup_env_mmseg1.sh

install-onedl:
	SAR_MMSEG1_STACK=onedl bash tools/setup_env_mmseg1.sh

lock:
	bash tools/lock.sh

test: test-mmseg0 test-mmseg1

test-mmseg0: install
	$(PY) $(PYTEST) tests --ignore=tests/mmseg1x

test-mmseg1: install-mmseg1
	$(PY1) $(PYTEST) tests/mmseg1x

test-onedl: install-onedl
	$(PY1O) $(PYTEST) tests/mmseg1x

test-all: test test-onedl

demo: install
	$(PY) tools/demo.py

demo-mmseg1: install-mmseg1
	$(PY1) tools/demo.py

demo-transformers: install
	$(PY) tools/demo_hf_smp.py transformers

demo-smp: install
	$(PY) tools/demo_hf_smp.py smp

# What `make demo` and the benchmarks wrote, and nothing else: every run of
# tools/train.py lives under work_dirs/<config> and is the user's to delete.
clean:
	rm -rf work_dirs/demo work_dirs/demo-mmseg1 work_dirs/benchmark_accuracy \
		work_dirs/demo-transformers work_dirs/demo-smp \
		data/shapes data/digitscenes-lt .pytest_cache
