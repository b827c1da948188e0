# The two README commands are `make run` and `make test`; everything else is optional.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONSTRAINTS := requirements/constraints.txt

.PHONY: run test check lint typecheck fmt gen lock bench bench-instructions bench-soak-rss bench-abuse soak failover-nightly clean wheels release-dry-run

$(STAMP): pyproject.toml clients/python/pyproject.toml $(CONSTRAINTS)
	@$(PYTHON) -c 'import sys; sys.exit("Python >= 3.11 is required") if sys.version_info < (3, 11) else None'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c $(CONSTRAINTS) -e clients/python -e '.[dev]'
	touch $@

## run: start the server on the embedded Valkey (data under ./var)
run: $(STAMP)
	$(BIN)/tokenservice serve $(ARGS)

## test: the whole suite against real servers
test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

## check: lint, format check, strict typing, proto lint
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/buf lint
	$(BIN)/buf format --exit-code --diff proto

fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
	$(BIN)/buf format -w proto

## gen: regenerate the committed Python stubs from proto/
gen: $(STAMP)
	$(PY) scripts/gen_protos.py

## lock: re-resolve the pinned versions from pyproject ranges (needs network)
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q -e clients/python -e '.[dev]'
	.lock-venv/bin/pip freeze --all --exclude-editable | grep -v '^-e \|^pip==' > $(CONSTRAINTS)
	rm -rf .lock-venv

## wheels: build both distributions (server and tokenservice-client) into dist/
wheels: $(STAMP)
	$(PY) -m build --wheel --no-isolation --outdir dist clients/python
	$(PY) -m build --wheel --no-isolation --outdir dist .

## release-dry-run: print the next version (from conventional commits) and its changelog; changes nothing
release-dry-run: $(STAMP)
	@echo "next version: $$($(BIN)/cz bump --get-next --yes </dev/null)"
	@$(BIN)/cz bump --dry-run --yes </dev/null

## bench: throughput, latency, Redis round trips, CPU and RSS per scenario (docs/performance.md)
bench: $(STAMP)
	$(PY) -m bench $(ARGS)

## bench-instructions: instructions per RPC of the server under callgrind (repeatable; needs valgrind)
bench-instructions: $(STAMP)
	$(PY) -m bench.instructions $(ARGS)

## bench-soak-rss: server RSS growth over 5 minutes of Check at 70% of its peak
bench-soak-rss: $(STAMP)
	$(PY) -m bench --soak-only --soak 300 $(ARGS)

## bench-abuse: valid Check latency alone and under a flood of garbage-token Checks (limit 2x)
bench-abuse: $(STAMP)
	$(PY) -m bench.abuse_flood $(ARGS)

## failover-nightly: the failover suite with FAILOVERS (50) SIGKILL failovers instead of make test's 10
FAILOVERS ?= 50
failover-nightly: $(STAMP)
	TOKENSERVICE_FAILOVERS=$(FAILOVERS) $(BIN)/pytest tests/reliability/test_failover.py -p no:cacheprovider $(PYTEST_ARGS)

## soak: SOAK_SECONDS (600) of mixed load on Sentinel, a failover every SOAK_FAILOVER_EVERY (120)
soak: $(STAMP)
	$(PY) -m bench.soak

clean:
	rm -rf $(VENV) build dist *.egg-info
