# Two entry points (README): `make run` and `make test`. Everything else is a helper.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED ?= $(abspath ../shared)
# Weights are looked up here before torchvision would download anything.
export TORCH_HOME ?= $(SHARED)/torch
SAMPLE ?= sample-project
SAMPLE_SRC ?= $(SHARED)/datasets/clothing-small
PORT ?= 7860

.PHONY: run test install install-dev sample lint

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .

install-dev: $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'

# The sample project: the shared clothing photos (train+validation = pool, test = holdout).
sample: install
	@if [ ! -d "$(SAMPLE_SRC)" ]; then \
	  echo "No sample photos at $(SAMPLE_SRC): run 'make run SAMPLE_SRC=/path/to/photos' with a folder of class subfolders (or a flat folder)."; exit 2; fi
	@if [ ! -f "$(SAMPLE)/active.toml" ]; then \
	  $(BIN)/active init $(SAMPLE) --backbone mobilenet_v2 --weights IMAGENET1K_V1 && \
	  if [ -d "$(SAMPLE_SRC)/train" ]; then \
	    $(BIN)/active --project $(SAMPLE) import "$(SAMPLE_SRC)/train" && \
	    $(BIN)/active --project $(SAMPLE) import "$(SAMPLE_SRC)/validation" && \
	    $(BIN)/active --project $(SAMPLE) import "$(SAMPLE_SRC)/test" --split holdout; \
	  else $(BIN)/active --project $(SAMPLE) import "$(SAMPLE_SRC)"; fi; fi
	$(BIN)/active --project $(SAMPLE) status

run: sample
	$(BIN)/active --project $(SAMPLE) status

test: install-dev
	$(BIN)/python -m pytest -q

lint: install-dev
	$(BIN)/ruff check .
