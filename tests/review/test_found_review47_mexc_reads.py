"""Found by review 47, in the first fix of review 42's MEXC findings:

1. Lists were trusted only once one showed orders on each of five symbols, and the check of a
   read without a symbol then covered 33 symbols: an account-wide kill on 40 known symbols with
   orders on two never proved flat, and the engine's per-symbol fallback reads earned 429s and
   418s. A probe list now teaches as far as its last symbol with an order (two or more needed),
   and until then the check reads one symbol per request, 39 of them.
2. Under the reading where a list is ignored (answered as the read without a symbol is) and
   the read without a symbol leaves a symbol out, a list "showed orders on each" of its symbols
   and was trusted: the kill's read proved flat over an order on a known symbol. A list that
   answers a symbol it did not name is never sent again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from killswitch.kill.record import KillState
from killswitch.model import Scope
from killswitch.sim.book import OrderSpec
from killswitch.sim.mexc import MexcSim
from tests.fixtures.mexc import mexc_sim
from tests.review.helpers import kill_states

MANY = [f"C{i:03d}USDT" for i in range(40)]  # a desk quoting 40 MEXC pairs


@pytest.mark.parametrize("list_read", ["each", "first"])
async def test_an_account_wide_kill_on_forty_symbols_proves_flat_and_earns_no_429(
    tmp_path: Path, list_read: str
) -> None:
    async with mexc_sim(accounts=1, symbols=MANY, list_read=list_read) as (sim, connect):
        exchange = connect("acct0", symbols_hint=MANY)
        await exchange.start()
        book = sim.book(sim.accounts["acct0"])
        book.place(OrderSpec("C000USDT"))
        book.place(OrderSpec("C017USDT"))
        (state,) = await kill_states(tmp_path, exchange, MANY, [Scope.of(["mexc"])])
        assert not [k for k in sim.counters if "429" in k or "418" in k]
        assert not book.open_orders()
        assert state in (KillState.FLAT, KillState.CONFIRMED)


SOME = [f"S{i}XUSDT" for i in range(9)] + ["ZZZUSDT"]
HIDDEN = "ZZZUSDT"


def _lists_ignored_and_the_whole_read_leaves_one_out() -> Any:
    original = MexcSim._open_orders

    async def answer(
        self: MexcSim, request: web.Request, account: Any, params: dict[str, str]
    ) -> web.Response:
        symbol = params.get("symbol", "")
        if symbol and "," not in symbol:
            return await original(self, request, account, params)  # by name: exact
        whole = {k: v for k, v in params.items() if k != "symbol"}
        response = await original(self, request, account, whole)
        assert isinstance(response.body, bytes)
        rows = [r for r in orjson.loads(response.body) if r["symbol"] != HIDDEN]
        return web.json_response(rows, dumps=lambda o: orjson.dumps(o).decode())

    return answer


async def test_a_list_that_answers_symbols_it_did_not_name_is_never_trusted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(MexcSim, "_open_orders", _lists_ignored_and_the_whole_read_leaves_one_out())
    async with mexc_sim(accounts=1, symbols=SOME) as (sim, connect):
        exchange = connect("acct0", symbols_hint=SOME)
        await exchange.start()
        book = sim.book(sim.accounts["acct0"])
        for symbol in SOME[:5]:
            book.place(OrderSpec(symbol))
        await exchange.snapshot()
        hidden = book.place(OrderSpec(HIDDEN))
        snap = await exchange.snapshot()
        assert hidden.order_id in {o.order_id for o in snap.orders} or not snap.complete
        assert exchange._one_symbol_reads
