"""Review 30, item 1: BingX OCO list pages counted in legs while the answer is grouped by list.

Under BingX's 2026 reference, `oco/openOrderList` answers `{"ocoOrders": [lists]}`; nothing
says whether its `pageSize` then counts lists or legs (orders, as in the flat shape). Counted in
legs, a full page of 100 legs is 50 lists: a reader that calls a page short when it holds fewer
than 100 lists stops at page 1 and calls the read complete. With `trade/openOrders` leaving OCO
legs out (the other open reading), the lists past page 1 are invisible: a kill scoped to their
symbol reads "nothing open, complete", a false flat (DESIGN "No false flat").

Fixed in `bingx/lists.py`: a page is full when its lists or its legs reach `pageSize`, and the
multi-page check follows leg ids. The simulator's `oco_page_unit` switch serves both readings.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from aiohttp import web

from killswitch.kill.planner import in_scope
from killswitch.kill.record import KillState
from killswitch.model import Mode, Scope, Trigger
from killswitch.sim.bingx import VARIANTS
from killswitch.sim.book import OrderSpec
from tests.review.bingx_rig import bingx_engine, bingx_with_answers
from tests.unit.test_engine import QUICK

OCO_LIST = "/openApi/spot/v1/oco/openOrderList"
READINGS = [("legs", "legs"), ("ocoOrders", "lists"), ("ocoOrders", "legs")]


def oco_legs(symbol: str) -> list[OrderSpec]:
    return [
        OrderSpec(symbol, "SELL", "LIMIT", Decimal("200"), Decimal("1")),
        OrderSpec(
            symbol, "SELL", "TAKE_STOP_LIMIT", Decimal("50"), Decimal("1"), stop_price=Decimal("51")
        ),
    ]


def test_the_strictest_variant_counts_pages_in_legs() -> None:
    assert VARIANTS["strictest"].oco_page_unit == "legs"
    assert VARIANTS["most_permissive"].oco_page_unit == "lists"


@pytest.mark.parametrize(("shape", "unit"), READINGS)
async def test_a_list_behind_a_full_page_of_legs_is_read(shape: str, unit: str) -> None:
    async with bingx_with_answers(
        oco_list_shape=shape, oco_page_unit=unit, open_orders_show_legs=False
    ) as (sim, exchange, _):
        book = sim.book(sim.accounts["bx0"])
        for _ in range(60):  # 120 legs: a page and a bit in legs, under a page in lists
            book.place_list(oco_legs("BTC-USDT"))
        eth = book.place_list(oco_legs("ETH-USDT")).list_id
        snapshot = await exchange.snapshot(["ETH-USDT"])
        assert [x.list_id for x in snapshot.lists] == [eth]
        scoped = in_scope(Scope.of(symbols=["ETH-USDT"]), snapshot)
        assert not scoped.proves_flat, "an open ETH-USDT list was never read"


async def test_a_symbol_kill_ends_with_no_list_open_when_pages_count_legs(tmp_path: Path) -> None:
    async with bingx_with_answers(
        oco_list_shape="ocoOrders", oco_page_unit="legs", open_orders_show_legs=False
    ) as (sim, exchange, _):
        book = sim.book(sim.accounts["bx0"])
        btc = [book.place_list(oco_legs("BTC-USDT")).list_id for _ in range(60)]
        eth = book.place_list(oco_legs("ETH-USDT")).list_id
        async with bingx_engine(exchange, tmp_path / "journal.jsonl", QUICK, seed=3) as engine:
            scope = Scope.of(venues=["bingx"], symbols=["ETH-USDT"])
            await engine.submit(Trigger("k1", "test", Mode.KILL, "desk 7 breach", scope))
            kill = engine.kill_for("k1")
            assert kill is not None
            await kill.done.wait()
            assert kill.state in (KillState.FLAT, KillState.CONFIRMED)
            assert eth not in book.lists, "flat with the ETH-USDT list open"
            assert all(lid in book.lists for lid in btc), "a list out of scope was cancelled"


async def test_a_page_shift_under_leg_pages_is_never_complete_while_a_list_is_skipped() -> None:
    """50 lists fill page 1 (100 legs) and one more stands first on page 2; after each read
    of page 1, one list of page 1 goes: the read that skipped one is never called complete."""
    async with bingx_with_answers(
        oco_list_shape="ocoOrders", oco_page_unit="legs", open_orders_show_legs=False
    ) as (sim, exchange, overrides):
        book = sim.book(sim.accounts["bx0"])
        ahead = [book.place_list(oco_legs("ETH-USDT")).list_id for _ in range(50)]
        btc = book.place_list(oco_legs("BTC-USDT")).list_id
        takes = list(ahead[:10])

        def bot_cancels_one(request: web.Request) -> None:
            if takes:
                book.cancel_list(takes.pop(0))

        overrides.after(
            "GET",
            OCO_LIST,
            bot_cancels_one,
            when=lambda request: request.query.get("pageIndex") == "1",
            times=len(takes),
        )
        snapshot = await exchange.snapshot(["BTC-USDT"])
        assert overrides.ran
        if snapshot.complete:
            assert btc in {x.list_id for x in snapshot.lists}, "complete without the BTC list"
