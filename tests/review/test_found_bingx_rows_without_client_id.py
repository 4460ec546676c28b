"""Review: BingX's documented openOrders row has no `clientOrderID` (reference §3.3; the
official "Current Open Orders" field list), and its stream's client id may be absent (§3.7).
Read as "no client id", such a row never matched a client-id prefix: a prefix-scoped kill
filtered the order out of scope, found the rest empty, and reported flat and then confirmed
while the prefixed order stayed open ("No false flat").

A client id the read did not show is now `UNREAD_CLIENT_ID`, and a read holding one on a symbol
in scope proves nothing flat for a prefix scope (`Scope.undecided`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from killswitch.exchanges.bingx import parse_execution_report, parse_order
from killswitch.kill.client_ids import fill_client_ids
from killswitch.kill.config import Account, EngineConfig
from killswitch.kill.planner import in_scope
from killswitch.kill.record import KillState
from killswitch.model import (
    UNREAD_CLIENT_ID,
    AccountRef,
    Mode,
    Order,
    OrderKey,
    Scope,
    Snapshot,
    Trigger,
)
from killswitch.sim.bingx import BingxSim
from tests.review.bingx_rig import bingx_engine, bingx_with_answers, place, without_client_ids

CONFIG = EngineConfig(
    deadline_s=2.0,
    retry_initial_s=0.02,
    retry_max_s=0.2,
    quiet_window_s=0.2,
    sweep_interval_s=3600.0,
)
PREFIX = Scope.of(client_order_id_prefix="strat7_")


@pytest.fixture
def documented_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """openOrders rows as documented: no client id. `trade/query` still shows it."""
    monkeypatch.setattr(BingxSim, "_open_orders", without_client_ids(BingxSim._open_orders))


@pytest.fixture
def no_client_ids_anywhere(monkeypatch: pytest.MonkeyPatch, documented_rows: None) -> None:
    monkeypatch.setattr(BingxSim, "_query", without_client_ids(BingxSim._query))


async def _prefix_kill(tmp_path: Path) -> tuple[Any, set[str], str, str]:
    async with bingx_with_answers() as (sim, exchange, _):
        mine = await place(sim, "BTC-USDT", "strat7_a1")
        theirs = await place(sim, "BTC-USDT", "other_b1")
        async with bingx_engine(exchange, tmp_path / "j.jsonl", CONFIG, seed=1) as engine:
            await engine.submit(Trigger("t-prefix", "test", Mode.KILL, "r", PREFIX))
            kill = engine.kill_for("t-prefix")
            assert kill is not None
            await kill.finished.wait()
            still = {o.order_id for o in sim.book(sim.accounts["bx0"]).open_orders()}
            return kill, still, mine, theirs


async def test_a_prefix_kill_asks_the_venue_for_the_client_ids_its_read_did_not_show(
    tmp_path: Path, documented_rows: None
) -> None:
    kill, still, _, theirs = await _prefix_kill(tmp_path)
    assert kill.state in (KillState.FLAT, KillState.CONFIRMED)
    assert still == {theirs}  # the prefixed order cancelled, the other untouched


async def test_a_prefix_kill_is_not_flat_while_an_order_of_unread_client_id_is_open(
    tmp_path: Path, no_client_ids_anywhere: None
) -> None:
    kill, still, mine, theirs = await _prefix_kill(tmp_path)
    # Neither order can be told in scope or not: neither is cancelled, and the kill ends
    # failed, naming both as what may still be open.
    assert {mine, theirs} <= still
    assert kill.state is KillState.FAILED
    result = next(iter(kill.accounts.values()))
    assert result.still_open is not None
    assert not result.still_open.orders
    assert {getattr(x, "order_id", "") for x in result.still_open.undecided} == {mine, theirs}


def test_a_row_without_a_client_id_field_is_unread_and_an_empty_one_is_none() -> None:
    row = {"symbol": "BTC-USDT", "orderId": 1, "status": "NEW"}
    assert parse_order(row).client_order_id == UNREAD_CLIENT_ID
    assert parse_order({**row, "clientOrderID": ""}).client_order_id == ""
    assert parse_order({**row, "clientOrderId": "strat7_x"}).client_order_id == "strat7_x"
    report = {"s": "BTC-USDT", "i": 1, "X": "NEW", "x": "NEW"}
    assert parse_execution_report(report).client_order_id == UNREAD_CLIENT_ID
    assert parse_execution_report({**report, "C": "strat7_x"}).client_order_id == "strat7_x"


def test_a_read_with_an_unread_client_id_proves_a_prefix_scope_nothing() -> None:
    unread = parse_order({"symbol": "BTC-USDT", "orderId": 1, "status": "NEW"})
    snap = Snapshot(orders=(unread,))
    assert not in_scope(PREFIX, snap).complete
    assert in_scope(Scope.of(), snap).complete  # no prefix: the client id does not matter
    assert in_scope(Scope.of(symbols=["ETHUSDT"], client_order_id_prefix="s"), snap).complete


def test_an_empty_prefix_covers_an_unread_client_id() -> None:
    # The one-shot cancel's later waves plan by id under a prefix of "": it covers everything.
    unread = parse_order({"symbol": "BTC-USDT", "orderId": 1, "status": "NEW"})
    every = Scope(client_order_id_prefix="")
    assert every.covers_order(unread)
    assert not every.undecided(unread)
    assert in_scope(every, Snapshot(orders=(unread,))).complete


class _Tracker:
    trusted = True

    def __init__(self, *orders: Order) -> None:
        self.orders = orders

    def as_snapshot(self) -> Snapshot:
        return Snapshot(orders=self.orders)


class _Venue:
    def __init__(self, answers: dict[OrderKey, str]) -> None:
        self.answers = answers
        self.asked: list[OrderKey] = []

    async def client_ids(self, orders: Sequence[Order]) -> dict[OrderKey, str]:
        self.asked += [o.key for o in orders]
        return {o.key: self.answers[o.key] for o in orders if o.key in self.answers}


async def test_client_ids_come_from_the_tracker_first_then_from_the_venue() -> None:
    row = {"symbol": "BTC-USDT", "status": "NEW"}
    a, b, c = (parse_order({**row, "orderId": i}) for i in (1, 2, 3))
    tracker = _Tracker(replace(a, client_order_id="strat7_a"), b)  # b: seen without one
    venue = _Venue({b.key: "other_b"})
    account = Account(AccountRef("bingx", "bx0"), venue, tracker=tracker)  # type: ignore[arg-type]
    filled = await fill_client_ids(PREFIX, Snapshot(orders=(a, b, c)), account)
    assert [o.client_order_id for o in filled.orders] == ["strat7_a", "other_b", UNREAD_CLIENT_ID]
    assert venue.asked == [b.key, c.key]
    # No prefix: client ids do not matter, and nobody is asked.
    assert await fill_client_ids(Scope.of(), Snapshot(orders=(c,)), account) == Snapshot(
        orders=(c,)
    )
    assert venue.asked == [b.key, c.key]


async def test_a_latched_prefix_sweep_cancels_an_order_placed_later_whose_row_hides_its_id(
    tmp_path: Path, documented_rows: None
) -> None:
    """While latched, the sweep is a kill of its own: an order placed after the kill under the
    prefix, shown by openOrders without its client id, is asked for (`trade/query`) and
    cancelled; one of another strategy on the same symbol is left alone."""
    async with (
        bingx_with_answers() as (sim, exchange, _),
        bingx_engine(exchange, tmp_path / "j.jsonl", CONFIG, seed=1) as engine,
    ):
        await engine.submit(Trigger("t-latch", "test", Mode.KILL, "r", PREFIX))
        kill = engine.kill_for("t-latch")
        assert kill is not None
        await kill.finished.wait()
        assert kill.state in (KillState.FLAT, KillState.CONFIRMED)
        late = await place(sim, "BTC-USDT", "strat7_late")
        theirs = await place(sim, "BTC-USDT", "other_late")
        sweeps = await engine.sweep()
        assert len(sweeps) == 1
        assert sweeps[0].state in (KillState.FLAT, KillState.CONFIRMED)
        still = {o.order_id for o in sim.book(sim.accounts["bx0"]).open_orders()}
        assert late not in still
        assert theirs in still
