"""Found by review 48, in the fixes of reviews 42, 46 and 47 (MEXC):

1. A configured symbol MEXC delisted failed the kill: its five-symbol cancel was refused as a
   bad symbol (Fatal), the other four never cancelled; and a list refused for it turned lists
   off for good. A refused cancel is now split, the delisted symbol cancels nothing, and the
   refusal it explains leaves lists in use.
2. A probe with orders on its first and last symbols taught lists of five, under a reading
   where a list answers only those two: a read of three symbols proved flat over the middle
   one. Only a probe's first symbols, each with orders, teach.
3. A listenKey taken up after an unanswered create may be another client's: it was deleted at
   our shutdown. A key taken up is never deleted by us.
4. MEXC's headroom divided by the venue's whole limit, not this daemon's share of it.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from killswitch.exchanges.base import VenueError
from killswitch.exchanges.budget import Priority, set_fleet
from killswitch.kill.record import KillState
from killswitch.model import Scope
from killswitch.sim import mexc as sim_mexc
from killswitch.sim.book import OrderSpec
from killswitch.sim.mexc import ListenKey, MexcSim
from tests.fixtures.mexc import mexc_sim
from tests.review.helpers import kill_states

GONE = "GONEUSDT"
LIVE = [f"C{i:03d}USDT" for i in range(6)]


def _delisted(monkeypatch: pytest.MonkeyPatch) -> None:
    """GONEUSDT is refused by name (10007) on reads and cancels, and exchangeInfo lacks it."""
    read, cancel = MexcSim._open_orders, MexcSim._cancel_open_orders

    async def refused_read(
        self: MexcSim, request: web.Request, account: Any, params: dict[str, str]
    ) -> web.Response:
        if GONE in params.get("symbol", ""):
            raise sim_mexc.MexcError(10007, "bad symbol")
        return await read(self, request, account, params)

    async def refused_cancel(
        self: MexcSim, request: web.Request, account: Any, params: dict[str, str]
    ) -> web.Response:
        if GONE in params.get("symbol", ""):
            raise sim_mexc.MexcError(10007, "bad symbol")
        return await cancel(self, request, account, params)

    monkeypatch.setattr(MexcSim, "_open_orders", refused_read)
    monkeypatch.setattr(MexcSim, "_cancel_open_orders", refused_cancel)


async def test_a_kill_with_a_configured_delisted_symbol_cancels_the_others_and_confirms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _delisted(monkeypatch)
    configured = [*LIVE, GONE]
    async with mexc_sim(accounts=1, symbols=LIVE) as (sim, connect):
        exchange = connect("acct0", symbols_hint=configured)
        await exchange.start()
        book = sim.book(sim.accounts["acct0"])
        for symbol in LIVE:
            book.place(OrderSpec(symbol))
        (state,) = await kill_states(tmp_path, exchange, configured, [Scope.of(["mexc"])])
        assert not book.open_orders()
        assert state is KillState.CONFIRMED


async def test_a_list_refused_for_a_delisted_symbol_leaves_lists_in_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _delisted(monkeypatch)
    async with mexc_sim(accounts=1, symbols=LIVE) as (sim, connect):
        exchange = connect("acct0", symbols_hint=LIVE)
        await exchange.start()
        for symbol in LIVE[:5]:
            sim.book(sim.accounts["acct0"]).place(OrderSpec(symbol))
        await exchange.snapshot(LIVE)  # the probe beside teaches lists of five
        assert exchange._list_answers == 5
        with pytest.raises(VenueError):
            await exchange.snapshot([LIVE[0], GONE])  # the read that finds it out fails
        assert not exchange._one_symbol_reads
        assert not (await exchange.snapshot([LIVE[0], GONE])).complete  # never proven


SYMS = ["AUSDT", "BUSDT", "CUSDT", "DUSDT", "EUSDT"]


async def test_a_probe_with_orders_on_its_first_and_last_symbols_only_teaches_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = MexcSim._open_orders

    async def first_and_last(
        self: MexcSim, request: web.Request, account: Any, params: dict[str, str]
    ) -> web.Response:
        names = params.get("symbol", "").split(",")
        response = await original(self, request, account, params)
        if len(names) < 2:
            return response
        assert isinstance(response.body, bytes)
        rows = [r for r in orjson.loads(response.body) if r["symbol"] in {names[0], names[-1]}]
        return web.json_response(rows, dumps=lambda o: orjson.dumps(o).decode())

    monkeypatch.setattr(MexcSim, "_open_orders", first_and_last)
    async with mexc_sim(accounts=1, symbols=SYMS) as (sim, connect):
        exchange = connect("acct0", symbols_hint=SYMS)
        await exchange.start()
        book = sim.book(sim.accounts["acct0"])
        book.place(OrderSpec("AUSDT"))
        book.place(OrderSpec("EUSDT"))
        await exchange.snapshot(SYMS)
        book.cancel_symbols(["AUSDT", "EUSDT"], include_lists=True)
        hidden = book.place(OrderSpec("BUSDT"))
        snap = await exchange.snapshot(["AUSDT", "BUSDT", "CUSDT"])
        assert hidden.order_id in {o.order_id for o in snap.orders}


def _busy() -> web.Response:
    return web.json_response({"code": 503, "msg": "busy"}, status=503)


def _a_bots_key(sim: MexcSim, account: str) -> str:
    """A listenKey another client of the UID makes."""
    key = secrets.token_hex(32)
    sim.listen_keys[key] = ListenKey(key, account, time.monotonic() + 3600)
    return key


async def test_a_listen_key_taken_up_is_never_deleted_by_us(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made_by_bot: list[str] = []

    async def a_bot_creates_one_and_ours_is_lost(
        self: MexcSim, request: web.Request, account: Any, params: dict[str, str]
    ) -> web.Response:
        made_by_bot.append(_a_bots_key(self, account.name))
        return _busy()

    monkeypatch.setattr(MexcSim, "_create_listen_key", a_bot_creates_one_and_ours_is_lost)
    async with mexc_sim(accounts=1) as (sim, connect):
        exchange = connect("acct0")
        await exchange.start()
        await exchange._ensure_listen_key()
        await exchange.close()
        assert made_by_bot[0] in sim.listen_keys


async def test_mexc_headroom_is_of_this_daemons_share() -> None:
    set_fleet(2)
    try:
        async with mexc_sim(accounts=1) as (_, connect):
            exchange = connect("acct0")
            budget = exchange.endpoint_budgets.budget("GET /api/v3/openOrders")
            await budget.acquire(225, Priority.KILL)  # all of half of 450
            assert exchange.endpoint_budgets.headroom()["headroom"] == pytest.approx(0.1)
    finally:
        set_fleet(1)


async def test_where_venue_windows_start_is_unknown_a_request_counts_a_window_after_it_lands() -> (
    None
):
    """Review 48: reads at the cap of each of two adjacent windows of ours landed in one of
    MEXC's (its windows may start anywhere in ours): 429s. Review 49: two windows' worth of
    caution halved a kill's throughput, and a step of the venue clock's estimate undid it."""
    from killswitch.exchanges.budget import RateBudget
    from killswitch.exchanges.mexc.connector import MEXC_RATE_LIMITS

    now = [1000.0]
    budget = RateBudget(MEXC_RATE_LIMITS, clock=lambda: 5e9, mono=lambda: now[0])
    await budget.acquire(300, Priority.KILL, in_flight=True)
    now[0] = 1003.0
    budget.landed(300)  # it may have arrived at any time until now
    await budget.acquire(150, Priority.KILL, in_flight=True)
    now[0] = 1004.0
    budget.landed(150)
    assert budget.delay_for(3, Priority.KILL) == pytest.approx(9.101, abs=0.01)
    now[0] = 1013.2  # the first 300 no longer count in any window
    assert budget.delay_for(3, Priority.KILL) == 0
    await budget.acquire(297, Priority.KILL, in_flight=True)
    assert budget.delay_for(9, Priority.KILL) > 0  # 150 + 297 + 9 > 450


async def test_a_delisted_symbol_listed_again_is_read_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review 49: a symbol found delisted stayed so for the daemon's life, its orders unread
    once MEXC listed it again. exchangeInfo is asked again, at most once a minute."""
    from killswitch.exchanges.mexc import reads

    refuse = {"on": True}
    read = MexcSim._open_orders

    async def maybe_refused(
        self: MexcSim, request: web.Request, account: Any, params: dict[str, str]
    ) -> web.Response:
        if refuse["on"] and GONE in params.get("symbol", ""):
            raise sim_mexc.MexcError(10007, "bad symbol")
        return await read(self, request, account, params)

    monkeypatch.setattr(MexcSim, "_open_orders", maybe_refused)
    monkeypatch.setattr(reads, "_RELIST_CHECK_S", 0.0)
    async with mexc_sim(accounts=1, symbols=LIVE) as (sim, connect):
        exchange = connect("acct0", symbols_hint=[GONE])
        await exchange.start()
        with pytest.raises(VenueError):
            await exchange.snapshot([GONE])
        assert not (await exchange.snapshot([GONE])).complete
        refuse["on"] = False
        sim.known_symbols.add(GONE)  # listed again
        order = sim.book(sim.accounts["acct0"]).place(OrderSpec(GONE))
        snap = await exchange.snapshot([GONE])
        assert snap.complete
        assert order.order_id in {o.order_id for o in snap.orders}


