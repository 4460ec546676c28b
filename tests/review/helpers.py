"""Shared rigs for the review tests: fakes whose reads can be held or cut short."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from killswitch.events import EventSink
from killswitch.exchanges.base import Exchange
from killswitch.journal import Journal
from killswitch.kill.config import Account
from killswitch.kill.record import Kill, KillState
from killswitch.model import AccountRef, ExecType, Mode, OrderEvent, Scope, Snapshot, Trigger
from tests.fakes import FakeExchange
from tests.unit.test_engine import QUICK


class ReadsFake(FakeExchange):
    """A FakeExchange whose n-th snapshot can wait for an event or be rewritten.

    `hold_from`: reads from this number on (1-based) wait for `release`.
    `rewrite`: called with (read number, symbols, snapshot); returns the snapshot to answer.
    """

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.reads = 0
        self.hold_from: int | None = None
        self.release = asyncio.Event()
        self.rewrite: Callable[[int, Sequence[str] | None, Snapshot], Snapshot] | None = None

    async def snapshot(
        self, symbols: Sequence[str] | None = None, *, priority: object = None
    ) -> Snapshot:
        self.reads += 1
        n = self.reads
        if self.hold_from is not None and n >= self.hold_from:
            await self.release.wait()
        snap = await super().snapshot(symbols)
        if self.rewrite is not None:
            snap = self.rewrite(n, symbols, snap)
        return snap


class HeldCancels(FakeExchange):
    """A FakeExchange whose `cancel_order` calls wait for `release` (while `holding` is set)
    after being logged, as a request on the wire waits for its answer."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.holding = False
        self.release = asyncio.Event()
        self.entered = 0

    async def cancel_order(self, symbol: str, order_id: str):  # type: ignore[no-untyped-def]
        self.entered += 1
        if self.holding:
            await self.release.wait()
        return await super().cancel_order(symbol, order_id)


def new_order(venue: FakeExchange, order_id: str) -> OrderEvent:
    """The stream event of an order `venue` holds open: it was just placed."""
    order = venue.book.orders[order_id]
    return OrderEvent(order.symbol, order_id, order.client_order_id, ExecType.NEW, "NEW", True, 0)


async def run_kills(
    tmp_path: Path,
    exchange: Exchange,
    symbols: Sequence[str],
    scopes: Sequence[Scope],
    events: EventSink | None = None,
) -> list[Kill]:
    """Run one kill per scope, one after another, to its end, on an engine over `exchange`'s
    one account (configured with `symbols`, events also to `events`); the ended kills."""
    from killswitch.kill.engine import Engine

    ref = AccountRef(exchange.venue, getattr(exchange, "account", "acct0"))
    engine = Engine(
        [Account(ref, exchange, symbols=tuple(symbols))],
        Journal(tmp_path / "journal.jsonl"),
        QUICK,
        rng=random.Random(7),
    )
    if events is not None:
        engine.events.add(events)
    await engine.start()
    kills = []
    try:
        for n, scope in enumerate(scopes, 1):
            await engine.submit(Trigger(f"k{n}", "test", Mode.KILL, "dd", scope))
            kill = engine.kill_for(f"k{n}")
            assert kill is not None
            await kill.finished.wait()
            kills.append(kill)
    finally:
        await engine.stop()
    return kills


async def kill_states(
    tmp_path: Path,
    exchange: Exchange,
    symbols: Sequence[str],
    scopes: Sequence[Scope],
) -> list[KillState]:
    """The state each of `run_kills`'s kills ended in."""
    return [k.state for k in await run_kills(tmp_path, exchange, symbols, scopes)]


def mexc_no_symbol_read(shown: Callable[[list[Any]], list[Any]]) -> Any:
    """A `MexcSim._open_orders` whose read without a symbol answers `shown(rows)` (a subset,
    say: §2.3 leaves it unverified that it answers every symbol); reads by name are exact."""
    from aiohttp import web

    from killswitch.sim.mexc import MexcSim

    original = MexcSim._open_orders

    async def answer(
        self: MexcSim, request: web.Request, account: Any, params: dict[str, str]
    ) -> web.Response:
        response = await original(self, request, account, params)
        if params.get("symbol"):
            return response
        assert isinstance(response.body, bytes)
        rows = orjson.loads(response.body)
        return web.json_response(shown(rows), dumps=lambda o: orjson.dumps(o).decode())

    return answer
