"""Review 37: BingX's executionReport in Binance's layout (reference §3.7: which field holds
the client id is open; its letters copy Binance's, where `c` is the client id and `C` is ""
except on a cancel). The parser took the first field present, `C`, and read "" ("this order has
none"). With the documented openOrders row (no `clientOrderID`, §3.3) the tracker's "" was
taken as the answer and the venue never asked: a prefix kill reported flat and confirmed with
a prefixed order open, and a latched prefix let a new prefixed order live ("No false flat",
"Latched means latched").

The client id is now the first non-empty value of `C` and `c`; the sim serves the layout as
`client_id_field = "c+C"`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from killswitch.exchanges.bingx import parse_execution_report
from killswitch.kill.record import KillState
from killswitch.model import Mode, Scope, Trigger
from killswitch.sim.bingx import BingxSim
from tests.conftest import eventually
from tests.review.bingx_rig import place, streamed_engine, without_client_ids

PREFIX = Scope.of(client_order_id_prefix="strat7_")


@pytest.fixture
def documented_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """openOrders rows as documented: no client id. `trade/query` still shows it."""
    monkeypatch.setattr(BingxSim, "_open_orders", without_client_ids(BingxSim._open_orders))


def _open(sim: BingxSim) -> set[str]:
    return {o.order_id for o in sim.book(sim.accounts["bx0"]).open_orders()}


async def test_a_prefix_kill_cancels_an_order_whose_event_has_an_empty_capital_c(
    tmp_path: Path, documented_rows: None
) -> None:
    async with streamed_engine(tmp_path, client_id_field="c+C") as (sim, engine, tracker):
        mine = await place(sim, "BTC-USDT", "strat7_a1")
        theirs = await place(sim, "BTC-USDT", "other_b1")
        await eventually(lambda: ("BTC-USDT", mine) in tracker)
        await engine.submit(Trigger("t-prefix", "test", Mode.KILL, "r", PREFIX))
        kill = engine.kill_for("t-prefix")
        assert kill is not None
        await kill.finished.wait()
        assert kill.state in (KillState.FLAT, KillState.CONFIRMED)
        assert _open(sim) == {theirs}


async def test_a_latched_prefix_cancels_a_new_prefixed_order_shown_on_the_stream(
    tmp_path: Path, documented_rows: None
) -> None:
    async with streamed_engine(tmp_path, client_id_field="c+C") as (sim, engine, _):
        await engine.submit(Trigger("t-latch", "test", Mode.KILL, "r", PREFIX))
        kill = engine.kill_for("t-latch")
        assert kill is not None
        await kill.finished.wait()
        late = await place(sim, "BTC-USDT", "strat7_late")
        other = await place(sim, "BTC-USDT", "other_late")
        await eventually(lambda: late not in _open(sim))  # the stream cancel, no sweep
        assert other in _open(sim)


@pytest.mark.parametrize(
    ("fields", "seen"),
    [
        ({"c": "strat7_x", "C": ""}, "strat7_x"),  # Binance's layout, a new order
        ({"c": "cancel9", "C": "strat7_x"}, "strat7_x"),  # ... and its cancel
        ({"C": "strat7_x"}, "strat7_x"),
        ({"c": "strat7_x"}, "strat7_x"),
        ({"c": "", "C": None}, ""),  # present and empty: the order has none
    ],
)
def test_the_client_id_is_the_first_non_empty_of_capital_c_and_c(
    fields: dict[str, Any], seen: str
) -> None:
    report = {"s": "BTC-USDT", "i": 1, "X": "NEW", "x": "NEW", **fields}
    assert parse_execution_report(report).client_order_id == seen
