"""Review 64, of this round's last fixes.

1. `StreamCancels.closed` was set only when stop's grace ran out: after a stop whose kills all
   ended in time, a stream (the venues stop after the engine) could still start a drain, its
   cancel sent after the engine stopped.
2. A refusal of a MEXC cancel narrowed by a re-read (to the symbol still open) marked every
   symbol of the planned request refused: an order placed later on the other symbol was never
   sent a cancel, and the account stopped with it open.
3. Once the Binance session that refused trading dropped, REST's refusal read as a Transient:
   an account whose two routes had both refused was retried until the deadline instead of
   stopping with the refusal.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from killswitch.exchanges.base import Fatal
from killswitch.kill.record import AccountState
from killswitch.model import AccountRef, Mode, Scope, Trigger
from killswitch.sim import mexc as sim_mexc
from killswitch.sim.book import OrderSpec
from killswitch.sim.mexc import MexcSim
from tests.fakes import EventLog
from tests.fixtures.binance import binance_venue
from tests.fixtures.mexc import mexc_sim
from tests.review.helpers import new_order, run_kills
from tests.review.test_found_review59_ws_trading import QUICK as BINANCE_QUICK
from tests.review.test_found_review59_ws_trading import (
    engine_for,
    seed,
    ws_api_unreachable,
)
from tests.review.test_found_review63 import HeldBySymbol
from tests.unit.test_engine import QUICK, finished, kill_trigger, make_rig


async def test_no_stream_cancel_starts_after_the_engine_stopped(tmp_path: Path) -> None:
    venue = HeldBySymbol("binance", "b1")
    rig = await make_rig(tmp_path, {"binance": venue}, config=replace(QUICK, open_for_s=3600.0))
    ref = AccountRef("binance", "b1")
    await rig.engine.submit(kill_trigger("k1", venues=["binance"]))
    await finished(rig, "k1")
    await asyncio.wait_for(rig.engine.stop(grace_s=30.0), 10)  # nothing in flight
    venue.stopped = True
    (x,) = venue.place("BTCUSDT", "bot-x")  # the venues' streams still run
    rig.engine.on_stream_event(ref, new_order(venue, x))
    await asyncio.sleep(0.2)
    assert not rig.engine._streams.tasks
    assert not venue.after_stop


REF = AccountRef("mexc", "acct0")


async def test_a_refusal_of_a_narrowed_mexc_cancel_names_only_what_was_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    symbols = ["AAUSDT", "XXUSDT"]
    cancel = MexcSim._cancel_open_orders
    calls: list[str] = []
    state: dict[str, Any] = {}

    async def handler(
        self: MexcSim, request: web.Request, account: Any, params: dict[str, str]
    ) -> web.Response:
        sent = params.get("symbol", "")
        calls.append(sent)
        if len(calls) == 1:
            raise sim_mexc.MexcError(500, "internal error", status=500)  # outcome unknown
        if "XXUSDT" in sent.split(","):
            if "aa" not in state:  # a bot places on AA meanwhile (no stream in this rig)
                state["aa"] = state["book"].place(OrderSpec("AAUSDT"))
            raise sim_mexc.MexcError(30016, "trading disabled")
        return await cancel(self, request, account, params)

    monkeypatch.setattr(MexcSim, "_cancel_open_orders", handler)
    async with mexc_sim(accounts=1, symbols=symbols) as (sim, connect):
        exchange = connect("acct0", symbols_hint=symbols)
        await exchange.start()
        book = sim.book(sim.accounts["acct0"])
        state["book"] = book
        book.place(OrderSpec("XXUSDT"))
        log = EventLog()
        (kill,) = await run_kills(tmp_path, exchange, symbols, [Scope.of(["mexc"])], log)
        left = sorted(o.symbol for o in book.open_orders())
        assert kill.accounts[REF].state is AccountState.STOPPED
        assert left == ["XXUSDT"], "AA's order was never sent a cancel"


async def test_both_binance_routes_refused_stops_the_account_after_the_session_drops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = {"rest_trading": "disabled", "ws_trading": "disabled"}
    async with binance_venue(1, sim_options=options) as venue:
        seed(venue)
        exchange = await venue.connect("acct0", timeout_s=0.5)
        with pytest.raises(Fatal):  # both routes refuse: known
            await exchange.cancel_order("ETHUSDT", "e1")

        ws_api_unreachable(monkeypatch)  # for good
        assert exchange.session is not None
        await exchange.session.close()  # the session drops, the host stays unreachable
        config = replace(BINANCE_QUICK, deadline_s=6.0)
        async with engine_for(tmp_path, exchange, config) as engine:
            scope = Scope.of(venues=["binance"])
            await engine.submit(Trigger("k5", "r64", Mode.KILL, "r64", scope))
            found = engine.kill_for("k5")
            assert found is not None
            async with asyncio.timeout(30):
                await found.done.wait()
        (result,) = found.accounts.values()
        assert result.state is AccountState.STOPPED, result
