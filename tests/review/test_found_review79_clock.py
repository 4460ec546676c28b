"""Review 79, finding 2: a wall clock that went back across a restart stretched every remembered
venue limit, without any cap.

`venue-limits.json` keeps waits as wall-clock ends and charges as wall-clock times, and the next
life read them against its own wall clock. Set back 30 days, it held a MEXC throttle of 60 s
for 30 days (`in_force_s=2592051`): the next kill on MEXC ended failed with nothing cancelled.
Every time read back is now taken relative to when the file was written: a wait holds no
longer than it had left then (nor than `MAX_WAIT_S`), less the time since; a charge or an
error answer counts no longer than its window from then. A clock that went forward forgets.

Each life has its own clocks: a wall clock, and a monotonic one that starts afresh at boot.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from killswitch.exchanges import limits_file
from killswitch.exchanges.base import Priority
from killswitch.exchanges.binance.connector import RATE_LIMITS as BINANCE_LIMITS
from killswitch.exchanges.bingx.rest import IpBan
from killswitch.exchanges.bingx.venue import ERROR_LOCK_WINDOW_S, OPEN_ORDERS
from killswitch.exchanges.budget import ErrorCounter, RateBudget
from killswitch.exchanges.dialect import MAX_WAIT_S
from killswitch.exchanges.mexc.connector import MEXC_RATE_LIMITS
from killswitch.exchanges.rest import EndpointCharges
from killswitch.exchanges.sliding_budget import SlidingBudget

DAY_S = 24 * 3600.0
WRITTEN_AT = 1_800_000_000.0  # life 1's wall clock when it ends and writes the file
WAIT_S = 60.0  # what the venue said to wait, just before the file was written
CANCEL = "DELETE /api/v3/openOrders"


@dataclass
class Life:
    """One process's clocks."""

    wall_s: float
    mono_s: float

    def wall(self) -> float:
        return self.wall_s

    def mono(self) -> float:
        return self.mono_s

    def advance(self, seconds: float) -> None:
        self.wall_s += seconds
        self.mono_s += seconds


@dataclass(frozen=True)
class Kind:
    """A kind of state the venues hold against us: how one is made, how the venue imposes it in
    the first life, how long it holds requests now, and the most it may hold when read back
    at once (a wait: what the venue said; a charge or an error: its window)."""

    name: str
    make: Callable[[Life], Any]
    impose: Callable[[Any, Life], None]
    held_s: Callable[[Any], float]
    most_s: float


def _mexc(life: Life) -> EndpointCharges:
    return EndpointCharges(MEXC_RATE_LIMITS, clock=life.wall)


def _mexc_charges(charges: EndpointCharges, life: Life) -> None:
    # every weight a kill may spend on the endpoint in its 10 s, landed just now (its budget
    # slides on the process's monotonic clock)
    budget = charges.budget(CANCEL)
    weight = int(budget.cap(Priority.KILL))
    budget._slide.append((budget.mono() + MEXC_RATE_LIMITS.window_s + 0.1, weight))


def _binance(life: Life) -> RateBudget:
    return RateBudget(BINANCE_LIMITS, clock=life.wall, mono=life.mono)


def _bingx_ban(life: Life) -> IpBan:
    return IpBan(clock=life.mono)


def _banned(ban: IpBan, life: Life) -> None:
    ban.until = life.mono() + WAIT_S
    ban.guesses = 1


def _bingx_api(life: Life) -> SlidingBudget:
    return SlidingBudget(2, clock=life.mono)


def _full_second(budget: SlidingBudget, life: Life) -> None:
    for _ in range(budget.limit):
        budget.take()
        budget.landed()


def _bingx_errors(life: Life) -> ErrorCounter:
    return ErrorCounter(clock=life.mono)


def _errors(counter: ErrorCounter, life: Life) -> None:
    for _ in range(3):
        counter.record(OPEN_ORDERS)


def _mexc_kill_wait(charges: EndpointCharges) -> float:
    return charges.budget(CANCEL).delay_for(1, Priority.KILL)


KINDS = [
    Kind(
        "mexc 429",
        _mexc,
        lambda charges, _: charges.block(WAIT_S, banned=False),
        _mexc_kill_wait,  # an endpoint's budget made after the seeding: held too
        WAIT_S,
    ),
    Kind(
        "mexc charges",
        _mexc,
        _mexc_charges,
        _mexc_kill_wait,
        MEXC_RATE_LIMITS.window_s + 0.2,
    ),
    Kind(
        "binance 418",
        _binance,
        lambda budget, _: budget.block(WAIT_S, banned=True),
        lambda budget: budget.delay_for(1, Priority.KILL),
        WAIT_S,
    ),
    Kind("bingx ban", _bingx_ban, _banned, lambda ban: ban.remaining(ban.clock()), WAIT_S),
    Kind(
        "bingx 100410",
        _bingx_api,
        lambda budget, _: budget.block(WAIT_S),
        lambda budget: budget.delay_for(Priority.KILL),
        WAIT_S,
    ),
    Kind(
        "bingx per-second charges",
        _bingx_api,
        _full_second,
        lambda budget: budget.delay_for(Priority.KILL),
        1.2,
    ),
    Kind(
        "bingx error counts",
        _bingx_errors,
        _errors,
        lambda counter: counter.clear_in_s(OPEN_ORDERS, below=1),
        ERROR_LOCK_WINDOW_S,
    ),
]


