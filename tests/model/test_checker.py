"""The model checker: random histories of the daemon against the kill's promises.

Budget: `KILLSWITCH_MODEL_HISTORIES` histories (default 150, always the same ones, so `make
test` is repeatable); with the variable set, hypothesis draws fresh histories every run.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from tests.model.machine import TALLY, KillHistory

DEFAULT_HISTORIES = 150
STEPS = 30


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_random_histories_keep_every_promise(quiet_logs: None) -> None:
    """Every promise holds after every step of every drawn history, and at rest after it."""
    budget = os.environ.get("KILLSWITCH_MODEL_HISTORIES")
    histories = int(budget) if budget else DEFAULT_HISTORIES
    config = settings(
        max_examples=histories,
        stateful_step_count=STEPS,
        deadline=None,
        derandomize=budget is None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    TALLY.counting = True
    try:
        run_state_machine_as_test(KillHistory, settings=config)
    except BaseException:
        TALLY.violations += 1
        raise
    finally:
        TALLY.counting = False
        print(TALLY.line())
