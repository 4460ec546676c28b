"""Review 41: the bounded check beside MEXC's read without a symbol (review 40) checked ten
known symbols of forty, and a read that showed no old order left out among those proved flat:
an order on another known symbol stayed open behind a confirmed kill ("No false flat"). A
kill's read now checks every known symbol (up to 40 requests) or proves nothing; and a symbol
MEXC calls bad is dropped from the known ones instead of holding every read back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from killswitch.exchanges.base import VenueError
from killswitch.kill.record import KillState
from killswitch.model import Scope
from killswitch.sim import mexc as sim_mexc
from killswitch.sim.book import OrderSpec
from killswitch.sim.mexc import MexcSim
from tests.fixtures.mexc import mexc_sim
from tests.review.helpers import kill_states, mexc_no_symbol_read

OPEN_ORDERS = "/api/v3/openOrders"
SYMBOLS = [f"C{i:03d}USDT" for i in range(40)]


def _subset(shown_symbols: set[str]) -> Any:
    return mexc_no_symbol_read(lambda rows: [r for r in rows if r["symbol"] in shown_symbols])


async def test_snapshot_proves_flat_over_an_old_order_on_a_known_unchecked_symbol(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review 37's guarantee: an order on a symbol the connector knows is never left out of an
    account-wide snapshot that says complete. With 40 known symbols the check reads 10."""
    monkeypatch.setattr(MexcSim, "_open_orders", _subset({"C000USDT"}))
    async with mexc_sim(accounts=1, symbols=SYMBOLS) as (sim, connect):
        exchange = connect("acct0", symbols_hint=SYMBOLS)
        await exchange.start()
        book = sim.book(sim.accounts["acct0"])
        hidden = book.place(OrderSpec("C039USDT"))
        hidden.time_ms -= 60_000
        snapshot = await exchange.snapshot()
        ids = {o.order_id for o in snapshot.orders}
        assert any(o.order_id == hidden.order_id for o in book.open_orders())
        assert hidden.order_id in ids or not snapshot.complete, (
            "complete account-wide snapshot without an old open order on a known symbol"
        )


async def test_account_wide_kill_ends_flat_with_an_order_open_on_a_known_symbol(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(MexcSim, "_open_orders", _subset({"BTCUSDT"}))
    syms = ["BTCUSDT", *SYMBOLS]
    async with mexc_sim(accounts=1, symbols=syms) as (sim, connect):
        # The connector knows 41 symbols (seen in earlier reads, cancels, streams).
        exchange = connect("acct0", symbols_hint=syms)
        await exchange.start()
        book = sim.book(sim.accounts["acct0"])
        book.place(OrderSpec("BTCUSDT"))
        hidden = book.place(OrderSpec("C039USDT"))
        hidden.time_ms -= 60_000
        (state,) = await kill_states(tmp_path, exchange, ["BTCUSDT"], [Scope.of(["mexc"])])
        still_open = any(o.order_id == hidden.order_id for o in book.open_orders())
        assert not (still_open and state in (KillState.FLAT, KillState.CONFIRMED)), (
            f"kill {state} with C039USDT order {hidden.order_id} open"
        )


@pytest.mark.parametrize("listed", [False, True])
async def test_a_known_symbol_mexc_calls_bad_is_dropped_if_delisted_else_holds_proof_back(
    monkeypatch: pytest.MonkeyPatch, listed: bool
) -> None:
    """Gone from `exchangeInfo` (delisted: no order can be open there), the symbol is dropped
    and holds nothing back (review 47: it failed every later kill). Still listed (a symbol
    MEXC's API does not serve), it is read alone, and no account-wide read proves flat while
    it cannot be read (review 42: an order placed there elsewhere may be open)."""
    original = MexcSim._open_orders

    async def refused(
        self: MexcSim, request: web.Request, account: Any, params: dict[str, str]
    ) -> web.Response:
        if "GONEUSDT" in params.get("symbol", ""):
            raise sim_mexc.MexcError(10007, "bad symbol")
        return await original(self, request, account, params)

    monkeypatch.setattr(MexcSim, "_open_orders", refused)
    symbols = [*SYMBOLS[:3], "GONEUSDT"] if listed else SYMBOLS[:3]
    async with mexc_sim(accounts=1, symbols=symbols) as (sim, connect):
        exchange = connect("acct0", symbols_hint=[*SYMBOLS[:3], "GONEUSDT"])
        await exchange.start()
        sim.book(sim.accounts["acct0"]).place(OrderSpec("C001USDT"))
        for n in range(2):
            snap = await exchange.snapshot()
            assert [o.symbol for o in snap.orders] == ["C001USDT"]
            # the read that found it out failed; a delisted one holds back no later proof
            assert snap.complete is (n > 0 and not listed)
            assert "GONEUSDT" not in exchange.known_symbols
        # A kill naming it is never flat by it (review 48: under a reading where exchangeInfo
        # leaves out a symbol its API does not serve, an order may be open there).
        if listed:
            with pytest.raises(VenueError):
                await exchange.snapshot(["GONEUSDT"])
        else:
            assert not (await exchange.snapshot(["GONEUSDT"])).complete
