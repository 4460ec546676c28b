"""Review (CI, chaos seed 20261140): a BingX kill earned a 100410 on `cancelOrders` on a loaded
machine. The per-second budgets counted a request from when it was sent, 1.1 s apart per slot;
BingX counts it when it arrives. A request held up on the way (a busy loop, a retransmit) and
the one sent 1.1 s after it reached the venue inside one of its seconds ("No ban").

A request now holds its slot until a span after its answer lands, which is after it arrived.
Here every request takes 0 to 600 ms to reach the simulator, drawn per request.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from killswitch.kill.config import EngineConfig
from killswitch.kill.record import KillState
from killswitch.model import Mode, Scope, Trigger
from killswitch.sim.book import OrderSpec
from tests.review.bingx_rig import bingx_engine, bingx_with_answers

CONFIG = EngineConfig(
    deadline_s=60.0,
    retry_initial_s=0.05,
    retry_max_s=0.5,
    quiet_window_s=0.2,
    sweep_interval_s=3600.0,
)
SYMBOLS = [f"C{i:02d}-USDT" for i in range(40)]
KEPT = "KEEP-USDT"  # out of scope: the kill cancels symbol by symbol


@pytest.mark.slow
async def test_a_kill_whose_requests_arrive_late_and_unevenly_earns_no_100410(
    tmp_path: Path,
) -> None:
    async with bingx_with_answers(latency_ms=300.0, jitter_ms=300.0, seed=1) as (sim, exchange, _):
        orders = [OrderSpec(s, price=Decimal(p)) for s in [*SYMBOLS, KEPT] for p in ("1", "2")]
        sim.seed(sim.accounts["bx0"], orders)
        async with bingx_engine(exchange, tmp_path / "j.jsonl", CONFIG, seed=3) as engine:
            await engine.submit(
                Trigger("t-late", "test", Mode.KILL, "r", Scope.of(symbols=SYMBOLS))
            )
            kill = engine.kill_for("t-late")
            assert kill is not None
            await kill.done.wait()
            throttled = {k: v for k, v in sim.counters.items() if "100410" in k or "418" in k}
            assert throttled == {}
            assert kill.state in (KillState.FLAT, KillState.CONFIRMED)
            left = {o.symbol for o in sim.book(sim.accounts["bx0"]).open_orders()}
            assert left == {KEPT}
