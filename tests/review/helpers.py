"""Shared rigs for the review tests: fakes whose reads can be held or cut short."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from killswitch.model import ExecType, OrderEvent, Snapshot
from tests.fakes import FakeExchange


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

    async def snapshot(self, symbols: Sequence[str] | None = None) -> Snapshot:
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
