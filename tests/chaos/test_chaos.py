"""Chaos: seeded faults from the simulators during a kill; every trial ends flat, nothing left.

`KILLSWITCH_CHAOS_TRIALS` trials (default 100) run in `make test`, each on a fresh rig of the
three venue simulators with two accounts each; `KILLSWITCH_CHAOS_SEED` shifts the seeds for a
new batch. A failing trial names its seed and faults: `plan_trial(seed)` replays it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos.trials import FAULT_KINDS, TALLY, kind_counts, plan_trial, run_trial

TRIALS = int(os.environ.get("KILLSWITCH_CHAOS_TRIALS", "100"))
BASE_SEED = int(os.environ.get("KILLSWITCH_CHAOS_SEED", "20261120"))
SEEDS = [BASE_SEED + i for i in range(TRIALS)]


def test_the_trials_cover_every_kind_of_trouble() -> None:
    counts = kind_counts([plan_trial(s) for s in SEEDS])
    if TRIALS >= 50:
        assert all(counts[k] >= 5 for k in FAULT_KINDS), counts


def test_a_trial_is_a_pure_function_of_its_seed() -> None:
    assert plan_trial(SEEDS[0]) == plan_trial(SEEDS[0])
    assert plan_trial(SEEDS[0]) != plan_trial(SEEDS[0] + 10_000)


@pytest.mark.parametrize("seed", SEEDS)
async def test_kill_under_chaos_ends_flat_with_nothing_left_and_no_418(
    seed: int, tmp_path: Path
) -> None:
    outcome = await run_trial(plan_trial(seed), tmp_path)
    TALLY.outcomes.append(outcome)
    assert outcome.ok, f"{outcome.trial.describe()}: {'; '.join(outcome.problems)}"
