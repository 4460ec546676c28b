"""Review 66, finding 2: a latched, flat BingX account's sweeps spent the kill's error reserve.

Where every empty read answers 100204 "No data" (a documented reading, and each such answer
counts toward BingX's lock: "over 20 error code ... requests within 480000 ms for this api"),
sweeps read as kills spent the allowance down to its last (19 of 20: 32 sweeps per 480 s at
the default 15 s interval). A one-shot cancel's verification read was then held until its
deadline, and it reported failed though its orders were cancelled. A sweep's reads now leave
the kill's half alone; a held sweep waits, and says so once.
"""

from __future__ import annotations

import random
import time
import types
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import cast

import pytest

import killswitch.sim.bingx as sim_bingx
import killswitch.sim.venue as sim_venue
from killswitch.exchanges.base import RateLimited
from killswitch.exchanges.bingx import BingxExchange
from killswitch.exchanges.bingx.venue import ERROR_LOCK_COUNT, OCO_OPEN_LIST, OPEN_ORDERS
from killswitch.journal import Journal
from killswitch.kill.config import Account, EngineConfig
from killswitch.kill.engine import Engine
from killswitch.kill.record import KillState
from killswitch.model import AccountRef, Mode, Scope, Trigger
from killswitch.sim.bingx import BingxSim
from killswitch.sim.book import OrderSpec
from killswitch.sim.venue import SimAccount, VenueSettings
from tests.fakes import EventLog, FakeClock
from tests.fixtures.answers import install
from tests.fixtures.bingx import account_keys
from tests.review.bingx_rig import bx0_exchange

CONFIG = EngineConfig(
    deadline_s=5.0,
    retry_initial_s=0.05,
    retry_max_s=0.5,
    quiet_window_s=0.1,
    sweep_interval_s=3600.0,  # the test sweeps (`Engine.sweep`, what the sweeper does)
)
SWEEPS = 20  # at 15 s, five minutes of sweeps


def held_by_us(exc: RateLimited) -> bool:
    """A request the connector held (an error allowance), never sent: not the venue's refusal."""
    return "error-count lock ahead" in exc.msg


def sim_time_follows(fake: FakeClock, monkeypatch: pytest.MonkeyPatch) -> Callable[[], float]:
    """The BingX sim's clocks (its limits, error locks, bans and server time) move on with
    `fake` as well as with real time; returns its wall clock."""
    start = fake.now
    mono, wall = time.monotonic, time.time
    shifted = types.SimpleNamespace(
        monotonic=lambda: mono() + fake.now - start, time=lambda: wall() + fake.now - start
    )
    monkeypatch.setattr(sim_bingx, "time", shifted)
    monkeypatch.setattr(sim_venue, "time", shifted)
    return cast(Callable[[], float], shifted.time)


@asynccontextmanager
async def latched_engine(
    tmp_path: Path, fake: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[BingxSim, BingxExchange, Engine, EventLog]]:
    """A BingX sim answering empty reads "No data", and an engine over its account `bx0`; the
    connector's budgets, the engine and the sim's limits all on `fake` time (which moves on
    when the engine or a budget waits: a hold of minutes takes none)."""
    venue_wall = sim_time_follows(fake, monkeypatch)
    accounts = [SimAccount(name=n, api_key=k, secret=s) for n, k, s in (account_keys(0),)]
    sim = BingxSim(VenueSettings(accounts=accounts), empty_read="no_data")
    install(sim)
    await sim.start()
    exchange = bx0_exchange(sim, budget_clock=fake.clock, budget_sleep=fake.sleep)
    exchange.clock.wall = venue_wall  # the sim's clock, as a synced one reads it
    engine = Engine(
        [Account(AccountRef("bingx", "bx0"), exchange)],
        Journal(tmp_path / "journal.jsonl"),
        CONFIG,
        sleep=fake.sleep,
        clock=fake,
        rng=random.Random(1),
    )
    log = EventLog()
    engine.events.add(log)
    try:
        await exchange.start()
        await engine.start()
        yield sim, exchange, engine, log
    finally:
        await engine.stop(grace_s=1.0)
        await exchange.close()
        await sim.stop()


async def test_sweeps_of_a_flat_account_leave_the_kill_s_error_reserve_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeClock(1000.0)
    async with latched_engine(tmp_path, fake, monkeypatch) as (sim, exchange, engine, log):
        await engine.submit(Trigger("k1", "test", Mode.KILL, "dd", Scope.of(["bingx"])))
        k1 = engine.kill_for("k1")
        assert k1 is not None
        await k1.finished.wait()

        counts = []
        for _ in range(SWEEPS):
            for sweep in await engine.sweep():
                # held, a sweep waits: it neither fails nor reports flat before it has read
                assert sweep.state is KillState.FLAT, sweep.accounts
            counts.append(max(exchange.errors.count(p) for p in (OPEN_ORDERS, OCO_OPEN_LIST)))
        assert max(counts) <= ERROR_LOCK_COUNT // 2, counts
        held = [r for r in log.of("alarm") if r.get("sweep") == "held"]
        assert held, "a held sweep is told of"
        assert len(held) < SWEEPS // 2, "told once a hold, not once a sweep"

        # A one-shot cancel finds the kill's half of the allowance, and ends flat.
        book = sim.book(sim.accounts["bx0"])
        order_id = book.place(OrderSpec("BTC-USDT", "BUY", "LIMIT", Decimal("100"), Decimal("1")))
        order_id = order_id.order_id
        await engine.submit(Trigger("c1", "test", Mode.CANCEL, "x", Scope.of(["bingx"])))
        c1 = engine.kill_for("c1")
        assert c1 is not None
        await c1.finished.wait()
        assert c1.state is KillState.FLAT, c1.accounts
        assert order_id not in {o.order_id for o in book.open_orders(None)}
    assert not {k: v for k, v in sim.counters.items() if "lock" in k or "100410" in k}
