# `make test` and `make demo` are the whole set-up on a fresh machine: each creates .venv and
# installs the project into it when needed, with every extra (`.[dev]`: serve, train, onnx and
# the test tools; torch 2.14.1 / torchvision 0.29.1 come from the machine's local wheels when
# present).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test test-fast lint format demo serve base-model bench k8s clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check "setuptools>=77,<81" wheel
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -ra

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not slow"

demo: $(STAMP)
	$(BIN)/python -m demo run --output runs/demo

# The search service on the demo's towers (override with TEXT_TOWER=..., VISION_TOWER=..., see
# flow.yml) and its search page (http://127.0.0.1:51002, UI_PORT=... to move it): the Flow runs
# in the background in its own process group, the page in the foreground once the Flow answers;
# Ctrl-C (or the page stopping) stops both.
serve: SHELL := /bin/bash
serve: $(STAMP)
	@set -m; $(BIN)/jina flow --uses flow.yml & flow=$$!; \
	trap 'kill -INT -- -$$flow 2>/dev/null; wait $$flow' EXIT; trap 'exit 130' INT TERM; \
	host=grpc://127.0.0.1:$${GRPC_PORT:-51000}; \
	echo "waiting for the Flow ($$host) ..."; \
	for i in $$(seq 300); do \
	  kill -0 $$flow 2>/dev/null || { echo "the Flow exited, see above" >&2; exit 1; }; \
	  $(BIN)/python -m client --host $$host --timeout 5 status >/dev/null 2>&1; st=$$?; \
	  [ $$st -eq 0 ] && break; [ $$st -ge 128 ] && exit $$st; \
	  sleep 1 || exit 130; \
	done; \
	$(BIN)/python -m client --host $$host ui

# Only the search page, for a Flow already running (SEARCH_HOST=grpc://HOST:PORT to point it).
.PHONY: ui
ui: $(STAMP)
	$(BIN)/python -m client ui

# Rebuilds the committed base model (demo/assets/base-model) from random init.
base-model: $(STAMP)
	$(BIN)/python -m demo base-model

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_index.py
	$(BIN)/python benchmarks/bench_filter.py
	$(BIN)/python benchmarks/bench_flow.py
	$(BIN)/python benchmarks/bench_encoders.py
	$(BIN)/python benchmarks/bench_load.py

# Kubernetes manifests of the scaled service (flow.scaled.yml) in k8s/, written anew by jina's
# export: `make k8s IMAGE=registry.example.com/clip-search:1` (the Dockerfile's image, pushed
# where the cluster pulls from); more options in K8S_ARGS (python -m deploy.kubernetes --help),
# e.g. K8S_ARGS="--set TEXT_TOWER=/models/clip-text --monitoring". See docs/kubernetes.md.
IMAGE ?= clip-search:latest
k8s: $(STAMP)
	rm -rf k8s
	$(BIN)/python -m deploy.kubernetes --output k8s --image $(IMAGE) $(K8S_ARGS)

clean:
	rm -rf runs/demo .pytest_cache
