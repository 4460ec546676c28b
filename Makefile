# The README's two commands. Both set themselves up on a fresh machine that has only Python 3
# and Debian's package manager.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint typecheck pytest setup system-deps bench clean

setup: $(STAMP) system-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# systemd-analyze checks the unit file; install it only where it is missing.
system-deps:
	@command -v systemd-analyze >/dev/null 2>&1 || { \
	  echo "installing systemd (for systemd-analyze)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null; }

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

pytest: setup
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

demo: setup
	$(BIN)/killswitch demo

bench: setup
	$(BIN)/python bench/sim_throughput.py
	$(BIN)/python bench/tracker_throughput.py
	$(BIN)/python bench/time_to_flat.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