@pytest.fixture
def limits_path(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "venue-limits.json"
    limits_file.stop_persisting()


def first_life(path: Path, kind: Kind) -> None:
    """A life that the venue tells to wait (or that spends a window), then ends and writes."""
    life = Life(WRITTEN_AT, mono_s=50_000.0)
    limits_file.persist_to(path, wall=life.wall)
    kind.impose(limits_file.persisted("ip", kind.name, kind.make(life)), life)
    limits_file.stop_persisting()
    written = orjson.loads(path.read_bytes())
    assert written["written_at"] == WRITTEN_AT
    assert [e["name"] for e in written["entries"]] == [kind.name]


def next_life(path: Path, kind: Kind, life: Life, *, claim: bool = True) -> Any:
    """A life with clocks `life`: `kind`'s item, seeded from the file (None without `claim`:
    that scope is not used in this life)."""
    limits_file.persist_to(path, wall=life.wall)
    return limits_file.persisted("ip", kind.name, kind.make(life)) if claim else None


def booted(wall_s: float) -> Life:
    """A new life's clocks: the wall clock reads `wall_s`; monotonic time starts again."""
    return Life(wall_s, mono_s=7.0)


def in_force_logged(caplog: pytest.LogCaptureFixture) -> float:
    [line] = [r.getMessage() for r in caplog.records if "carried over" in r.getMessage()]
    found = re.search(r"in_force_s=([\d.]+)", line)
    assert found is not None, line
    return float(found.group(1))


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_a_limit_read_back_after_the_wall_clock_went_back_30_days_holds_no_longer_than_written(
    kind: Kind, limits_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first_life(limits_path, kind)

    with caplog.at_level(logging.WARNING, logger="killswitch.exchanges.budget"):
        item = next_life(limits_path, kind, booted(WRITTEN_AT + 3.0 - 30 * DAY_S))

    # still held (the venue may still count it: nothing says time has passed), never longer
    assert 0 < kind.held_s(item) <= kind.most_s
    assert in_force_logged(caplog) <= kind.most_s


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_a_limit_left_unclaimed_by_a_life_behind_its_write_still_counts_down(
    kind: Kind, limits_path: Path
) -> None:
    first_life(limits_path, kind)
    # a life with the clock set back 30 days, that does not use that IP, writes the file again
    behind = booted(WRITTEN_AT - 30 * DAY_S)
    next_life(limits_path, kind, behind, claim=False)
    behind.advance(20.0)
    limits_file.stop_persisting()

    item = next_life(limits_path, kind, booted(behind.wall() + 20.0))

    assert kind.held_s(item) <= max(0.0, kind.most_s - 40.0)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_a_wall_clock_that_went_forward_forgets_what_the_venue_may_still_hold(
    kind: Kind, limits_path: Path
) -> None:
    # Documents a limit: nothing we keep tells 30 days from 3 s when the wall clock jumped
    # forward (only a clock counting across boots could): the venue may still hold it.
    first_life(limits_path, kind)

    item = next_life(limits_path, kind, booted(WRITTEN_AT + 30 * DAY_S))

    assert kind.held_s(item) == 0


def written_ahead(path: Path, ahead_s: float, entries: list[dict[str, Any]]) -> float:
    """A file written `ahead_s` after now: the wall clock went back since. Returns now."""
    now = WRITTEN_AT - ahead_s
    doc = {"version": 1, "written_at": WRITTEN_AT, "entries": entries}
    path.write_bytes(orjson.dumps(doc))
    return now


def test_a_file_written_ahead_of_now_bounds_every_time_in_it_and_says_the_clock_went_back(
    limits_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    at = WRITTEN_AT
    entries = [
        # a ban read as 10 days (a unit misread, an edit by hand): no venue holds us that long
        {"scope": "ip", "name": "ban", "state": {"until": at + 10 * DAY_S, "guesses": 1}},
        # a block over before the write: nothing left
        {
            "scope": "ip",
            "name": "api",
            "state": {"blocked_until": at - 5.0, "stamps": [at - 0.5], "until": at + 0.6},
        },
        # errors written as after the write: counted as if at it, a window at most
        {
            "scope": "ip",
            "name": "errors",
            "state": {"errors": {OPEN_ORDERS: [at - 100.0, at + DAY_S]}, "until": at + DAY_S},
        },
    ]
    with caplog.at_level(logging.WARNING, logger="killswitch.exchanges.budget"):
        now = written_ahead(limits_path, 2 * DAY_S, entries)
        life = booted(now)
        limits_file.persist_to(limits_path, wall=life.wall)
        ban = limits_file.persisted("ip", "ban", IpBan(clock=life.mono))
        api = limits_file.persisted("ip", "api", SlidingBudget(2, clock=life.mono))
        errors = limits_file.persisted("ip", "errors", ErrorCounter(clock=life.mono))

    assert ban.remaining(life.mono()) == MAX_WAIT_S
    assert api.blocked_until <= life.mono()
    assert api.in_window() == 1
    assert errors.count(OPEN_ORDERS) == 2
    assert errors.clear_in_s(OPEN_ORDERS, below=1) == ERROR_LOCK_WINDOW_S
    went_back = [r for r in caplog.records if "the wall clock went back" in r.getMessage()]
    assert len(went_back) == 1
    assert went_back[0].levelno == logging.WARNING
    assert "remembered limits bounded by what was written" in went_back[0].getMessage()


def test_the_unit_starts_after_the_clock_is_set_without_pulling_in_a_time_service() -> None:
    unit = Path(__file__).resolve().parents[2] / "systemd" / "killswitch.service"
    settings = [line.strip() for line in unit.read_text().splitlines()]

    assert "After=time-sync.target" in settings
    # time-sync.target is passive: pulled in only by a time service, never by its users
    assert not [s for s in settings if s.startswith(("Wants=", "Requires=")) and "time-sync" in s]
