"""Review 54: BingX answers the docs leave open, read the hard way.

1. `oco/openOrderList` under a page size the venue caps silently. The docs make `pageSize`
   required and give it no maximum (reference §3.3): a venue serving at most N lists a page,
   whatever is asked, answers a full page that looks short. The connector called a read of
   one short page complete, and with `open_orders_show_legs=False` (§3.7) the lists past it
   were nowhere: a kill scoped to their symbol reported flat with one open.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from killswitch.kill.record import KillState
from killswitch.model import Scope
from killswitch.sim.book import OrderSpec
from tests.review.bingx_rig import bingx_kill, bingx_with_answers

CAP = 10  # what the venue serves per page, whatever pageSize asks


def oco_legs(symbol: str) -> list[OrderSpec]:
    return [
        OrderSpec(symbol, "SELL", "LIMIT", Decimal("200"), Decimal("1")),
        OrderSpec(
            symbol, "SELL", "TAKE_STOP_LIMIT", Decimal("50"), Decimal("1"), stop_price=Decimal("51")
        ),
    ]


@pytest.mark.parametrize("shape", ["ocoOrders", "legs"])
async def test_a_list_past_a_silently_capped_page_is_read_and_cancelled(
    tmp_path: Path, shape: str
) -> None:
    async with bingx_with_answers(
        oco_list_shape=shape, open_orders_show_legs=False, oco_page_cap=CAP
    ) as (sim, exchange, _):
        book = sim.book(sim.accounts["bx0"])
        per_page = CAP if shape == "ocoOrders" else CAP // 2  # lists a capped page shows
        for _ in range(per_page):
            book.place_list(oco_legs("ETH-USDT"))
        btc = book.place_list(oco_legs("BTC-USDT")).list_id

        snapshot = await exchange.snapshot()
        assert btc in {x.list_id for x in snapshot.lists} or not snapshot.complete

        scope = Scope.of(venues=["bingx"], symbols=["BTC-USDT"])
        kill = await bingx_kill(exchange, tmp_path / "journal.jsonl", scope)
        assert kill.state in (KillState.FLAT, KillState.CONFIRMED)
        assert btc not in book.lists  # cancelled, not missed
        assert len(book.open_lists()) == per_page  # out of scope: untouched


async def test_a_read_answered_no_data_reads_empty_and_the_kill_ends_flat(tmp_path: Path) -> None:
    """2. docs-v3 lists `100204 No data` among the codes "thrown from every interface": a
    venue may answer an empty read with it. It was a refusal (Fatal) on every read, so every
    kill of an account with nothing left (or no OCO list) stopped, failed, with its orders
    gone. A 100204 naming a symbol without saying "no data" stays a refusal."""
    async with bingx_with_answers(empty_read="no_data") as (sim, exchange, _):
        book = sim.book(sim.accounts["bx0"])
        for _ in range(3):
            book.place(OrderSpec("ETH-USDT", "SELL", "LIMIT", Decimal("200"), Decimal("1")))
        kill = await bingx_kill(exchange, tmp_path / "journal.jsonl", Scope.of(["bingx"]))
        assert kill.state in (KillState.FLAT, KillState.CONFIRMED), kill.accounts
        assert not book.open_orders(None)
        for symbols in (None, ["ETH-USDT"]):
            snapshot = await exchange.snapshot(symbols)
            assert snapshot.complete
            assert not snapshot.orders
            assert not snapshot.lists


def test_only_a_read_naming_no_symbol_or_saying_no_data_found_nothing() -> None:
    from killswitch.exchanges.base import Fatal, OutcomeUnknown
    from killswitch.exchanges.bingx.errors import read_found_nothing

    assert read_found_nothing(Fatal("No data", code=100204), "ETH-USDT")
    assert read_found_nothing(Fatal("symbol not found", code=100204), None)
    assert not read_found_nothing(Fatal("symbol not found", code=100204), "ETH-USDT")
    assert not read_found_nothing(Fatal("No data", code=100400), None)
    assert not read_found_nothing(OutcomeUnknown("No data", code=100204), None)
