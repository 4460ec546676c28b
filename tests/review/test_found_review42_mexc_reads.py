"""Found by review 42, two false flats on MEXC's open-orders read.

1. `GET /api/v3/openOrders` of several comma-separated symbols is promised only by a changelog
   (reference §2.3: the table takes one symbol). Under the reading where MEXC answers such a
   list for its first symbol only, the answer was taken for every symbol named: a kill by
   symbols proved flat over an order open on the second. A list is now trusted for each symbol
   it names only once one showed orders on each of its symbols; until then the symbols it
   showed nothing on are read by name too.
2. A known symbol MEXC refused by name as bad (10007: delisted, or one its API does not serve)
   was dropped from the known symbols, so the next account-wide read proved flat without it,
   under the reading where the read without a symbol leaves it out too: an order placed there
   elsewhere (the web UI) stayed open under a confirmed kill. Now such a symbol is read alone by
   every kill's check, and no account-wide read proves flat while it cannot be read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson
import pytest
from aiohttp import web

from killswitch.kill.record import KillState
from killswitch.model import Scope
from killswitch.sim import mexc as sim_mexc
from killswitch.sim.book import OrderSpec
from killswitch.sim.mexc import MexcSim
from tests.fixtures.mexc import mexc_sim
from tests.review.helpers import kill_states

SYMBOLS = ["BTCUSDT", "ETHUSDT"]
GONE = "GONEUSDT"


def _reads(sim: MexcSim) -> list[str]:
    """The `symbol` parameter of every open-orders read the simulator served ('' for none)."""
    return [
        dict(parse_qsl(str(e["query"]))).get("symbol", "")
        for e in sim.request_log
        if e.get("path") == "/api/v3/openOrders" and e.get("method") == "GET"
    ]


def _first_delete_fails_unapplied() -> Any:
    original = MexcSim._cancel_open_orders
    calls = {"n": 0}

    async def answer(
        self: MexcSim, request: web.Request, account: Any, params: dict[str, str]
    ) -> web.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            return web.json_response({"code": 503, "msg": "busy"}, status=503)
        return await original(self, request, account, params)

    return answer


@pytest.mark.parametrize("list_read", ["first", "each", "refused"])
async def test_a_read_of_several_symbols_shows_an_order_on_a_later_one_under_every_reading(
    list_read: str,
) -> None:
    async with mexc_sim(accounts=1, symbols=SYMBOLS, list_read=list_read) as (sim, connect):
        exchange = connect("acct0", symbols_hint=SYMBOLS)
        await exchange.start()
        try:
            eth = sim.book(sim.accounts["acct0"]).place(OrderSpec("ETHUSDT"))
            snap = await exchange.snapshot(SYMBOLS)
            assert snap.complete
            assert {o.order_id for o in snap.orders} == {eth.order_id}
        finally:
            await exchange.close()


async def test_a_list_is_trusted_for_each_symbol_once_it_showed_orders_on_each() -> None:
    async with mexc_sim(accounts=1, symbols=SYMBOLS) as (sim, connect):
        exchange = connect("acct0", symbols_hint=SYMBOLS)
        await exchange.start()
        try:
            book = sim.book(sim.accounts["acct0"])
            await exchange.snapshot(SYMBOLS)  # nothing open: each symbol is read by name too
            assert sorted(_reads(sim)) == ["BTCUSDT", "BTCUSDT,ETHUSDT", "ETHUSDT"]
            for symbol in SYMBOLS:
                book.place(OrderSpec(symbol))
            await exchange.snapshot(SYMBOLS)  # a list shows orders on each of its symbols
            sim.request_log.clear()
            assert (await exchange.snapshot(SYMBOLS)).complete
            assert _reads(sim) == ["BTCUSDT,ETHUSDT"]  # trusted: one request
        finally:
            await exchange.close()


async def test_a_kill_by_symbols_is_not_flat_while_a_list_answered_for_its_first_symbol_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reviewer's case: the first cancel fails unapplied, its re-read is a list answered for
    BTCUSDT only, the retry is narrowed to BTCUSDT, and the verification read is the list."""
    monkeypatch.setattr(MexcSim, "_cancel_open_orders", _first_delete_fails_unapplied())
    async with mexc_sim(accounts=1, symbols=SYMBOLS, list_read="first") as (sim, connect):
        exchange = connect("acct0", symbols_hint=SYMBOLS)
        await exchange.start()
        book = sim.book(sim.accounts["acct0"])
        book.place(OrderSpec("BTCUSDT"))
        eth = book.place(OrderSpec("ETHUSDT"))
        (state,) = await kill_states(
            tmp_path, exchange, SYMBOLS, [Scope.of(["mexc"], symbols=SYMBOLS)]
        )
        open_now = {o.order_id for o in book.open_orders()}
        assert eth.order_id not in open_now or state not in (
            KillState.FLAT,
            KillState.CONFIRMED,
        ), f"kill {state.value} with {eth.order_id} open on ETHUSDT"
        assert state is KillState.CONFIRMED
        assert not open_now


def _api_does_not_serve_gone() -> Any:
    """MEXC refuses GONEUSDT by name (10007), and its read without a symbol leaves it out."""
    original = MexcSim._open_orders

    async def answer(
        self: MexcSim, request: web.Request, account: Any, params: dict[str, str]
    ) -> web.Response:
        if GONE in params.get("symbol", ""):
            raise sim_mexc.MexcError(10007, "bad symbol")
        response = await original(self, request, account, params)
        if params.get("symbol"):
            return response
        assert isinstance(response.body, bytes)
        rows = [r for r in orjson.loads(response.body) if r["symbol"] != GONE]
        return web.json_response(rows, dumps=lambda o: orjson.dumps(o).decode())

    return answer


async def test_no_kill_proves_flat_while_a_known_symbol_mexc_calls_bad_cannot_be_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(MexcSim, "_open_orders", _api_does_not_serve_gone())
    async with mexc_sim(accounts=1, symbols=["BTCUSDT", GONE]) as (sim, connect):
        # The connector learned GONEUSDT (a stream push, an earlier read): a known symbol.
        exchange = connect("acct0", symbols_hint=["BTCUSDT", GONE])
        await exchange.start()
        book = sim.book(sim.accounts["acct0"])
        book.place(OrderSpec("BTCUSDT"))
        stuck = book.place(OrderSpec(GONE))  # placed elsewhere; the API does not serve it
        scope = Scope.of(["mexc"])
        states = await kill_states(tmp_path, exchange, ["BTCUSDT"], [scope, scope])
        assert any(o.order_id == stuck.order_id for o in book.open_orders())
        assert KillState.FLAT not in states
        assert KillState.CONFIRMED not in states
        assert not any(o.symbol == "BTCUSDT" for o in book.open_orders())
