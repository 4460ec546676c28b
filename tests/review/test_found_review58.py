"""Review 58, of the fixes of review 54 (BingX `oco/openOrderList` pages the venue may cap
silently, and reads answered `100204 "No data"`).

1. A read answered "No data" reads empty, and counts toward BingX's error lock (20 errors on
   an API lock it for minutes; no code is documented as exempt). Idle accounts' reconciles
   spent the whole allowance within minutes, and a kill's reads were then held until its
   deadline. Background reads (reconciles, latched sweeps) now stop at half of it.
2. Every first page as long as the most the account had shown cost page 2 and a vouching
   page 1: three OCO reads (2 a second per IP) for every read of an account with a few
   standing lists, three times the time to flat at scale and a missed deadline at 12
   accounts. A page under `MIN_OCO_PAGE` items now ends a read at once.
3. The most a page had shown was kept across the two shapes, whose units differ: after full
   flat pages of legs, a venue serving grouped pages capped at fewer lists read as short.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from killswitch.exchanges.base import Priority, RateLimited
from killswitch.exchanges.bingx.parse import MIN_OCO_PAGE
from killswitch.exchanges.bingx.venue import ERROR_LOCK_COUNT, OCO_OPEN_LIST, OPEN_ORDERS
from killswitch.kill.record import KillState
from killswitch.model import Scope
from killswitch.sim.book import OrderSpec
from tests.review.bingx_rig import bingx_kill, bingx_with_answers
from tests.review.test_found_review54 import oco_legs


async def test_background_reads_answered_no_data_leave_the_error_allowance_to_kills(
    tmp_path: Path,
) -> None:
    async with bingx_with_answers(empty_read="no_data") as (sim, exchange, _):
        held = 0
        for _ in range(25):  # more than the lock's 20, as idle reconciles make in minutes
            try:
                snapshot = await exchange.snapshot(priority=Priority.BACKGROUND)
            except RateLimited:
                held += 1
            else:
                assert snapshot.complete
        assert held > 0
        for path in (OPEN_ORDERS, OCO_OPEN_LIST):
            assert exchange.errors.count(path) <= ERROR_LOCK_COUNT // 2
        book = sim.book(sim.accounts["bx0"])
        book.place(OrderSpec("ETH-USDT", "SELL", "LIMIT", Decimal("200"), Decimal("1")))
        kill = await bingx_kill(exchange, tmp_path / "journal.jsonl", Scope.of(["bingx"]))
        assert kill.state in (KillState.FLAT, KillState.CONFIRMED), kill.accounts
        assert not book.open_orders(None)


async def test_a_read_of_a_few_standing_lists_costs_one_request() -> None:
    async with bingx_with_answers(oco_list_shape="ocoOrders", open_orders_show_legs=False) as (
        sim,
        exchange,
        overrides,
    ):
        pages: list[str] = []
        overrides.after(
            "GET", OCO_OPEN_LIST, lambda request: pages.append(request.query["pageIndex"]), times=99
        )
        book = sim.book(sim.accounts["bx0"])
        lists = (MIN_OCO_PAGE - 1) // 2  # fewer than MIN_OCO_PAGE lists and legs
        for _ in range(lists):
            book.place_list(oco_legs("ETH-USDT"))
        for _ in range(3):
            snapshot = await exchange.snapshot()
            assert snapshot.complete
            assert len(snapshot.lists) == lists
        assert pages == ["1", "1", "1"]


async def test_what_pages_of_one_shape_showed_says_nothing_of_the_other(tmp_path: Path) -> None:
    async with bingx_with_answers(
        oco_list_shape="legs", open_orders_show_legs=False, oco_page_unit="lists"
    ) as (sim, exchange, _):
        book = sim.book(sim.accounts["bx0"])
        for _ in range(MIN_OCO_PAGE):
            book.place_list(oco_legs("ETH-USDT"))
        btc = book.place_list(oco_legs("BTC-USDT")).list_id
        flat = await exchange.snapshot()  # flat pages of legs: 11 lists, 22 legs on page 1
        assert btc in {x.list_id for x in flat.lists}
        # The venue now answers grouped pages of at most MIN_OCO_PAGE lists (20 legs).
        sim.set_behaviour(
            sim.behaviour.with_changes(oco_list_shape="ocoOrders", oco_page_cap=MIN_OCO_PAGE)
        )
        scope = Scope.of(venues=["bingx"], symbols=["BTC-USDT"])
        kill = await bingx_kill(exchange, tmp_path / "journal.jsonl", scope)
        assert kill.state in (KillState.FLAT, KillState.CONFIRMED)
        assert btc not in book.lists  # cancelled, not missed
