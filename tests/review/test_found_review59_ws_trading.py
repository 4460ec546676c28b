"""Review 59, finding 2: a refusal that holds for one Binance route only.

errors.md lists "Rest API trading is not enabled." / "WebSocket API trading is not enabled."
under -1010, -2010 and -2011: "a server that is not configured to allow access to TRADE
endpoints" (cancels are TRADE). The connector fell back to REST only while the ws-api session
was down: a -2011 with that message read as an unknown outcome, so the engine re-read (reads
still worked on the ws-api), saw the orders open and re-sent the cancels on the same session
until the kill's deadline, though REST would have taken them. -1020 "This operation is not
supported." from the ws-api took the same path.

Now a request one route refuses so goes by the other at once (it was refused, not executed),
the session sends no more trading requests, and reads keep using it. When REST refuses trading
and no ws-api session takes it, the refusal stands as `Fatal` and stops the account.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from killswitch.exchanges.base import Fatal
from killswitch.exchanges.binance import BinanceExchange
from killswitch.exchanges.binance import connector as connector_module
from killswitch.exchanges.dialect import BINANCE, classify
from killswitch.journal import Journal
from killswitch.kill.config import Account, EngineConfig
from killswitch.kill.engine import Engine
from killswitch.kill.record import AccountState, Kill, KillState
from killswitch.model import AccountRef, Mode, Scope, Trigger
from killswitch.sim.binance import BinanceSim, BnError
from killswitch.sim.book import OrderSpec
from tests.conftest import eventually
from tests.fixtures.binance import BinanceVenue, binance_venue

QUICK = EngineConfig(
    deadline_s=4.0,
    retry_initial_s=0.02,
    retry_max_s=0.3,
    quiet_window_s=0.2,
    sweep_interval_s=3600.0,
)
WS_TRADES = ("openOrders.cancelAll", "order.cancel", "orderList.cancel")


def seed(venue: BinanceVenue) -> None:
    """Two orders on BTCUSDT, one on ETHUSDT and an OCO list on ETHUSDT, placed directly in
    the book (a server that refuses REST trading would refuse the fixture's own placing)."""
    legs = [
        OrderSpec("ETHUSDT", "SELL", "LIMIT_MAKER", Decimal(200), Decimal(1), "leg-a"),
        OrderSpec("ETHUSDT", "SELL", "STOP_LOSS_LIMIT", Decimal(50), Decimal(1), "leg-b"),
    ]
    venue.sim.seed(
        venue.sim.accounts["acct0"],
        [
            OrderSpec("BTCUSDT", "BUY", price=Decimal(90), client_order_id="b1"),
            OrderSpec("BTCUSDT", "SELL", price=Decimal(110), client_order_id="b2"),
            OrderSpec("ETHUSDT", "BUY", price=Decimal(10), client_order_id="e1"),
        ],
        [(legs, "OCO", "list-1")],
    )


def open_book(venue: BinanceVenue) -> set[Any]:
    return set(venue.sim.book(venue.sim.accounts["acct0"]).open)


def counted(venue: BinanceVenue, route: str, methods: tuple[str, ...]) -> int:
    return sum(venue.sim.counters[f"requests {route} {m}"] for m in methods)


def rest_cancels(venue: BinanceVenue) -> int:
    return sum(
        1
        for e in venue.sim.request_log
        if e.get("method") == "DELETE" and str(e.get("path", "")).startswith("/api/v3/")
    )


def ws_api_unreachable(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """The ws-api host refuses connections until the event returned is set."""
    reachable = asyncio.Event()
    real = connector_module._connect

    async def connect(*args: Any, **kwargs: Any) -> Any:
        if not reachable.is_set():
            raise OSError("connection refused")
        return await real(*args, **kwargs)

    monkeypatch.setattr(connector_module, "_connect", connect)
    return reachable


@contextlib.asynccontextmanager
async def engine_for(
    tmp_path: Path, exchange: BinanceExchange, config: EngineConfig = QUICK
) -> AsyncIterator[Engine]:
    engine = Engine(
        [Account(AccountRef("binance", "acct0"), exchange)],
        Journal(tmp_path / "journal.jsonl"),
        config,
        rng=random.Random(59),
    )
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop(grace_s=1.0)


async def kill(engine: Engine, trigger_id: str) -> Kill:
    trigger = Trigger(
        trigger_id,
        "review59",
        Mode.KILL,
        "r59",
        Scope.of(venues=["binance"]),
        created_ms=int(time.time() * 1000),
    )
    await engine.submit(trigger)
    found = engine.kill_for(trigger_id)
    assert found is not None
    async with asyncio.timeout(30):
        await found.finished.wait()
    return found


def test_route_refusals_are_refusals_not_unknown_outcomes() -> None:
    for code in (-1010, -2010, -2011):
        for msg in ("WebSocket API trading is not enabled.", "Rest API trading is not enabled."):
            assert isinstance(classify(BINANCE, 400, code, msg), Fatal), (code, msg)
    assert isinstance(classify(BINANCE, 400, -1020, "This operation is not supported."), Fatal)


async def test_a_kill_on_a_server_refusing_ws_api_trading_cancels_over_rest(
    tmp_path: Path,
) -> None:
    async with binance_venue(1, sim_options={"ws_trading": "disabled"}) as venue:
        seed(venue)
        exchange = await venue.connect("acct0")
        async with engine_for(tmp_path, exchange) as engine:
            done = await kill(engine, "k1")
            assert done.state in (KillState.FLAT, KillState.CONFIRMED), done.state
            assert not open_book(venue)
            # The first wave's cancels (one per symbol, sent together) were refused on the
            # session; they and every cancel after them went over REST, and the reads stayed
            # on the ws-api.
            refused = counted(venue, "ws", WS_TRADES)
            assert 1 <= refused <= 2
            assert rest_cancels(venue) >= 2
            assert venue.sim.counters["requests ws openOrders.status"] >= 2
            # The session keeps refusing trades of its own accord: a second kill sends none
            # of them on it.
            seed(venue)
            again = await kill(engine, "k2")
            assert again.state in (KillState.FLAT, KillState.CONFIRMED), again.state
            assert not open_book(venue)
            assert counted(venue, "ws", WS_TRADES) == refused
        # Every request's weight landed: nothing is left counted as in flight.
        assert exchange.budget._flying == 0


@pytest.mark.parametrize("method", WS_TRADES)
async def test_each_ws_api_cancel_refused_goes_over_rest_at_once(method: str) -> None:
    async with binance_venue(1, sim_options={"ws_trading": "disabled"}) as venue:
        seed(venue)
        exchange = await venue.connect("acct0")
        (lst,) = venue.sim.book(venue.sim.accounts["acct0"]).open_lists()
        btc = sorted(k for k in open_book(venue) if k[0] == "BTCUSDT")
        if method == "openOrders.cancelAll":
            ack = await exchange.cancel_all(["BTCUSDT"])
            assert len(ack.cancelled) == 2
        elif method == "order.cancel":
            ack = await exchange.cancel_order("BTCUSDT", btc[0][1])
            assert ack.cancelled
        else:
            ack = await exchange.cancel_order_list("ETHUSDT", lst.list_id)
            assert ack.lists_cancelled == (("ETHUSDT", lst.list_id),)
        assert counted(venue, "ws", WS_TRADES) == 1
        assert exchange.session is not None
        assert exchange.session.up
        snap = await exchange.snapshot()  # reads still go on the session
        assert snap.orders
        assert venue.sim.counters["requests ws openOrders.status"] == 1


async def test_an_unsupported_operation_on_the_ws_api_goes_over_rest() -> None:
    async with binance_venue(1) as venue:
        seed(venue)
        original = venue.sim._ws_call

        def unsupported(conn: Any, method: str, params: dict[str, Any]) -> Any:
            if method == "order.cancel":
                raise BnError(400, -1020, "This operation is not supported.")
            return original(conn, method, params)

        venue.sim._ws_call = unsupported  # type: ignore[method-assign]
        exchange = await venue.connect("acct0")
        b1, b2 = sorted(k for k in open_book(venue) if k[0] == "BTCUSDT")
        assert (await exchange.cancel_order("BTCUSDT", b1[1])).cancelled
        assert (await exchange.cancel_order("BTCUSDT", b2[1])).cancelled
        assert venue.sim.counters["requests ws order.cancel"] == 1
        # Only the method the server does not support left the session.
        assert (await exchange.cancel_all(["ETHUSDT"])).cancelled
        assert venue.sim.counters["requests ws openOrders.cancelAll"] == 1
        assert not open_book(venue)


async def test_rest_refusing_trading_while_the_session_reconnects_goes_on_the_ws_api() -> None:
    async with binance_venue(1, sim_options={"rest_trading": "disabled"}) as venue:
        seed(venue)
        exchange = await venue.connect("acct0")
        old = exchange.session
        assert old is not None
        old.draining = True  # serverShutdown: a fresh session is on its way
        old.lost.set()
        b1, _ = sorted(k for k in open_book(venue) if k[0] == "BTCUSDT")
        assert (await exchange.cancel_order("BTCUSDT", b1[1])).cancelled
        assert exchange.session is not old
        assert venue.sim.counters["requests ws order.cancel"] == 1
        assert b1 not in open_book(venue)


async def test_no_route_that_trades_stops_the_account_at_once(tmp_path: Path) -> None:
    options = {"rest_trading": "disabled", "ws_trading": "disabled"}
    async with binance_venue(1, sim_options=options) as venue:
        seed(venue)
        exchange = await venue.connect("acct0")
        with pytest.raises(Fatal) as caught:
            await exchange.cancel_order("ETHUSDT", "e1")
        assert "Rest API trading is not enabled" in caught.value.msg
        assert "WebSocket API trading is not enabled" in caught.value.msg
        # A kill ends stopped, naming the refusal, well before its deadline.
        async with engine_for(tmp_path, exchange, QUICK) as engine:
            done = await kill(engine, "k3")
        assert done.state is KillState.FAILED
        (result,) = done.accounts.values()
        assert result.state is AccountState.STOPPED
        assert open_book(venue)


async def test_rest_refusing_trading_without_the_ws_api_is_fatal() -> None:
    async with binance_venue(1, sim_options={"rest_trading": "disabled"}) as venue:
        seed(venue)
        exchange = await venue.connect("acct0", use_ws_api=False)
        with pytest.raises(Fatal, match="Rest API trading is not enabled"):
            await exchange.cancel_all(["BTCUSDT"])
        assert (await exchange.snapshot()).orders  # reads are not refused


def test_the_switches_take_two_values() -> None:
    from killswitch.sim.venue import VenueSettings

    with pytest.raises(ValueError, match="ws_trading"):
        BinanceSim(VenueSettings(accounts=[]), ws_trading="maybe")


async def test_rest_refusing_trading_while_the_ws_api_is_down_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 63: REST refusing trading while the ws-api session was only reconnecting (its
    host unreachable for longer than `timeout_s`) stopped the account at once, though the
    session came back within the kill's deadline and took the cancels."""
    async with binance_venue(1, sim_options={"rest_trading": "disabled"}) as venue:
        seed(venue)
        exchange = await venue.connect("acct0", timeout_s=0.5)
        assert exchange.session is not None
        reachable = ws_api_unreachable(monkeypatch)
        await exchange.session.close()  # the connection drops; the host stays unreachable
        config = replace(QUICK, deadline_s=30.0)
        async with engine_for(tmp_path, exchange, config) as engine:
            trigger = Trigger("k4", "review63", Mode.KILL, "r63", Scope.of(venues=["binance"]))
            await engine.submit(trigger)
            found = engine.kill_for("k4")
            assert found is not None
            # Refused by REST again and again (each symbol's cancel, retried), not stopped.
            refused_again = lambda: rest_cancels(venue) >= 6  # noqa: E731
            await eventually(lambda: found.done.is_set() or refused_again(), timeout_s=20.0)
            reachable.set()  # the ws-api host is back
            async with asyncio.timeout(30):
                await found.finished.wait()
        assert found.state in (KillState.FLAT, KillState.CONFIRMED), found.accounts
        assert not open_book(venue)
