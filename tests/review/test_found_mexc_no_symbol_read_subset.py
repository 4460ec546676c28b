"""Review 37 (residual risk): whether MEXC's `GET /api/v3/openOrders` without a symbol answers
every symbol is unverified (reference §2.3). On a venue where it answers a subset (or nothing),
the connector took the 200 as a whole read: complete, proof of flat for every symbol it did not
show. An account-wide kill was saved only by the planner cancelling every configured and
tracked symbol anyway; an order on a symbol the connector had seen but the planner had not
would have been left open behind a "flat".

The read without a symbol is now checked, in the same round, against the symbols the connector
knows (configured, and seen in reads, cancels and streams) read by name: what the check finds is
returned, and a read that left out an order older than both proves nothing flat. Orders on a
symbol nobody knows remain out of reach of any read but this one.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from killswitch.journal import Journal
from killswitch.kill.config import Account
from killswitch.kill.engine import Engine
from killswitch.kill.record import KillState
from killswitch.model import AccountRef, Mode, Scope, Trigger
from killswitch.sim.book import OrderSpec
from killswitch.sim.mexc import MexcSim
from tests.fixtures.mexc import mexc_sim
from tests.unit.test_engine import QUICK

Shown = Callable[[list[Any]], list[Any]]


def _no_symbol_answers(shown: Shown) -> Any:
    original = MexcSim._open_orders

    async def answer(
        self: MexcSim, request: web.Request, account: Any, params: dict[str, str]
    ) -> web.Response:
        response = await original(self, request, account, params)
        if params.get("symbol"):
            return response
        assert isinstance(response, web.Response)
        assert response.body is not None
        rows = orjson.loads(response.body)  # type: ignore[arg-type]
        return web.json_response(shown(rows), dumps=lambda o: orjson.dumps(o).decode())

    return answer


@pytest.mark.parametrize(
    "shown",
    [
        pytest.param(lambda rows: [r for r in rows if r["symbol"] == "BTCUSDT"], id="subset"),
        pytest.param(lambda rows: [], id="nothing"),
    ],
)
async def test_an_account_wide_mexc_kill_reads_the_known_symbols_beside_the_read_without_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shown: Shown
) -> None:
    monkeypatch.setattr(MexcSim, "_open_orders", _no_symbol_answers(shown))
    async with mexc_sim(accounts=1) as (sim, connect):
        exchange = connect("acct0", symbols_hint=["BTCUSDT", "ETHUSDT"])
        await exchange.start()
        book = sim.book(sim.accounts["acct0"])
        book.place(OrderSpec("BTCUSDT", client_order_id="a1"))
        hidden = book.place(OrderSpec("ETHUSDT", client_order_id="a2")).order_id
        engine = Engine(
            [Account(AccountRef("mexc", "acct0"), exchange, symbols=("BTCUSDT", "ETHUSDT"))],
            Journal(tmp_path / "journal.jsonl"),
            QUICK,
            rng=random.Random(7),
        )
        await engine.start()
        try:
            await engine.submit(Trigger("k1", "test", Mode.KILL, "drawdown", Scope.of(["mexc"])))
            kill = engine.kill_for("k1")
            assert kill is not None
            await kill.finished.wait()
            assert hidden not in book.orders or not book.orders[hidden].is_open, (
                f"kill {kill.state} with ETHUSDT order {hidden} open"
            )
            assert kill.state in (KillState.FLAT, KillState.CONFIRMED)
            assert not book.open_orders()
        finally:
            await engine.stop()


async def test_a_read_without_a_symbol_that_left_out_an_old_order_is_not_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(MexcSim, "_open_orders", _no_symbol_answers(lambda rows: []))
    async with mexc_sim(accounts=1) as (sim, connect):
        exchange = connect("acct0", symbols_hint=["ETHUSDT"])
        await exchange.start()
        book = sim.book(sim.accounts["acct0"])
        placed = book.place(OrderSpec("ETHUSDT"))
        # Placed just now, it may have come between the two reads: no proof of a subset.
        snapshot = await exchange.snapshot()
        assert [o.order_id for o in snapshot.orders] == [placed.order_id]
        assert snapshot.complete
        # Placed a minute ago and left out: the read without a symbol is not every symbol.
        placed.time_ms -= 60_000
        snapshot = await exchange.snapshot()
        assert [o.order_id for o in snapshot.orders] == [placed.order_id]
        assert not snapshot.complete
