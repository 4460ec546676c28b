"""Review 65, of review 64's fix: a Binance ws-api refusal of trading, remembered so that both
routes refusing stops the account even once the refusing session dropped, was remembered for
good. After the operator turned ws-api trading on and a new session came up, a kill that came
while that session reconnected (REST still refusing trading) stopped the account with its
orders open. A new session is asked afresh: the memory lasts until one is installed."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from killswitch.exchanges.base import Fatal
from killswitch.kill.record import AccountState
from killswitch.model import Mode, Scope, Trigger
from tests.conftest import eventually
from tests.fixtures.binance import binance_venue
from tests.review.test_found_review59_ws_trading import (
    QUICK,
    engine_for,
    open_book,
    rest_cancels,
    seed,
    ws_api_unreachable,
)


async def test_a_ws_api_refusal_is_not_held_against_a_new_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = {"rest_trading": "disabled", "ws_trading": "disabled"}
    async with binance_venue(1, sim_options=options) as venue:
        seed(venue)
        exchange = await venue.connect("acct0", timeout_s=0.5)
        with pytest.raises(Fatal):  # both routes refuse
            await exchange.cancel_order("ETHUSDT", "e1")
        venue.sim.ws_trading = "enabled"  # the operator turns ws-api trading on
        old = exchange.session
        assert old is not None
        await old.close()
        await eventually(
            lambda: exchange.session not in (None, old) and exchange.session.up,  # type: ignore[union-attr]
            timeout_s=10.0,
        )
        reachable = ws_api_unreachable(monkeypatch)
        assert exchange.session is not None
        await exchange.session.close()  # the new session drops; its host is unreachable
        refused_before = rest_cancels(venue)
        async with engine_for(tmp_path, exchange, replace(QUICK, deadline_s=30.0)) as engine:
            await engine.submit(Trigger("k1", "r65", Mode.KILL, "r65", Scope.of(["binance"])))
            found = engine.kill_for("k1")
            assert found is not None
            # REST refused each symbol's cancel, and again after waiting out a session in
            # vain: the refusal was not taken for both routes'.
            await eventually(
                lambda: found.done.is_set() or rest_cancels(venue) >= refused_before + 4,
                timeout_s=20.0,
            )
            reachable.set()  # the host is back: the session reconnects
            async with asyncio.timeout(30):
                await found.done.wait()
        (result,) = found.accounts.values()
        assert result.state is not AccountState.STOPPED, result.error
        assert not open_book(venue)
