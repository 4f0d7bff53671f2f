# The two commands of the README, and exactly what CI runs (.ci/run calls `make test`).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: sim test lint setup clean

$(STAMP): pyproject.toml tests/opcua_node/package-lock.json
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,train]'
	# A second OPC UA implementation for the HMI's tests (node-opcua), where Node.js is installed.
	if command -v npm >/dev/null; then npm ci --prefix tests/opcua_node --no-audit --no-fund --loglevel=error; fi
	touch $(STAMP)

setup: $(STAMP)

## Run the whole simulated line (2000 parts) and print the judge's summary.
sim: $(STAMP)
	$(BIN)/lineinspect sim --parts $(or $(PARTS),2000) --json runs/latest/summary.json

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

RAY_TESTS := tests/contract/test_inference_service.py tests/integration/test_ray_cluster.py

## Lint, type-check, architecture contracts, then the whole test suite (the tests that start Ray in
## the test process run in a pytest process of their own: its native threads outlive ray.shutdown).
test: lint
	$(BIN)/pytest -q $(addprefix --ignore=,$(RAY_TESTS))
	$(BIN)/pytest -q $(RAY_TESTS)

clean:
	rm -rf $(VENV) runs
