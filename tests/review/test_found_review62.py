"""Review 62, of this round's fixes.

1. Latched sweeps had been made background reads (to leave BingX's error allowance to kills).
   On MEXC a background read without a symbol checks only two known symbols by name and is
   complete all the same: where that read answers a subset (reference §2.3), a sweep reported
   flat, sweep after sweep, over a latched order it did not show. Sweeps read as kills again.
2. A MEXC cancel of one symbol the venue refuses (30000 suspended, 30016 trading disabled)
   was answered with an empty acknowledgement: logged "ok", no alarm, and the kill re-sent it
   wave after wave without a pause until its deadline. Alone, it is now refused as the venue
   said: the kill alarms, does not send it again, and stops the account when nothing else is
   left to cancel.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from killswitch.journal import Journal
from killswitch.kill.config import Account, EngineConfig
from killswitch.kill.engine import Engine
from killswitch.kill.record import AccountState, KillState
from killswitch.model import AccountRef, Mode, Scope, Trigger
from killswitch.sim import mexc as sim_mexc
from killswitch.sim.book import OrderSpec
from killswitch.sim.mexc import MexcSim
from tests.fakes import EventLog
from tests.fixtures.mexc import mexc_sim
from tests.review.helpers import mexc_no_symbol_read, run_kills

REF = AccountRef("mexc", "acct0")


async def test_a_latched_sweep_checks_every_known_mexc_symbol(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    symbols = [f"S{i}USDT" for i in range(10)]
    hidden = "S9USDT"  # the read without a symbol leaves it out
    monkeypatch.setattr(
        MexcSim,
        "_open_orders",
        mexc_no_symbol_read(lambda rows: [r for r in rows if r["symbol"] != hidden]),
    )
    config = EngineConfig(
        deadline_s=5.0,
        retry_initial_s=0.05,
        retry_max_s=0.3,
        quiet_window_s=0.05,
        sweep_interval_s=3600.0,
    )
    async with mexc_sim(accounts=1, symbols=symbols) as (sim, connect):
        exchange = connect("acct0", symbols_hint=symbols)
        await exchange.start()
        engine = Engine(
            [Account(REF, exchange, symbols=tuple(symbols))],
            Journal(tmp_path / "journal.jsonl"),
            config,
            rng=random.Random(3),
        )
        await engine.start()
        book = sim.book(sim.accounts["acct0"])
        try:
            await engine.submit(Trigger("k1", "t", Mode.KILL, "dd", Scope.of(["mexc"])))
            kill = engine.kill_for("k1")
            assert kill is not None
            await kill.finished.wait()
            book.place(OrderSpec(hidden))  # placed while latched; no stream in this rig
            await asyncio.sleep(2.5)  # older than a read's "placed meanwhile" allowance
            (sweep,) = await engine.sweep()
        finally:
            await engine.stop()
        assert not [o for o in book.open_orders() if o.symbol == hidden], sweep.state


@pytest.mark.parametrize(
    ("code", "msg", "only"),
    [(30016, "trading disabled", None), (30000, "suspended transaction for the symbol", "BB")],
)
async def test_a_mexc_symbol_refused_alone_alarms_and_stops_the_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, msg: str, only: str | None
) -> None:
    symbols = ["AAUSDT", "BBUSDT", "CCUSDT"]
    cancel = MexcSim._cancel_open_orders

    async def refused(
        self: MexcSim, request: web.Request, account: Any, params: dict[str, str]
    ) -> web.Response:
        if only is None or f"{only}USDT" in params.get("symbol", "").split(","):
            raise sim_mexc.MexcError(code, msg)
        return await cancel(self, request, account, params)

    monkeypatch.setattr(MexcSim, "_cancel_open_orders", refused)
    async with mexc_sim(accounts=1, symbols=symbols) as (sim, connect):
        exchange = connect("acct0", symbols_hint=symbols)
        await exchange.start()
        book = sim.book(sim.accounts["acct0"])
        for symbol in symbols:
            book.place(OrderSpec(symbol))
        log = EventLog()
        (kill,) = await run_kills(tmp_path, exchange, symbols, [Scope.of(["mexc"])], log)
        assert kill.state is KillState.FAILED
        assert kill.accounts[REF].state is AccountState.STOPPED
        assert log.of("alarm")
        left = {o.symbol for o in book.open_orders()}
        assert left == (set(symbols) if only is None else {f"{only}USDT"})
