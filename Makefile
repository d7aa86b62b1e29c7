# Two commands a new user needs: `make train` and `make test`. Both set the project up first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.inpo-installed
export TORCHINDUCTOR_CACHE_DIR ?= $(CURDIR)/.cache/inductor
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions

.PHONY: setup train test test-gpu test-slow test-all bench games experiments experiments-winrate clean

setup: $(STAMP)

# torch==2.13.0 first when no torch is importable: a bare `torch` requirement would pull a multi-GB
# CUDA build on a CPU machine. GPU machines keep the torch they already have.
$(STAMP): pyproject.toml setup.py
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

# --overwrite: runs/default is this target's own run; `make train` again starts it afresh (a user's other runs are
# never replaced without it).
train: setup
	$(VENV)/bin/inpo train --output runs/default --overwrite

# pytest exits 5 when it collected nothing: a vanished suite is a failure, not a pass. The GPU is hidden so that
# the Triton kernels run under the interpreter on CPU (a process compiles them or interprets them, not both);
# `make test-gpu` runs the GPU tier (compiled kernels, bf16, big shapes).
test: setup
	@CUDA_VISIBLE_DEVICES= $(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests collected (pytest exit 5)" >&2; exit 1; fi; exit $$rc

test-gpu: setup
	@$(PY) -m pytest -q -m "gpu" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-gpu: no tests collected (pytest exit 5)" >&2; exit 1; fi; exit $$rc

test-slow: setup
	$(PY) -m pytest -q -m "slow" $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench.head
	$(PY) -m bench.step
	$(PY) -m bench.iteration
	$(PY) -m bench.report

# The tabular Nash-game sweeps whose output is committed under bench/results/games/.
games: setup
	$(PY) -m inpo.games.sweep --out bench/results/games

# Nash-level evidence on the LM: exploitability of INPO, INPO τ=0, ONPO, iterative DPO, IPO, SPPO over three oracle
# settings, tuned on validation prompts, 10/5 seeds (committed under bench/results/nash-lm/; hours on 2 cores,
# resumable). The older win-rate-vs-π_ref comparison: `make experiments-winrate`.
experiments: setup
	$(PY) -m bench.experiment_nash --out bench/results/nash-lm

experiments-winrate: setup
	$(PY) -m bench.experiment_default --out bench/results/experiments

clean:
	rm -rf $(VENV) .cache runs *.egg-info
