"""Review: MEXC counts its limits per endpoint and IP (500 per 10 s each; "keeping on after
429s leads to an IP ban") [MX-DOC "LIMITS"; reference §2.3, §2.5], and Binance its request
weight per IP [BN-REST "LIMITS"]. Each connector kept a budget of its own, so N accounts
behind our IP spent N budgets' worth, and after a 429 only the throttled account held back:
a MEXC kill over six accounts of 100 symbols earned 3 x 429 and then 66-71 x 418, and ended
failed with hundreds of orders open ("No ban").

Every account behind one host now spends the same budgets (`shared_item`). The simulator keys
its limits by API key (loopback clients share one IP); here it counts by address, as the
venue does.
"""

from __future__ import annotations

import random
from decimal import Decimal
from pathlib import Path

import pytest
from aiohttp import web

from killswitch.exchanges.binance import BinanceExchange
from killswitch.journal import Journal
from killswitch.kill.config import Account, EngineConfig
from killswitch.kill.engine import Engine
from killswitch.kill.record import KillState
from killswitch.model import AccountRef, Mode, Scope, Trigger
from killswitch.sim.book import OrderSpec
from killswitch.sim.mexc import MexcSim
from tests.fixtures.mexc import account_settings, mexc_sim

ACCOUNTS = 6
SYMBOLS = [f"C{i:03d}USDT" for i in range(100)]
CONFIG = EngineConfig(
    deadline_s=30.0,
    retry_initial_s=0.05,
    retry_max_s=0.5,
    quiet_window_s=0.2,
    sweep_interval_s=3600.0,
)


@pytest.fixture
def limits_per_ip(monkeypatch: pytest.MonkeyPatch) -> None:
    def client_id(self: MexcSim, request: web.Request) -> str:
        return request.remote or "?"

    monkeypatch.setattr(MexcSim, "client_id", client_id)


@pytest.mark.slow
async def test_a_mexc_kill_over_accounts_behind_one_ip_earns_no_429(
    tmp_path: Path, limits_per_ip: None
) -> None:
    settings = account_settings(ACCOUNTS, symbols=SYMBOLS)
    async with mexc_sim(settings=settings, open_orders_requires_symbol=True) as (sim, connect):
        accounts = []
        for i in range(ACCOUNTS):
            name = f"acct{i}"
            sim.seed(sim.accounts[name], [OrderSpec(s, price=Decimal("1")) for s in SYMBOLS])
            exchange = connect(name, symbols_hint=SYMBOLS)
            await exchange.start()
            # what a stream's first snapshot at start teaches, long before a kill: lists
            # answer each symbol they name (review 42; its probe is tested elsewhere)
            exchange._list_answers = 5
            accounts.append(Account(AccountRef("mexc", name), exchange, symbols=tuple(SYMBOLS)))
        engine = Engine(accounts, Journal(tmp_path / "j.jsonl"), CONFIG, rng=random.Random(3))
        await engine.start()
        try:
            await engine.submit(
                Trigger("t-ip", "test", Mode.KILL, "r", Scope.of(["mexc"], symbols=SYMBOLS))
            )
            kill = engine.kill_for("t-ip")
            assert kill is not None
            await kill.finished.wait()
            throttled = {k: v for k, v in sim.counters.items() if "429" in k or "418" in k}
            assert not throttled
            assert kill.state in (KillState.FLAT, KillState.CONFIRMED)
        finally:
            await engine.stop(grace_s=1.0)


async def test_binance_accounts_behind_one_host_spend_one_weight_budget() -> None:
    def make(account: str, host: str) -> BinanceExchange:
        return BinanceExchange(
            account=account,
            api_key="k",
            api_secret="s",
            rest_url=f"http://{host}:1",
            ws_url=f"ws://{host}:1",
        )

    one, two, elsewhere = make("a", "127.0.0.1"), make("b", "127.0.0.1"), make("c", "127.0.0.2")
    try:
        assert one.budget is two.budget
        assert elsewhere.budget is not one.budget
    finally:
        for exchange in (one, two, elsewhere):
            await exchange.close()