async def test_an_unanswered_create_while_another_client_makes_a_key_takes_one_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review 49: with two keys new (ours, and a bot's of the UID) none was taken up, and each
    reconnect of a 5xx storm made another: the leak of review 46 back."""
    original = MexcSim._create_listen_key
    creates = {"n": 0}

    async def ours_lost_and_a_bots_made(
        self: MexcSim, request: web.Request, account: Any, params: dict[str, str]
    ) -> web.Response:
        creates["n"] += 1
        await original(self, request, account, params)  # ours, made...
        _a_bots_key(self, account.name)  # ...and a bot's, meanwhile
        return _busy()

    monkeypatch.setattr(MexcSim, "_create_listen_key", ours_lost_and_a_bots_made)
    async with mexc_sim(accounts=1) as (_, connect):
        exchange = connect("acct0")
        await exchange.start()
        await exchange._ensure_listen_key()
        assert creates["n"] == 1
        await exchange.close()


async def test_a_relisting_check_that_cannot_tell_keeps_the_symbol_delisted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review 50: an exchangeInfo answer that could not tell (a 503) was read as "listed
    again": the symbol was read, refused (Fatal), and a kill's account was stopped."""
    from killswitch.exchanges.mexc import reads

    _delisted(monkeypatch)
    info = MexcSim._exchange_info
    fail = {"on": False}

    async def flaky_info(self: MexcSim, request: web.Request) -> web.Response:
        if fail["on"]:
            return web.json_response({"code": 503, "msg": "busy"}, status=503)
        return await info(self, request)

    monkeypatch.setattr(MexcSim, "_exchange_info", flaky_info)
    async with mexc_sim(accounts=1, symbols=LIVE) as (_, connect):
        exchange = connect("acct0", symbols_hint=[GONE])
        await exchange.start()
        with pytest.raises(VenueError):
            await exchange.snapshot([GONE])
        monkeypatch.setattr(reads, "_RELIST_CHECK_S", 0.0)
        fail["on"] = True
        assert not (await exchange.snapshot([GONE])).complete
        assert GONE in exchange._delisted_symbols


async def test_relisting_checks_go_together_not_one_after_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review 50: due checks ran in series on the kill's path: six slow ones took six times
    as long before any read was sent."""
    import asyncio

    from killswitch.exchanges.mexc import reads

    gone = [f"GONE{i}USDT" for i in range(6)]
    info = MexcSim._exchange_info
    flying = {"now": 0, "most": 0}

    async def slow_info(self: MexcSim, request: web.Request) -> web.Response:
        flying["now"] += 1
        flying["most"] = max(flying["most"], flying["now"])
        await asyncio.sleep(0.2)
        flying["now"] -= 1
        return await info(self, request)

    monkeypatch.setattr(MexcSim, "_exchange_info", slow_info)
    monkeypatch.setattr(reads, "_RELIST_CHECK_S", 0.0)
    async with mexc_sim(accounts=1, symbols=LIVE) as (_, connect):
        exchange = connect("acct0")
        await exchange.start()
        exchange._delisted_symbols.update(gone)
        assert not (await exchange.snapshot(gone)).complete
        assert flying["most"] == len(gone)  # all asked at once


async def test_a_request_never_answered_counts_as_if_it_arrived_as_late_as_it_may() -> None:
    """Review 50: a MEXC request that got no answer may still reach the venue: it counted only
    a window past our giving up."""
    from killswitch.exchanges.mexc.connector import MEXC_RATE_LIMITS
    from killswitch.exchanges.rest import UNANSWERED_LATE_S, EndpointCharges

    now = [100.0]
    charges = EndpointCharges(MEXC_RATE_LIMITS, clock=lambda: 5e9)
    budget = charges.budget("GET /api/v3/openOrders")
    budget.mono = lambda: now[0]
    await charges.acquire("GET", "/api/v3/openOrders", 450, Priority.KILL)
    charges.landed("GET", "/api/v3/openOrders", 450, answered=False)
    now[0] += 10.2  # a window past giving up: it may have arrived since
    assert budget.delay_for(3, Priority.KILL) > 0
    now[0] += UNANSWERED_LATE_S
    assert budget.delay_for(3, Priority.KILL) == 0
