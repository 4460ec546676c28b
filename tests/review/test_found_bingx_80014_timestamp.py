"""Review: BingX's error table on every spot trade endpoint reads "80014 timestamp is
invalid" (Current Open Orders, Cancel all Open Orders, Query Order details...). The dialect
took every 80014 as Fatal ("invalid parameter"), so one clock hiccup stopped the account for
the whole kill instead of resyncing the clock and retrying (DESIGN: ClockSkew).
"""

from __future__ import annotations

from pathlib import Path

from killswitch.exchanges.base import ClockSkew, Fatal
from killswitch.exchanges.bingx.errors import classify
from killswitch.kill.config import EngineConfig
from killswitch.kill.record import KillState
from killswitch.model import Mode, Scope, Trigger
from tests.review.bingx_rig import SPOT, bingx_engine, bingx_with_answers, place

CONFIG = EngineConfig(
    deadline_s=10.0,
    retry_initial_s=0.02,
    retry_max_s=0.2,
    quiet_window_s=0.2,
    sweep_interval_s=3600.0,
)


def test_80014_timestamp_is_invalid_is_a_clock_error_and_other_80014s_stay_fatal() -> None:
    assert isinstance(classify(200, 80014, "timestamp is invalid"), ClockSkew)
    assert isinstance(classify(200, 80014, "invalid parameter"), Fatal)


async def test_one_80014_timestamp_answer_does_not_stop_the_kill(tmp_path: Path) -> None:
    async with bingx_with_answers() as (sim, exchange, overrides):
        order_id = await place(sim, "BTC-USDT")
        overrides.arm(
            "POST",
            f"{SPOT}/trade/cancelOpenOrders",
            200,
            {"code": 80014, "msg": "timestamp is invalid", "data": {}},
        )
        async with bingx_engine(exchange, tmp_path / "j.jsonl", CONFIG, seed=1) as engine:
            await engine.submit(Trigger("t-80014", "test", Mode.KILL, "r", Scope()))
            kill = engine.kill_for("t-80014")
            assert kill is not None
            await kill.done.wait()
            assert kill.state in (KillState.FLAT, KillState.CONFIRMED)
            assert order_id not in {o.order_id for o in sim.book(sim.accounts["bx0"]).open_orders()}
