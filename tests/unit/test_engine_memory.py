"""A finished kill keeps its summary, not the orders it met (the daemon runs for months)."""

from __future__ import annotations

import gc
from pathlib import Path

from killswitch.engine import Account, Engine, EngineConfig, KillState
from killswitch.journal import Journal
from killswitch.model import AccountRef, Mode, Order, Scope, Trigger
from tests.fakes import FakeExchange

CONFIG = EngineConfig(deadline_s=10.0, quiet_window_s=0.0, sweep_interval_s=3600.0)


def live_orders() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is Order)


async def test_a_finished_kill_holds_its_counts_but_none_of_the_orders_it_cancelled(
    tmp_path: Path,
) -> None:
    exchange = FakeExchange()
    for i in range(40):
        exchange.place(f"S{i:02d}USDT", n=25)
    engine = Engine(
        [Account(AccountRef("binance", "main"), exchange)], Journal(tmp_path / "j.jsonl"), CONFIG
    )
    await engine.start()
    try:
        baseline = live_orders()
        for n in range(3):
            if n:
                for i in range(40):
                    exchange.place(f"S{i:02d}USDT", n=25)
                await engine.reset(actor="test", reason="next")
            trigger = Trigger(f"k{n}", "test", Mode.KILL, "memory", Scope())
            await engine.submit(trigger)
            kill = engine.kill_for(trigger.id)
            assert kill is not None
            await kill.finished.wait()
            assert kill.state is KillState.CONFIRMED
            assert kill.summary()["accounts"][0]["cancelled"] == 1000  # type: ignore[index]
            assert all(not r.known for r in kill.accounts.values())
        # Three kills of 1000 orders each: what stays alive does not grow with them.
        assert live_orders() - baseline < 1000
    finally:
        await engine.stop(grace_s=1.0)
