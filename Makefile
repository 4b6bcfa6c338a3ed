# One-command set-up and entry points. Every target installs what it needs.
#   make install   virtualenv .venv with torch, mmcv-full (built once, cached), mmseg, sar
#   make test      install, then the test suite
#   make demo      install, then train and evaluate SAR on a small generated data set
PY := .venv/bin/python

.PHONY: install test demo clean

install:
	bash tools/setup_env.sh

test: install
	$(PY) -m pytest tests

demo: install
	$(PY) tools/demo.py

clean:
	rm -rf work_dirs data/demo .pytest_cache
