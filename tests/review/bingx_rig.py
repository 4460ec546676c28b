"""A BingX simulator on loopback with `AnswerOverrides` installed, and a started connector."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from killswitch.exchanges.bingx import BingxExchange
from killswitch.journal import Journal
from killswitch.kill.config import Account, EngineConfig
from killswitch.kill.engine import Engine
from killswitch.kill.record import Kill
from killswitch.model import AccountRef, Mode, Scope, Trigger
from killswitch.sim.bingx import BingxSim
from killswitch.sim.venue import SimAccount, VenueSettings
from killswitch.streams.supervisor import StreamSupervisor
from killswitch.streams.tracker import OrderTracker
from tests.fixtures.answers import AnswerOverrides, install
from tests.fixtures.bingx import ACCOUNT_KEYS, SETTINGS_FIELDS, account_keys, bx_call
from tests.unit.test_engine import QUICK

SPOT = "/openApi/spot/v1"


def bx0_exchange(sim: BingxSim, **options: Any) -> BingxExchange:
    """A connector for the sim's account `bx0` (not started); `options` go to it."""
    api_key, secret = ACCOUNT_KEYS["bx0"]
    return BingxExchange(
        **{
            "account": "bx0",
            "api_key": api_key,
            "api_secret": secret,
            "rest_url": sim.base_url,
            "ws_url": f"{sim.ws_url}/market",
            "timeout_s": 2.0,
            "warm_connections": 1,
            **options,
        }
    )


@asynccontextmanager
async def bingx_with_answers(
    **options: Any,
) -> AsyncIterator[tuple[BingxSim, BingxExchange, AnswerOverrides]]:
    settings_kw = {k: v for k, v in options.items() if k in SETTINGS_FIELDS}
    sim_kw = {k: v for k, v in options.items() if k not in SETTINGS_FIELDS}
    accounts = [SimAccount(name=n, api_key=k, secret=s) for n, k, s in (account_keys(0),)]
    sim = BingxSim(VenueSettings(accounts=accounts, **settings_kw), **sim_kw)
    overrides = install(sim)
    await sim.start()
    exchange = bx0_exchange(sim)
    try:
        await exchange.start()
        yield sim, exchange, overrides
    finally:
        await exchange.close()
        await sim.stop()


async def place(sim: BingxSim, symbol: str, client_order_id: str = "") -> str:
    params = {"symbol": symbol, "side": "BUY", "type": "LIMIT", "price": "100", "quantity": "1"}
    if client_order_id:
        params["newClientOrderId"] = client_order_id
    async with aiohttp.ClientSession() as session:
        _, _, body = await bx_call(session, sim, "POST", f"{SPOT}/trade/order", params)
    assert body["code"] == 0, body
    return str(body["data"]["orderId"])


@asynccontextmanager
async def bingx_engine(
    exchange: BingxExchange, journal: Path, config: EngineConfig, *, seed: int = 1
) -> AsyncIterator[Engine]:
    """A started engine over the one BingX account `bx0`; stopped on exit."""
    engine = Engine(
        [Account(AccountRef("bingx", "bx0"), exchange)],
        Journal(journal),
        config,
        rng=random.Random(seed),
    )
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop(grace_s=1.0)


def without_client_ids(method: Any) -> Any:
    """`method` (a BingX sim answer) with `clientOrderID` taken out of every row, as the
    documented openOrders row has none (reference §3.3)."""

    def answer(self: BingxSim, account: Any, p: dict[str, str]) -> Any:
        body = method(self, account, p)
        for row in body.get("orders", [body]):
            row.pop("clientOrderID", None)
        return body

    return answer


# A latched engine's quick settings: short deadline and quiet window, no sweeps (the stream must
# do what a latch promises).
STREAMED = EngineConfig(
    deadline_s=3.0,
    retry_initial_s=0.02,
    retry_max_s=0.2,
    quiet_window_s=0.2,
    sweep_interval_s=3600.0,
)


@asynccontextmanager
async def streamed_engine(
    tmp_path: Path, **options: Any
) -> AsyncIterator[tuple[BingxSim, Engine, OrderTracker]]:
    """A BingX sim (`options` as for `bingx_with_answers`), and an engine over `bx0` whose
    tracker a live stream supervisor feeds; stopped on exit."""
    async with bingx_with_answers(**options) as (sim, exchange, _):
        ref = AccountRef("bingx", "bx0")
        tracker = OrderTracker(ref)
        engine = Engine(
            [Account(ref, exchange, tracker=tracker)],
            Journal(tmp_path / "j.jsonl"),
            STREAMED,
            rng=random.Random(1),
        )
        await engine.start()
        supervisor = StreamSupervisor(
            exchange, tracker, on_event=engine.on_stream_event, reconcile_interval_s=None
        )
        task = asyncio.create_task(supervisor.run())
        try:
            assert await supervisor.wait_live(10)
            yield sim, engine, tracker
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await engine.stop(grace_s=1.0)


async def bingx_kill(exchange: BingxExchange, journal: Path, scope: Scope) -> Kill:
    """Run one kill of `scope` over the BingX account `bx0` to its end (confirmed or
    failed); the ended kill."""
    async with bingx_engine(exchange, journal, QUICK, seed=7) as engine:
        await engine.submit(Trigger("k1", "test", Mode.KILL, "review", scope))
        kill = engine.kill_for("k1")
        assert kill is not None
        await kill.finished.wait()
        return kill
