"""Review: BingX's documented openOrders row has no `clientOrderID` (reference §3.3; the
official "Current Open Orders" field list), and its stream's client id may be absent (§3.7).
Read as "no client id", such a row never matched a client-id prefix: a prefix-scoped kill
filtered the order out of scope, found the rest empty, and reported flat and then confirmed
while the prefixed order stayed open ("No false flat").

A client id the read did not show is now `UNREAD_CLIENT_ID`, and a read holding one on a symbol
in scope proves nothing flat for a prefix scope (`Scope.undecided`).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from killswitch.exchanges.bingx import parse_execution_report, parse_order
from killswitch.journal import Journal
from killswitch.kill.config import Account, EngineConfig
from killswitch.kill.engine import Engine
from killswitch.kill.planner import in_scope
from killswitch.kill.record import KillState
from killswitch.model import (
    UNREAD_CLIENT_ID,
    AccountRef,
    Mode,
    Scope,
    Snapshot,
    Trigger,
)
from killswitch.sim.bingx import BingxSim
from tests.review.bingx_rig import bingx_with_answers, place

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
    original = BingxSim.order_json

    def order_json(self: BingxSim, order: Any) -> dict[str, Any]:
        row: dict[str, Any] = original(self, order)
        row.pop("clientOrderID", None)  # the documented row
        return row

    monkeypatch.setattr(BingxSim, "order_json", order_json)


async def test_a_prefix_kill_is_not_flat_while_an_order_of_unread_client_id_is_open(
    tmp_path: Path, documented_rows: None
) -> None:
    async with bingx_with_answers() as (sim, exchange, _):
        mine = await place(sim, "BTC-USDT", "strat7_a1")
        theirs = await place(sim, "BTC-USDT", "other_b1")
        engine = Engine(
            [Account(AccountRef("bingx", "bx0"), exchange)],
            Journal(tmp_path / "j.jsonl"),
            CONFIG,
            rng=random.Random(1),
        )
        await engine.start()
        try:
            await engine.submit(Trigger("t-prefix", "test", Mode.KILL, "r", PREFIX))
            kill = engine.kill_for("t-prefix")
            assert kill is not None
            await kill.done.wait()
            book = sim.book(sim.accounts["bx0"])
            still = {o.order_id for o in book.open_orders()}
            # Neither order can be told in scope or not: neither is cancelled, and the kill
            # ends failed, naming both as what may still be open.
            assert {mine, theirs} <= still
            assert kill.state is KillState.FAILED
            result = next(iter(kill.accounts.values()))
            assert result.still_open is not None
            assert not result.still_open.orders
            assert {getattr(x, "order_id", "") for x in result.still_open.undecided} == {
                mine,
                theirs,
            }
        finally:
            await engine.stop(grace_s=1.0)


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
