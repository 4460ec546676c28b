"""Found by review 52, of review 51's fix (a symbol a venue refuses fails its own request):

1. An open order in scope whose cancel the venue refuses as a bad symbol (MEXC "symbol not
   support api": placed in the web UI on a pair the API does not serve) was planned again from
   every verification read and refused again, with an alarm, no pause between waves, until the
   deadline: 1,822 refused cancels in 1 s. A request naming only refused symbols is not sent
   again; when nothing else is left to send, the account stops with the refusal.
2. BingX's own codes for a symbol it does not take (100204, 100490) were not among them.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from killswitch.events import EventType
from killswitch.exchanges.base import Fatal
from killswitch.journal import Journal
from killswitch.kill.config import Account, EngineConfig
from killswitch.kill.engine import Engine
from killswitch.kill.record import AccountState, KillState
from killswitch.model import AccountRef, Mode, Scope, Trigger
from tests.fakes import BINGX_CAPS, MEXC_CAPS, EventLog, FakeExchange

QUICK_KILL = EngineConfig(deadline_s=1.0, quiet_window_s=0.1, sweep_interval_s=3600.0)


async def test_a_refused_cancel_is_sent_once_and_the_account_stops(tmp_path: Path) -> None:
    venue = FakeExchange("mexc", "m1", MEXC_CAPS)
    venue.place("WEBONLYUSDT", "strat7-", n=1)
    refused = Fatal("symbol not support api", venue="mexc", code=10007)
    for method in ("cancel_order", "cancel_orders", "cancel_all"):
        venue.fail(method, refused, times=10**9)
    log = EventLog()
    engine = Engine(
        [Account(AccountRef("mexc", "m1"), venue)],
        Journal(tmp_path / "j.jsonl"),
        QUICK_KILL,
        rng=random.Random(1),
    )
    engine.events.add(log)
    await engine.start()
    try:
        scope = Scope(client_order_id_prefix="strat7-")
        await engine.submit(Trigger("k1", "t", Mode.KILL, "x", scope, created_ms=0))
        kill = engine.kill_for("k1")
        assert kill is not None
        await kill.finished.wait()
        alarms = [e for e in log.of(EventType.ALARM.value) if e.get("kill_id") == kill.id]
        cancels = sum(1 for c in venue.calls if c.method.startswith("cancel"))
        assert venue.open_keys()  # nothing could cancel it
        assert kill.state is KillState.FAILED
        assert kill.accounts[AccountRef("mexc", "m1")].state is AccountState.STOPPED
        assert cancels == 1
        assert len(alarms) <= 2
    finally:
        await engine.stop()


@pytest.mark.parametrize("code", [100204, 100490])
async def test_a_symbol_bingx_refuses_does_not_stop_the_accounts_kill(
    tmp_path: Path, code: int
) -> None:
    venue = FakeExchange("bingx", "x1", BINGX_CAPS)
    venue.place("BTC-USDT", "s-", n=3)
    bad = Fatal("symbol not found", venue="bingx", code=code)
    venue.fail("cancel_all", bad, times=10**9, when=lambda a: a[0] == ("AAA-USDT",))
    engine = Engine(
        [Account(AccountRef("bingx", "x1"), venue, symbols=("AAA-USDT", "BTC-USDT"))],
        Journal(tmp_path / "j.jsonl"),
        QUICK_KILL,
        rng=random.Random(1),
    )
    await engine.start()
    try:
        scope = Scope.of(symbols=["AAA-USDT", "BTC-USDT"])
        await engine.submit(Trigger("k1", "t", Mode.CANCEL, "x", scope, created_ms=0))
        kill = engine.kill_for("k1")
        assert kill is not None
        await kill.finished.wait()
        assert not venue.open_keys()
    finally:
        await engine.stop()
