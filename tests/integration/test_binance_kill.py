"""Kills on a Binance account whose orders share ids across symbols (Binance numbers orders per
symbol, reference §1.6): the real simulator, connector, stream supervisor, tracker and engine.

The simulator numbers every symbol from the same first id, so the first order on ETHUSDT has
the id of the first order on BTCUSDT. An engine or tracker that knows orders by id alone
mistakes one for the other: it skips a new order whose id it saw cancelled, or cancels an
order outside a symbol-scoped kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from killswitch.exchanges.binance import BinanceExchange
from killswitch.journal import Journal
from killswitch.kill.config import Account, EngineConfig
from killswitch.kill.engine import Engine
from killswitch.kill.record import KillState
from killswitch.model import AccountRef, Mode, Scope, Trigger
from killswitch.sim.book import SimBook
from killswitch.streams.supervisor import StreamSupervisor
from killswitch.streams.tracker import OrderTracker
from tests.conftest import eventually
from tests.fakes import EventLog
from tests.fixtures.binance import BinanceVenue, binance_venue
from tests.fixtures.kill import FAST


@dataclass
class Rig:
    venue: BinanceVenue
    exchange: BinanceExchange
    tracker: OrderTracker
    engine: Engine
    log: EventLog

    @property
    def book(self) -> SimBook:
        return self.venue.sim.book(self.venue.sim.accounts["acct0"])

    async def place(self, symbol: str) -> str:
        return str((await self.venue.place("acct0", symbol))["orderId"])

    async def finished(self, trigger_id: str) -> KillState:
        kill = self.engine.kill_for(trigger_id)
        assert kill is not None
        async with asyncio.timeout(60):
            await kill.finished.wait()
        return kill.state


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, config: EngineConfig = FAST) -> AsyncIterator[Rig]:
    async with binance_venue(1) as venue:
        exchange = await venue.connect("acct0")
        ref = AccountRef("binance", "acct0")
        tracker = OrderTracker(ref)
        engine = Engine(
            [Account(ref, exchange, tracker=tracker)],
            Journal(tmp_path / "journal.jsonl"),
            config,
            rng=random.Random(8),
        )
        log = EventLog()
        engine.events.add(log)
        supervisor = StreamSupervisor(
            exchange, tracker, on_event=engine.on_stream_event, reconcile_interval_s=None
        )
        task = asyncio.create_task(supervisor.run())
        try:
            assert await supervisor.wait_live(20.0)
            await engine.start()
            yield Rig(venue, exchange, tracker, engine, log)
        finally:
            await engine.stop(grace_s=1.0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def kill(trigger_id: str, **scope: object) -> Trigger:
    now = int(time.time() * 1000)
    return Trigger(trigger_id, "test", Mode.KILL, "test", Scope.of(**scope), created_ms=now)  # type: ignore[arg-type]


async def test_a_new_order_with_an_id_another_symbol_had_is_cancelled_at_once(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as r:
        btc = [await r.place("BTCUSDT") for _ in range(3)]
        await eventually(lambda: len(r.tracker) == 3)
        await r.engine.submit(kill("k1", venues=["binance"]))
        assert await r.finished("k1") is KillState.CONFIRMED
        assert not r.book.open
        # Latched. The first ETHUSDT order takes the id of BTCUSDT's first, cancelled above;
        # the stream must cancel it now, not at the next sweep (an hour away in FAST).
        eth = await r.place("ETHUSDT")
        assert eth == btc[0]
        await eventually(lambda: not r.book.open, timeout_s=10)
        cancels = r.log.of("stream_cancel")
        assert cancels


async def test_a_symbol_scoped_kill_leaves_the_other_symbols_order_with_the_same_id(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as r:
        btc = await r.place("BTCUSDT")
        eth = await r.place("ETHUSDT")
        assert btc == eth
        await eventually(lambda: len(r.tracker) == 2)
        await r.engine.submit(kill("k2", venues=["binance"], symbols=["BTCUSDT"]))
        assert await r.finished("k2") is KillState.CONFIRMED
        assert set(r.book.open) == {("ETHUSDT", eth)}
        # Another BTCUSDT order while latched goes at once; ETHUSDT's stays.
        again = await r.place("BTCUSDT")
        await eventually(lambda: ("BTCUSDT", again) not in r.book.open, timeout_s=10)
        assert set(r.book.open) == {("ETHUSDT", eth)}
