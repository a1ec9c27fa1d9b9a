# Two commands do all set-up on a fresh machine: `make demo` and `make test` (both create .venv on first use).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_OUT ?= demo-out
# torch is pinned in the same pip command as the rest: an unpinned resolve pulls a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
PIP_FILTER := { grep -v "is ignored" || true; }

OLAH_VENV ?= .venv-olah
OLAH_STAMP := $(OLAH_VENV)/.installed-stamp

.PHONY: demo test test-unit test-gpu lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 2>&1 | $(PIP_FILTER)
	$(BIN)/python -m pip install -q "$(TORCH_PIN)" -e ".[train,dev]" 2>&1 | $(PIP_FILTER)
	touch $(STAMP)

# olah (the local Hub-compatible server the download tests run against) lives in its own venv: its
# dependencies would move packages our venv pins.
$(OLAH_STAMP):
	test -x $(OLAH_VENV)/bin/python || $(PYTHON) -m venv $(OLAH_VENV)
	$(OLAH_VENV)/bin/python -m pip install -q "olah==0.5.4" 2>&1 | $(PIP_FILTER)
	touch $(OLAH_STAMP)

demo: $(STAMP)
	$(BIN)/sgt-data build proxies --input examples/sa1b --output $(DEMO_OUT)/proxies
	$(BIN)/sgt-data show $(DEMO_OUT)/proxies --out $(DEMO_OUT)/contact_sheet.png
	$(BIN)/sgt-data build llava-ov --source examples/llava_ov --pipeline llava_ov_sample --output $(DEMO_OUT)/vqa

test: $(STAMP) $(OLAH_STAMP)
	$(BIN)/python -m pytest -q -m "not gpu"

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not gpu and not integration"

test-gpu: $(STAMP)
	$(BIN)/python -m pytest -q -m gpu

lint: $(STAMP)
	$(BIN)/ruff check sgt_data tests benchmarks examples
	$(BIN)/ruff format --check sgt_data tests benchmarks examples

format: $(STAMP)
	$(BIN)/ruff format sgt_data tests benchmarks examples
	$(BIN)/ruff check --fix sgt_data tests benchmarks examples

clean:
	rm -rf $(DEMO_OUT) .pytest_cache .ruff_cache build dist
