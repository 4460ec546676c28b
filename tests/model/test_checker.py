"""The model checker: random histories of the daemon against the kill's promises.

Budget: `KILLSWITCH_MODEL_HISTORIES` histories (default 150, always the same ones, so `make
test` is repeatable); with the variable set, hypothesis draws fresh histories every run.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.internal.conjecture import engine as conjecture
from hypothesis.stateful import run_state_machine_as_test

from tests.model.machine import TALLY, KillHistory

DEFAULT_HISTORIES = 150
STEPS = 30
# In `make test`, a failure is shrunk for at most this long (hypothesis's own cap is 300 s):
# the history it reports may then be a little longer than the shortest.
SHRINK_S = 45


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
    shrink_s = getattr(conjecture, "MAX_SHRINKING_SECONDS", None)
    if budget is None and shrink_s is not None:
        conjecture.MAX_SHRINKING_SECONDS = SHRINK_S
    TALLY.counting = True
    try:
        run_state_machine_as_test(KillHistory, settings=config)
    except BaseException:
        TALLY.violations += 1
        raise
    finally:
        TALLY.counting = False
        if shrink_s is not None:
            conjecture.MAX_SHRINKING_SECONDS = shrink_s
        print(TALLY.line())
