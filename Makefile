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

# The sample project: the shared clothing photos (train+validation = pool, test = holdout),
# scored with mobilenet_v2, a first head, a first round, disputes to review, and a local reviewer demo
# whose random password is printed once and kept in $(SAMPLE)/demo-password (mode 0600).
# Each step is skipped or resumed when it already ran, so `make run` is cheap the second time.
ACTIVE := $(BIN)/active --project $(SAMPLE)

sample: install
	@if [ ! -d "$(SAMPLE_SRC)" ]; then \
	  echo "No sample photos at $(SAMPLE_SRC): run 'make run SAMPLE_SRC=/path/to/photos' with a folder of class subfolders (or a flat folder)."; exit 2; fi
	@if [ ! -f "$(SAMPLE)/active.toml" ]; then \
	  $(BIN)/active init $(SAMPLE) --backbone mobilenet_v2 --weights IMAGENET1K_V1; fi
	@if [ -d "$(SAMPLE_SRC)/train" ]; then \
	  $(ACTIVE) import "$(SAMPLE_SRC)/train" && \
	  $(ACTIVE) import "$(SAMPLE_SRC)/validation" && \
	  $(ACTIVE) import "$(SAMPLE_SRC)/test" --split holdout; \
	else $(ACTIVE) import "$(SAMPLE_SRC)"; fi
	$(ACTIVE) score
	@if [ "$$($(ACTIVE) --json status | $(BIN)/python -c 'import json,sys; print(len(json.load(sys.stdin)["model_versions"]))')" -lt 2 ]; then \
	  $(ACTIVE) retrain --mode head; fi
	@if [ "$$($(ACTIVE) --json status | $(BIN)/python -c 'import json,sys; print(len(json.load(sys.stdin)["open_rounds"]))')" -eq 0 ]; then \
	  $(ACTIVE) select --batch 100; fi
	@if [ "$$($(ACTIVE) --json status | $(BIN)/python -c 'import json,sys; print(sum(json.load(sys.stdin)["open_disputes"].values()))')" -eq 0 ]; then \
	  $(ACTIVE) disputes --refresh --limit 5; fi
	@# No shipped password: a random one, made once (also replacing a demo user of older versions).
	@if [ ! -s "$(SAMPLE)/demo-password" ]; then \
	  (umask 077; $(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(12))' > "$(SAMPLE)/demo-password") && \
	  { $(ACTIVE) users add demo --role reviewer < "$(SAMPLE)/demo-password" || { rm -f "$(SAMPLE)/demo-password"; exit 1; }; } && \
	  echo "demo user: demo, password: $$(cat "$(SAMPLE)/demo-password") (kept in $(SAMPLE)/demo-password)"; fi
	$(ACTIVE) status

run: sample
	@echo "Labeller on http://127.0.0.1:$(PORT)  (user demo, password in $(SAMPLE)/demo-password; Ctrl-C stops it)"
	$(ACTIVE) serve --port $(PORT)

test: install-dev
	$(BIN)/python -m pytest -q

lint: install-dev
	$(BIN)/ruff check .
