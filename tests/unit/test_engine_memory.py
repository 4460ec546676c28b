"""A finished kill keeps its summary, not the orders it met (the daemon runs for months)."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from killswitch.journal import Journal
from killswitch.kill import engine as engine_module
from killswitch.kill.config import Account, EngineConfig
from killswitch.kill.engine import Engine
from killswitch.kill.record import KillState, SubmitResult
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


async def test_kills_kept_for_lookup_are_bounded_and_old_ids_still_deduplicate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "KILLS_KEPT", 5)
    exchange = FakeExchange()
    journal = Journal(tmp_path / "j.jsonl", seen_limit=50)
    engine = Engine([Account(AccountRef("binance", "main"), exchange)], journal, CONFIG)
    await engine.start()
    try:
        for n in range(30):
            exchange.place("BTCUSDT", n=2)
            trigger = Trigger(f"c{n}", "test", Mode.CANCEL, "memory", Scope())
            assert await engine.submit(trigger) is SubmitResult.ACCEPTED
            kill = engine.kill_for(trigger.id)
            assert kill is not None
            await kill.finished.wait()
            assert kill.summary()["accounts"][0]["cancelled"] == 2  # type: ignore[index]
        assert len(engine.kills) <= 5
        assert engine.kill_for("c0") is None
        assert engine.kill_for("c29") is not None
        # Forgotten as a kill, not as an id: a redelivered alert is still a duplicate.
        again = Trigger("c0", "test", Mode.CANCEL, "memory", Scope())
        assert await engine.submit(again) is SubmitResult.DUPLICATE
    finally:
        await engine.stop(grace_s=1.0)
