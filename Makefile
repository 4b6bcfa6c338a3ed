# One-command set-up and entry points. Every target installs what it needs.
#   make install   virtualenv .venv with torch, mmcv-full (built once, cached), mmseg, sar
#   make test      install, then the test suite
#   make demo      install, then train and evaluate SAR against its baseline on
#                  DigitScenes-LT (generated once from scikit-learn's digits)
PY := .venv/bin/python

.PHONY: install test demo clean

install:
	bash tools/setup_env.sh

test: install
	$(PY) -m pytest tests

demo: install
	@$(PY) -c 'import sklearn, matplotlib' 2>/dev/null || \
		$(PY) -m pip install -q -r requirements/demo.txt
	$(PY) tools/demo.py

# What `make demo` and the benchmarks wrote, and nothing else: every run of
# tools/train.py lives under work_dirs/<config> and is the user's to delete.
clean:
	rm -rf work_dirs/demo work_dirs/benchmark_accuracy data/shapes \
		data/digitscenes-lt .pytest_cache
