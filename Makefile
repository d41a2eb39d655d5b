# userlayer: set-up, checks, tests, demo. Every target installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.userlayer-installed
# torch is pinned to the CPU wheel available on the build machines; install it
# first so that no other requirement pulls a CUDA build. Every other exact
# version comes from constraints.txt (the published extras keep ranges).
TORCH_PIN := torch==2.13.0
CONSTRAINTS := constraints.txt

.PHONY: setup lock lint typecheck test test-fast demo fuzz soak audit bench-quick gpu-bundle clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e ".[all,dev]" $(TORCH_PIN)
	touch $(STAMP)

# Rewrite constraints.txt from the working .venv (after changing a dependency).
lock: setup
	{ echo "# Exact versions the project is tested with: \`make setup\` installs with \`-c constraints.txt\`."; \
	  echo "# Regenerate from a working .venv: make lock. The published extras keep ranges."; \
	  $(PY) -m pip freeze --exclude-editable | grep -viE '^(userlayer|-e )' | sed 's/+cpu$$//'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy cannot follow setuptools' editable import hook, so it checks a tree of
# symlinks named like the installed packages.
typecheck: setup
	mkdir -p build/typecheck/userlayer
	for p in sdk edge cloud tools; do ln -sfn ../../../$$p build/typecheck/userlayer/$$p; done
	cd build/typecheck && ../../$(VENV)/bin/mypy --config-file ../../pyproject.toml -p userlayer

test: setup lint typecheck
	$(PY) -m pytest tests --durations=20

test-fast: setup
	$(PY) -m pytest tests -m "not slow" -x -q

demo: setup
	$(VENV)/bin/userlayer demo

# The long versions of the bounded fuzz and soak tests that `make test` runs.
fuzz: setup
	USERLAYER_FUZZ_EXAMPLES=10000 USERLAYER_FUZZ_API_EXAMPLES=2500 $(PY) -m pytest -q -s \
		--hypothesis-show-statistics tests/sdk/test_adapter_fuzz.py \
		tests/tools/data/test_loaders_fuzz.py tests/cloud/test_api_schemathesis.py

soak: setup
	USERLAYER_SOAK_REQUESTS=20000 $(PY) -m pytest -q -s tests/cloud/test_soak.py

# The membership-inference audit on the demo's base and data (makes them first if missing).
audit: setup
	test -f artifacts/demo/model/config.json || $(VENV)/bin/userlayer demo
	mkdir -p build
	$(VENV)/bin/userlayer audit --data artifacts/demo/data --model artifacts/demo/model \
		--json build/audit.json

bench-quick: setup
	$(VENV)/bin/userlayer bench all --quick --json build/bench-quick.json

# What tools/gpu_check.sh needs on a lent GPU machine (it has Python and PyTorch only):
# the base model MODEL and wheels of the other runtime packages for Python 3.11-3.13.
MODEL ?= artifacts/demo/model
GPU_WHEELS := httpx pydantic pydantic-settings cryptography typer rich fastapi uvicorn \
	prometheus-client safetensors
gpu-bundle: setup
	test -f $(MODEL)/config.json || { echo "no model in $(MODEL): make demo or MODEL=dir"; exit 1; }
	rm -rf .gpu_bundle && mkdir -p .gpu_bundle/model .gpu_bundle/wheels
	cp $(MODEL)/config.json $(MODEL)/model.safetensors $(MODEL)/sids.json .gpu_bundle/model/
	printf '%s\n' $(GPU_WHEELS) > .gpu_bundle/wheels/requirements.txt
	for v in 3.11 3.12 3.13; do $(PY) -m pip download -q --only-binary=:all: --python-version $$v \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .gpu_bundle/wheels \
		-r .gpu_bundle/wheels/requirements.txt || exit 1; done
	du -sh .gpu_bundle

clean:
	rm -rf build dist artifacts .mypy_cache .pytest_cache .ruff_cache .gpu_bundle gpu_out
