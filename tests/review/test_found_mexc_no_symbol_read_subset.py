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

import asyncio
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from killswitch.journal import Journal
from killswitch.kill.config import Account
from killswitch.kill.engine import Engine
from killswitch.kill.record import KillState
from killswitch.model import AccountRef, Mode, Scope, Trigger
from killswitch.sim import mexc as sim_mexc
from killswitch.sim.book import OrderSpec
from killswitch.sim.mexc import MexcSim
from tests.fixtures.mexc import mexc_sim
from tests.review.helpers import mexc_no_symbol_read
from tests.unit.test_engine import QUICK

Shown = Callable[[list[Any]], list[Any]]


def _no_symbol_answers(shown: Shown) -> Any:
    return mexc_no_symbol_read(shown)


async def _kill_both_symbols(tmp_path: Path, exchange: Any, scope: Scope) -> Any:
    """Kill `scope` on one MEXC account configured with BTCUSDT and ETHUSDT; the ended kill."""
    engine = Engine(
        [Account(AccountRef("mexc", "acct0"), exchange, symbols=("BTCUSDT", "ETHUSDT"))],
        Journal(tmp_path / "journal.jsonl"),
        QUICK,
        rng=random.Random(7),
    )
    await engine.start()
    try:
        await engine.submit(Trigger("k1", "test", Mode.KILL, "drawdown", scope))
        kill = engine.kill_for("k1")
        assert kill is not None
        await kill.finished.wait()
        return kill
    finally:
        await engine.stop()


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
        kill = await _kill_both_symbols(tmp_path, exchange, Scope.of(["mexc"]))
        assert hidden not in book.orders or not book.orders[hidden].is_open, (
            f"kill {kill.state} with ETHUSDT order {hidden} open"
        )
        assert kill.state in (KillState.FLAT, KillState.CONFIRMED)
        assert not book.open_orders()


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


async def test_a_read_without_a_symbol_caught_answering_a_subset_is_never_proof_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review 38: the check's finding was forgotten. Once our own cancels emptied the known
    symbols, the next read without a symbol and its check agreed on nothing open, and proved
    flat with an order open on a symbol nobody knew. A subset, confirmed, is now remembered."""
    monkeypatch.setattr(MexcSim, "_open_orders", _no_symbol_answers(lambda rows: []))
    async with mexc_sim(accounts=1) as (sim, connect):
        exchange = connect("acct0", symbols_hint=["BTCUSDT"])
        await exchange.start()
        book = sim.book(sim.accounts["acct0"])
        known = book.place(OrderSpec("BTCUSDT"))
        hidden = book.place(OrderSpec("ETHUSDT"))
        known.time_ms -= 60_000
        hidden.time_ms -= 60_000
        assert not (await exchange.snapshot()).complete
        await exchange.cancel_all(["BTCUSDT"])
        again = await exchange.snapshot()
        assert book.orders[hidden.order_id].is_open
        assert not again.complete
        assert exchange.capabilities.open_orders_without_symbol is False


async def test_an_order_cancelled_between_a_read_and_its_check_confirms_no_subset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check by symbol saw an old order that was cancelled before the read without a symbol
    was answered: that read was right, and stays in use."""
    original = MexcSim._open_orders
    cancelled: list[str] = []

    async def racing(
        self: MexcSim, request: web.Request, account: Any, params: dict[str, str]
    ) -> web.Response:
        if not params.get("symbol") and not cancelled:
            await asyncio.sleep(0.05)  # the check by symbol is answered first
            book = self.book(account)
            for order in book.open_orders():
                book.cancel(order.order_id)
                cancelled.append(order.order_id)
        return await original(self, request, account, params)

    monkeypatch.setattr(MexcSim, "_open_orders", racing)
    async with mexc_sim(accounts=1) as (sim, connect):
        exchange = connect("acct0", symbols_hint=["BTCUSDT"])
        await exchange.start()
        book = sim.book(sim.accounts["acct0"])
        book.place(OrderSpec("BTCUSDT")).time_ms -= 60_000
        first = await exchange.snapshot()
        assert cancelled
        assert not first.complete  # what the check saw is not explained: no proof this time
        assert exchange.capabilities.open_orders_without_symbol is True
        assert (await exchange.snapshot()).complete


def _get_takes_one_symbol() -> Any:
    original = MexcSim._open_orders

    async def answer(
        self: MexcSim, request: web.Request, account: Any, params: dict[str, str]
    ) -> web.Response:
        if "," in params.get("symbol", ""):
            raise sim_mexc.MexcError(10007, "bad symbol")  # the GET's table: one symbol
        return await original(self, request, account, params)

    return answer


@pytest.mark.parametrize("requires_symbol", [False, True])
async def test_kills_end_flat_where_the_read_takes_one_symbol(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, requires_symbol: bool
) -> None:
    """Review 38: the GET's own table takes one symbol; only a changelog says five. Read as the
    table says, a list was refused as a bad symbol (Fatal: the account stopped), so a kill of
    two symbols could never end. A list refused is read one symbol per request from then on."""
    monkeypatch.setattr(MexcSim, "_open_orders", _get_takes_one_symbol())
    async with mexc_sim(accounts=1, open_orders_requires_symbol=requires_symbol) as (
        sim,
        connect,
    ):
        exchange = connect("acct0", symbols_hint=["BTCUSDT", "ETHUSDT"])
        await exchange.start()
        book = sim.book(sim.accounts["acct0"])
        book.place(OrderSpec("BTCUSDT"))
        book.place(OrderSpec("ETHUSDT"))
        scope = Scope.of(["mexc"], symbols=["BTCUSDT", "ETHUSDT"])
        kill = await _kill_both_symbols(tmp_path, exchange, scope)
        assert not book.open_orders()
        assert kill.state in (KillState.FLAT, KillState.CONFIRMED)
