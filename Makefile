# The README's two commands are `make demo` and `make test`; both set everything up first.
PY_SYS  ?= python3.11
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# The CPU torch wheel lies on disk on our machines; elsewhere PyTorch's CPU index serves it.
TORCH_SRC := $(if $(wildcard /opt/wheels/torch-2.13.0*),--find-links /opt/wheels,--index-url https://download.pytorch.org/whl/cpu)
THREADS ?= 2

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SRC) "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev,distributed]"
	touch $(STAMP)

demo: setup
	OMP_NUM_THREADS=$(THREADS) $(VENV)/bin/rankadaptor demo

# Fast suite (tiny models built in code) plus the slow end-to-end tests on the real default model.
test: setup
	OMP_NUM_THREADS=$(THREADS) $(PY) -m pytest -q

test-fast: setup
	OMP_NUM_THREADS=$(THREADS) $(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
