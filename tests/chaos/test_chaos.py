"""Chaos: seeded faults from the simulators during a kill; every trial ends flat, nothing left.

`KILLSWITCH_CHAOS_TRIALS` trials (default 30) run in `make test`, each on a fresh rig of the
three venue simulators with two accounts each; `KILLSWITCH_CHAOS_SEED` shifts the seeds for a
new batch. The seeds are taken in order from the base, skipping one only while it adds no kind
of trouble that is still short, so even a small batch covers every kind. A failing trial names
its seed and faults: `plan_trial(seed)` replays it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos.trials import FAULT_KINDS, TALLY, kind_counts, plan_trial, run_trial

TRIALS = int(os.environ.get("KILLSWITCH_CHAOS_TRIALS", "30"))
BASE_SEED = int(os.environ.get("KILLSWITCH_CHAOS_SEED", "20261120"))
# Each kind of trouble this many times, or as often as the batch allows.
PER_KIND = min(3, max(1, TRIALS // len(FAULT_KINDS)))


def covering_seeds(base: int, n: int) -> list[int]:
    """`n` seeds from `base` on, skipping a seed only while some kind is still short of
    `PER_KIND` and the seed adds none of those."""
    counts = dict.fromkeys(FAULT_KINDS, 0)
    seeds: list[int] = []
    seed = base
    while len(seeds) < n:
        kinds = plan_trial(seed).kinds
        short = [k for k in FAULT_KINDS if counts[k] < PER_KIND]
        if not short or any(k in short for k in kinds):
            seeds.append(seed)
            for kind in kinds:
                counts[kind] += 1
        seed += 1
    return seeds


SEEDS = covering_seeds(BASE_SEED, TRIALS)


def test_the_trials_cover_every_kind_of_trouble() -> None:
    counts = kind_counts([plan_trial(s) for s in SEEDS])
    assert all(counts[k] >= PER_KIND for k in FAULT_KINDS), counts


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
