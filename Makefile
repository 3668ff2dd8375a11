# Two commands on a fresh machine: `make demo` and `make test`. Both set everything up, idempotently.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
FASHION_DIR := /usr/share/datasets/fashion-mnist

.PHONY: setup test test-slow demo data face-gan lint docs bench-speed bench-compile report-check clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first and alone, pinned, so no later package can pull another build.
$(VENV)/.torch: | $(PY)
	$(PIP) install -q torch==2.13.0
	@touch $@

$(VENV)/.package: pyproject.toml $(VENV)/.torch
	$(PIP) install -q -e '.[dev,gen,dp,flower,tune,peft]'
	@touch $@

# The face DCGAN's weights ship inside this wheel; --no-deps keeps its unpinned torchvision/wandb out.
$(VENV)/.face-gan: $(VENV)/.torch
	$(PIP) install -q --no-deps gan-face-generate==1.1.1
	@touch $@

data:
	@if [ -f $(FASHION_DIR)/t10k-images-idx3-ubyte.gz ] || [ -n "$$FEDINVERT_DATA" ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
		|| echo "warning: could not install dataset-fashion-mnist; fashion-mnist tests will be skipped"; \
	else \
		echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist' or set FEDINVERT_DATA to a folder holding the four IDX .gz files"; \
	fi

# ST-LPIPS weights (fedinvert.perceptual reads its .pth files, never its code, which imports torchvision).
$(VENV)/.st-lpips: $(VENV)/.torch
	$(PIP) install -q --no-deps stlpips-pytorch==0.0.2
	@touch $@

face-gan: $(VENV)/.face-gan

setup: $(VENV)/.package $(VENV)/.face-gan $(VENV)/.st-lpips data

test: setup
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" --durations=15

test-slow: setup
	$(PY) -m pytest -q -p no:cacheprovider -m slow

demo: setup
	$(PY) -m fedinvert demo

lint: setup
	$(PY) -m ruff check src tests benchmarks examples
	$(PY) -m mypy

# The documentation site, offline, into site/ (strict: a broken link or a docstring warning fails the build).
$(VENV)/.docs: pyproject.toml $(VENV)/.package
	$(PIP) install -q -e '.[docs]'
	@touch $@

docs: setup $(VENV)/.docs
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

bench-speed: setup
	$(PY) benchmarks/speed.py

bench-compile: setup
	$(PY) benchmarks/compile_cost.py

# The study report's tests, the page rendered in headless Chromium (installed here when root and absent).
report-check: setup
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && apt-get install -y -qq chromium) >/dev/null \
		|| echo "warning: could not install chromium; the browser check will be skipped"; \
	else \
		echo "chromium is missing: run 'sudo apt-get install chromium'; the browser check will be skipped"; \
	fi
	$(PY) -m pytest -q -p no:cacheprovider tests/report/test_study_report.py

clean:
	rm -rf $(VENV) runs site
