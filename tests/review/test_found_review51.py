"""Found by review 51:

1. One configured Binance symbol the venue calls "Invalid symbol." (-1121: a typo, a pair gone)
   made the first wave's cancel-all on it Fatal, and that stopped the whole account: the other
   symbols' cancels were dropped, and orders in scope stayed open (a one-shot cancel cancelled
   nothing). A symbol a venue refuses now fails its own request only, with an alarm.
2. A new in-scope order list on the stream during the quiet window (its list client id has the
   prefix; its legs' venue-made ids do not) did not count as a new order: the kill was
   confirmed after that one window. An open list a running kill covers now counts.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from pathlib import Path

import pytest

from killswitch.journal import Journal
from killswitch.kill.config import Account, EngineConfig
from killswitch.kill.engine import Engine
from killswitch.kill.record import KillState
from killswitch.model import AccountRef, ExecType, ListEvent, Mode, OrderEvent, Scope, Trigger
from tests.fakes import FakeExchange
from tests.fixtures.binance import binance_venue
from tests.unit.test_engine import QUICK, finished, kill_trigger, make_rig


@pytest.mark.parametrize("mode", [Mode.KILL, Mode.CANCEL])
async def test_a_configured_symbol_the_venue_refuses_does_not_stop_the_accounts_kill(
    tmp_path: Path, mode: Mode
) -> None:
    async with binance_venue(1, symbols=["BTCUSDT", "ETHUSDT"]) as venue:
        for _ in range(3):
            await venue.place("acct0", "ETHUSDT")
        await venue.place("acct0", "BTCUSDT")
        exchange = await venue.connect("acct0")
        account = Account(AccountRef("binance", "acct0"), exchange, symbols=("AAAUSDT", "BTCUSDT"))
        engine = Engine(
            [account],
            Journal(tmp_path / "j.jsonl"),
            EngineConfig(deadline_s=5.0, quiet_window_s=0.1, sweep_interval_s=3600.0),
            rng=random.Random(1),
        )
        await engine.start()
        try:
            await engine.submit(Trigger("k1", "t", mode, "x", Scope(), created_ms=0))
            kill = engine.kill_for("k1")
            assert kill is not None
            await kill.finished.wait()
            assert not (await exchange.snapshot()).orders
            assert kill.state in (KillState.FLAT, KillState.CONFIRMED)
        finally:
            await engine.stop()


async def test_a_new_list_in_scope_during_the_quiet_window_is_not_quiet(tmp_path: Path) -> None:
    venue = FakeExchange("binance", "b1")
    venue.place("BTCUSDT", "strat7-", n=2)
    rig = await make_rig(tmp_path, {"binance": venue}, config=replace(QUICK, quiet_window_s=2.0))
    ref = AccountRef("binance", "b1")
    sleep = rig.clock.sleep
    placed: list[str] = []

    async def sleeping(seconds: float) -> None:
        if seconds == 2.0 and not placed:
            # a bot places a list: its list client id has the prefix, its legs' ids do not
            list_id = venue.place_list("ETHUSDT", "strat7-L", "x-auto")
            placed.append(list_id)
            legs = venue.book.lists[list_id].order_ids
            rig.engine.on_stream_event(
                ref, ListEvent("ETHUSDT", list_id, "strat7-L", True, tuple(legs), 1)
            )
            for i, leg in zip("ab", legs, strict=False):
                rig.engine.on_stream_event(
                    ref,
                    OrderEvent(
                        "ETHUSDT", leg, f"x-auto{i}", ExecType.NEW, "NEW", True, 1, list_id=list_id
                    ),
                )
            tasks = list(rig.engine._streams.tasks.values())
            if tasks:
                await asyncio.wait(tasks)
        await sleep(seconds)

    # the quiet window's wait (kill/verdicts.py) goes through the engine's injected sleep
    verdicts = rig.engine._verdicts
    verdicts._run = replace(verdicts._run, sleep=sleeping)
    try:
        await rig.engine.submit(
            kill_trigger("k1", venues=["binance"], client_order_id_prefix="strat7-")
        )
        kill = await finished(rig, "k1")
        assert placed
        assert not venue.book.open_lists(None)  # the stream cancel took the list
        assert kill.state is KillState.CONFIRMED
        assert sum(1 for s in rig.clock.sleeps if s == 2.0) >= 2  # a quiet window after it
    finally:
        await rig.engine.stop()
