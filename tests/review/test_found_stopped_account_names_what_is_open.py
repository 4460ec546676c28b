"""Review: an account stopped by a fatal answer before any read of the venue (a refused
cancel-all on the first wave) was reported failed with `orders: []`, `verified: false`: the
report named nothing, though an order was open and the venue would have shown it ("Nothing
acknowledged is forgotten": a failed kill names what is still open).

A stopped account now gets one last read (never a cancel) for its report.
"""

from __future__ import annotations

from pathlib import Path

from killswitch.kill.config import EngineConfig
from killswitch.kill.record import AccountState, KillState
from killswitch.model import AccountRef, Mode, Scope, Trigger
from tests.review.bingx_rig import SPOT, bingx_engine, bingx_with_answers, place

CONFIG = EngineConfig(
    deadline_s=10.0,
    retry_initial_s=0.02,
    retry_max_s=0.2,
    quiet_window_s=0.2,
    sweep_interval_s=3600.0,
)


async def test_an_account_stopped_before_any_read_is_reported_with_what_the_venue_shows(
    tmp_path: Path,
) -> None:
    async with bingx_with_answers() as (sim, exchange, overrides):
        order_id = await place(sim, "BTC-USDT", "strat7_a1")
        overrides.arm(
            "POST",
            f"{SPOT}/trade/cancelOpenOrders",
            200,
            {"code": 100004, "msg": "permission denied", "data": {}},
        )
        ref = AccountRef("bingx", "bx0")
        async with bingx_engine(exchange, tmp_path / "j.jsonl", CONFIG, seed=1) as engine:
            await engine.submit(Trigger("t-stop", "test", Mode.KILL, "r", Scope()))
            kill = engine.kill_for("t-stop")
            assert kill is not None
            await kill.done.wait()
            assert kill.state is KillState.FAILED
            result = kill.accounts[ref]
            assert result.state is AccountState.STOPPED
            assert result.still_open is not None
            assert [o.order_id for o in result.still_open.orders] == [order_id]
            assert result.verified
