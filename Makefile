# The README's two commands. Both set themselves up on a fresh machine that has only Python 3
# and Debian's package manager.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Lint what exists: bench/ arrives with the benchmarks.
LINT_PATHS := $(wildcard src tests bench)

.PHONY: test test-fast demo lint typecheck pytest setup system-deps bench clean

setup: $(STAMP) system-deps

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  echo "installing python3-venv (Debian splits venv/ensurepip out of python3)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# systemd-analyze checks the unit file; install it only where it is missing.
system-deps:
	@command -v systemd-analyze >/dev/null 2>&1 || { \
	  echo "installing systemd (for systemd-analyze)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null; }
	@# promtool checks contrib/prometheus/alerts.yml; where Debian's prometheus package cannot be
	@# installed, tests/integration/test_contrib.py parses the rules instead.
	@command -v promtool >/dev/null 2>&1 || { \
	  echo "installing prometheus (for promtool)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends prometheus >/dev/null; } \
	  || echo "promtool not installable here: the rules test parses the file instead"; }

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

# Two pytest-xdist workers; each starts its own broker (or shares KILLSWITCH_TEST_KAFKA: topics
# and groups are unique per test). PYTEST_WORKERS=0 runs the suite in one process.
PYTEST_WORKERS ?= 2

pytest: setup
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal

# lint and typecheck run alongside pytest (one core for ~10 s on a fresh clone, while pytest
# mostly waits); their output follows pytest's, and a failure of either fails `make test`.
CHECKS_LOG := $(VENV)/checks.log

test: setup
	@$(MAKE) --no-print-directory lint typecheck >$(CHECKS_LOG) 2>&1 & checks=$$!; \
	$(MAKE) --no-print-directory pytest; tests=$$?; \
	wait $$checks; checked=$$?; \
	echo "--- lint and typecheck (ran alongside pytest) ---"; cat $(CHECKS_LOG); \
	[ $$checked -eq 0 ] || echo "make test: lint or typecheck FAILED (output above)"; \
	[ $$tests -eq 0 ] || echo "make test: pytest FAILED"; \
	[ $$checked -eq 0 ] && [ $$tests -eq 0 ]

# The edit-run loop: lint, types and the unit and contract tests, without subprocesses, the
# broker, the chaos trials or the model checker (`make test` runs all of it).
test-fast: lint typecheck
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal -m "not slow and not kafka" tests/unit tests/integration/test_contract.py

demo: setup
	$(BIN)/killswitch demo

# The benches' JSON goes under the venv (not committed); the picture to docs/numbers.png.
BENCH_OUT := $(VENV)/bench-results

bench: setup bench-extra
	$(BIN)/python bench/sim_throughput.py
	$(BIN)/python bench/tracker_throughput.py
	@mkdir -p $(BENCH_OUT)
	$(BIN)/python bench/time_to_flat.py --json $(BENCH_OUT)/time_to_flat.json
	$(BIN)/python bench/scale.py --json $(BENCH_OUT)/scale.json
	$(BIN)/python bench/plot.py --ttf $(BENCH_OUT)/time_to_flat.json \
	  --scale $(BENCH_OUT)/scale.json --out docs/numbers.png

bench-scale: setup
	$(BIN)/python bench/scale.py

# matplotlib draws the picture; nothing else needs it.
bench-extra: setup
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
