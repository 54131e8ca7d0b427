# One-liners a newcomer can read. Everything runs inside .venv, created from uv.lock.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.8
UV := .tools/bin/uv
VENV := .venv

export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# This machine sets PYTHONDONTWRITEBYTECODE; without compiled bytecode `import tensorflow` takes ~20 s.
export UV_COMPILE_BYTECODE := 1
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/$(VENV)
export DVC_NO_ANALYTICS := 1
export PYTHONPATH := $(CURDIR)

.PHONY: help setup system-deps run experiments test test-fast bench bench-scale ui serve container-test fuzz soak infra-up infra-down clean

.DEFAULT_GOAL := help

## help: this list (each target's `## target: description` comment)
help:
	@sed -n 's/^## \([^:]*\): \(.*\)/\1\t\2/p' $(MAKEFILE_LIST) | awk -F'\t' '{printf "  make %-16s %s\n", $$1, $$2}'

## setup: create .venv from the lock file (uv, bytecode compiled)
setup: $(VENV)/.synced

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen --quiet
	touch $@

## system-deps: the Debian packages the tests drive for real (Chromium, PostgreSQL, podman); needs root
system-deps:
	bash scripts/install-system-deps.sh

## run: the whole pipeline (generate -> split -> tune -> train -> evaluate -> package)
run: setup
	dvc repro

## experiments: `dvc exp show` narrowed to what tells runs apart: the model's test metrics, the tuned settings, changed params
# Columns: the protected (--keep) ones always; of the rest only params and metrics that differ between the rows, without
# file hashes (paths), baselines and the secondary interval figures, which would push the model's metrics off-screen.
experiments: setup
	@dvc exp show --no-pager --only-changed --drop '.*/|baseline_|model\.(mae|interval_)|versions\.served' \
		--keep '^(model\.(rmse|r2|noise_floor_ratio|accuracy|log_loss|f1)|units_1|units_2|activation|learning_rate)$$' $(EXP_ARGS)

## test: the full test suite (unit, end-to-end, service, browser, container); installs what it drives
# One worker per core; a file's tests stay on one worker (so a module's server or image is built once), heaviest files first: tests/conftest.py.
test: setup system-deps
	pytest -n auto --dist loadfile --no-loadscope-reorder

## test-fast: unit tests only (no pipeline runs, no servers)
test-fast: setup
	pytest -m "not slow" -n auto --dist loadfile --no-loadscope-reorder

## bench: side-by-side figures, printed as tables: training speed, tuned quality, data sets
bench: setup
	python bench/train_speed.py
	python bench/quality.py
	python bench/datasets.py

## bench-scale: the whole dvc repro on 10k, 100k and 1M rows against HistGradientBoosting (about 20 min on 2 cores)
bench-scale: setup
	python bench/scale.py $(SCALE_ARGS)

## serve: serve the bento `make run` built (models/bento.json) on http://127.0.0.1:3000 (POST /predict, GET /metadata)
serve: setup
	@test -f models/bento.json || { echo "error: no bento yet (models/bento.json): run 'make run' first" >&2; exit 2; }
	BENTOML_HOME=$(CURDIR)/bentoml bentoml serve "$$(python -c 'import json; print(json.load(open("models/bento.json"))["bento"])')" \
		--host 127.0.0.1 --port $${PORT:-3000}

## ui: the MLflow UI on the project's own store
ui: setup
	bash scripts/mlflow-ui.sh

## container-test: build the serving image and test it under podman (installs podman etc. if missing; needs root)
container-test: setup system-deps
	scripts/container-test.sh

## fuzz: fuzz the service from its own OpenAPI spec (schemathesis, ~6,700 cases): cases / 5xx / schema violations
fuzz: setup
	scripts/fuzz.sh $(FUZZ_ARGS)

## soak: 5 min of single-row load at concurrency 64 with ~2 % bad requests; pass = no unexpected status, RSS growth < 10 %
soak: setup
	nice -n 10 python bench/soak.py $(SOAK_ARGS)

## infra-up: PostgreSQL + an MLflow tracking server on 127.0.0.1 (data in .cache/infra); prints what to export
infra-up: setup
	bash scripts/install-postgres.sh
	bash scripts/infra.sh up

## infra-down: stop both (their data stays in .cache/infra)
infra-down:
	bash scripts/infra.sh down

## service/requirements.txt: the hash-locked serving set, exported from uv.lock
service/requirements.txt: uv.lock | $(UV)
	$(UV) export --only-group serve --no-emit-project --format requirements-txt --quiet -o $@

## clean: delete every pipeline output and the local MLflow, Optuna and DVC caches (`make run` rebuilds them)
clean:
	rm -rf data models plots metrics mlflow.db mlartifacts optuna.db bentoml .dvc/tmp .dvc/cache
