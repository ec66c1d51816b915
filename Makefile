# `make test` and `make demo` set everything up on a fresh machine: .venv is created on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: test test-deploy demo fmnist wheel gpu-check clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# Fashion-MNIST from Debian when apt-get is usable as root; otherwise attnzoo finds a copy or downloads it.
fmnist:
	@if [ ! -d $(FMNIST) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null)) || \
		echo "could not install dataset-fashion-mnist; attnzoo will look elsewhere"; \
	fi

test: $(STAMP) fmnist
	$(PY) -m ruff check attnzoo tests benchmarks examples
	$(PY) -m pytest -q -n 2 --durations=15 -m "not deploy_full" tests

# export, ONNX and compile of every registered model (make test runs them on one model per custom op)
test-deploy: $(STAMP)
	$(PY) -m pytest -q -n 2 --durations=15 -m deploy_full tests/test_deploy.py

demo: $(STAMP) fmnist
	$(VENV)/bin/attnzoo demo

wheel: $(STAMP)
	$(PY) -m build --wheel --outdir dist

gpu-check: $(STAMP)
	bash benchmarks/gpu_check.sh

clean:
	rm -rf $(VENV) dist build *.egg-info
