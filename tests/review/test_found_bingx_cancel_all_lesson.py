"""CI (fresh clone at fecb4cf): the strictest BingX 30-OCO kill ended flat, but its connector
had not learned that `cancelOpenOrders` leaves OCO lists (`cancel_all_covers_lists` None, not
False): the next kill would send leg-id batches again (an efficiency loss, never a correctness
one). The lesson was drawn only from a list read *begun* after the cancel-all's
acknowledgement; a kill whose first look's read began before it, and whose lists then went
through `oco/cancel`, never ran one that still saw them.

Now every answer that shows a list open counts, when it was asked for after the
acknowledgement (so served after the cancel-all): each page of any read, and an `oco/cancel`
that found its list open. And a read's start is stamped before it, never after (an
after-the-read stamp made a read served before the cancel-all look served after it, and
taught "not covered" on a venue whose cancel-all does cover lists).

The real connector against the BingX simulator on loopback; the order of requests each test
needs is checked in the simulator's log, not assumed.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from killswitch.exchanges.base import AlreadyGone
from killswitch.sim.book import OrderSpec
from killswitch.sim.faults import Fault, FaultKind
from tests.fixtures.bingx import bingx_venue

SPOT = "/openApi/spot/v1"
LIST_READ = f"{SPOT}/oco/openOrderList"
CANCEL_ALL = f"{SPOT}/trade/cancelOpenOrders"
OCO_CANCEL = f"{SPOT}/oco/cancel"
SYMBOLS = ("BTC-USDT", "ETH-USDT", "SOL-USDT")


def oco_legs(i: int) -> tuple[list[OrderSpec], str, str]:
    symbol = SYMBOLS[i % 3]
    legs = [
        OrderSpec(symbol, side="SELL", price=Decimal(120)),
        OrderSpec(
            symbol,
            side="SELL",
            order_type="STOP_LOSS_LIMIT",
            price=Decimal(80),
            stop_price=Decimal(81),
        ),
    ]
    return legs, "OCO", f"{9000 + i}"


def log_of(sim: Any, path: str) -> list[dict[str, Any]]:
    return [e for e in sim.request_log if e["path"] == path]


async def test_a_list_shown_open_by_a_page_asked_for_after_the_cancel_all_teaches_it() -> None:
    # Each list page takes 300 ms: a read begun before the cancel-all reads most of its pages
    # after the cancel-all's acknowledgement.
    slow = Fault(FaultKind.LATENCY, endpoint=LIST_READ, latency_ms=300.0)
    async with bingx_venue(accounts=1, variant="strictest", faults=[slow]) as (sim, make):
        sim.seed(sim.accounts["bx0"], [], [oco_legs(i) for i in range(30)])
        exchange = make("bx0")
        await exchange.start()
        await asyncio.sleep(0.05)  # the lists are older than the margin for our clock's error
        look = asyncio.create_task(exchange.snapshot())
        while not any("answered" in e for e in log_of(sim, LIST_READ)):
            await asyncio.sleep(0.005)
        await exchange.cancel_all(None)
        snapshot = await look
        assert len(snapshot.lists) == 30, "the cancel-all left every list (strictest)"
        came = log_of(sim, CANCEL_ALL)[0]["t"]  # wall clock, as each request's "t"
        pages = log_of(sim, LIST_READ)
        assert pages[0]["t"] < came < pages[-1]["t"], "the read spans the cancel-all"
        assert exchange.learned_paths()["cancel_all_covers_lists"] is False


async def test_an_oco_cancel_that_finds_its_list_open_after_the_cancel_all_teaches_it() -> None:
    async with bingx_venue(accounts=1, variant="strictest") as (sim, make):
        sim.seed(sim.accounts["bx0"], [], [oco_legs(i) for i in range(3)])
        exchange = make("bx0")
        await exchange.start()
        snapshot = await exchange.snapshot()  # the lists are known before the cancel-all
        await exchange.cancel_all(None)
        assert exchange.learned_paths()["cancel_all_covers_lists"] is None
        target = snapshot.lists[0]
        await exchange.cancel_order_list(target.symbol, target.list_id)
        assert len(log_of(sim, OCO_CANCEL)) == 1
        assert len(log_of(sim, LIST_READ)) == len(
            [e for e in log_of(sim, LIST_READ) if e["t"] < log_of(sim, CANCEL_ALL)[0]["t"]]
        ), "no list read after the cancel-all: the oco/cancel is the only witness"
        assert exchange.learned_paths()["cancel_all_covers_lists"] is False


async def test_a_read_served_before_a_covering_cancel_all_teaches_nothing() -> None:
    # The venue's cancel-all does cover lists. A list read for `cancel_order_list` (its list
    # unknown) is served before the cancel-all but answers after its acknowledgement.
    slow = Fault(FaultKind.LATENCY, endpoint=LIST_READ, latency_ms=600.0)
    async with bingx_venue(accounts=1, variant="most_permissive", faults=[slow]) as (sim, make):
        sim.seed(sim.accounts["bx0"], [], [oco_legs(i) for i in range(3)])
        exchange = make("bx0")
        await exchange.start()
        await asyncio.sleep(0.05)
        read = asyncio.create_task(exchange.cancel_order_list(SYMBOLS[0], "no-such-list"))
        while not any("start" in e for e in log_of(sim, LIST_READ)):
            await asyncio.sleep(0.005)
        await exchange.cancel_all(None)
        with pytest.raises(AlreadyGone):  # the list is unknown: gone
            await read
        served = log_of(sim, LIST_READ)[0]
        acked = log_of(sim, CANCEL_ALL)[0]
        assert served["start"] < acked["start"] < acked["answered"] < served["answered"]
        assert len(sim.book(sim.accounts["bx0"]).lists) == 0, "the cancel-all covered them"
        assert exchange.learned_paths()["cancel_all_covers_lists"] is not False
