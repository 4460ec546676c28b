"""Found by review 43: BingX may show an open order's status as WORKING (the docs' own stream
demo; BingX.Net maps it to open since April 2026, ccxt knows RUNNING). The stream read every
status outside NEW/PENDING/PARTIALLY_FILLED as closed: an order placed under a latch was not
cancelled from the stream, and the tracker dropped it. Every venue now reads an order as closed
only on a status known to end it."""

from __future__ import annotations

from pathlib import Path

import pytest

from killswitch.exchanges import mexc_proto as pb
from killswitch.exchanges.binance.parse import execution_report_event
from killswitch.exchanges.bingx import parse_execution_report
from killswitch.exchanges.mexc.parse import decode_push
from killswitch.model import Mode, OrderEvent, Scope, Trigger
from tests.conftest import eventually
from tests.review.bingx_rig import place, streamed_engine

# The docs' own dataUpdateDemo (docs-v3, 订单更新推送), with status WORKING.
DEMO = {
    "e": "executionReport",
    "E": 1760068118150,
    "s": "SUI-USDT",
    "S": "BUY",
    "o": "LIMIT",
    "q": 5,
    "p": 3.4649,
    "x": "NEW",
    "X": "WORKING",
    "i": 1976495057808654300,
    "l": 0,
    "z": 0,
    "L": 0,
}


@pytest.mark.parametrize("status", ["WORKING", "RUNNING", "PENDING", "NEW", "SOMETHING_NEW"])
def test_a_bingx_status_not_known_to_end_an_order_reads_open(status: str) -> None:
    assert parse_execution_report(DEMO | {"X": status}).is_open


@pytest.mark.parametrize("status", ["FILLED", "CANCELED", "CANCELLED", "FAILED", "EXPIRED"])
def test_a_bingx_status_that_ends_an_order_reads_closed(status: str) -> None:
    assert not parse_execution_report(DEMO | {"X": status}).is_open


def test_a_binance_status_not_known_to_end_an_order_reads_open() -> None:
    report = {"e": "executionReport", "s": "BTCUSDT", "i": 1, "c": "a", "x": "NEW", "E": 1}
    assert execution_report_event(report | {"X": "PENDING_CANCEL"}).is_open
    assert execution_report_event(report | {"X": "A_STATUS_ADDED_LATER"}).is_open
    for closed in ("FILLED", "CANCELED", "REJECTED", "EXPIRED", "EXPIRED_IN_MATCH"):
        assert not execution_report_event(report | {"X": closed}).is_open


def test_a_mexc_status_int_not_known_to_end_an_order_reads_open() -> None:
    def event(status: int) -> OrderEvent:
        wrapper = pb.PushDataV3ApiWrapper(channel=pb.ORDERS_CHANNEL, symbol="BTCUSDT", sendTime=1)
        wrapper.privateOrders.id = "C02__1"
        wrapper.privateOrders.status = status
        decoded = decode_push(bytes(wrapper.SerializeToString()))
        assert isinstance(decoded, OrderEvent)
        return decoded

    assert [event(status).is_open for status in (1, 3, 9)] == [True, True, True]
    assert [event(status).is_open for status in (2, 4, 5)] == [False, False, False]


async def test_a_latched_scope_cancels_a_new_order_whose_status_reads_working(
    tmp_path: Path,
) -> None:
    # no sweeps: the stream must cancel it
    async with streamed_engine(tmp_path, open_status="WORKING") as (sim, engine, _):
        await engine.submit(Trigger("t-latch", "test", Mode.KILL, "r", Scope.of()))
        kill = engine.kill_for("t-latch")
        assert kill is not None
        await kill.finished.wait()
        late = await place(sim, "BTC-USDT", "late1")

        def still_open() -> set[str]:
            return {o.order_id for o in sim.book(sim.accounts["bx0"]).open_orders()}

        await eventually(lambda: late not in still_open())
