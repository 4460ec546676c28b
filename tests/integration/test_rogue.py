"""The rogue bot against each venue's simulator: its signed orders land, it keeps going, it
counts refusals, it heeds Retry-After, and stopping it leaves nothing in flight."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from killswitch.sim.faults import Fault, FaultKind
from killswitch.sim.rogue import RogueBot
from killswitch.sim.server import dialect_class
from killswitch.sim.venue import SimAccount, SimVenue, VenueSettings
from tests.conftest import eventually
from tests.fixtures.sim import running

ED25519_PRIVATE = "A5oIUTUTzR+WSVJKdmuuIZROweN9yrHFjiiy02yZuOc="
ED25519_PUBLIC = "5GJRafEdEVw+FZwoQqRGv1MMNQFbTRwZvu22Of5k9Io="


@dataclass(frozen=True)
class VenueCase:
    venue: str
    symbols: tuple[str, ...]
    place_path: str


CASES = [
    VenueCase("binance", ("BTCUSDT", "ETHUSDT"), "/api/v3/order"),
    VenueCase("mexc", ("BTCUSDT", "ETHUSDT"), "/api/v3/order"),
    VenueCase("bingx", ("BTC-USDT", "ETH-USDT"), "/openApi/spot/v1/trade/order"),
]


@pytest.fixture(params=CASES, ids=lambda c: c.venue)
def case(request: pytest.FixtureRequest) -> VenueCase:
    param: VenueCase = request.param
    return param


def settings(**kw: object) -> VenueSettings:
    accounts = [
        SimAccount(name="bot", api_key="rogue-key-0001", secret="rogue-secret-0001"),
        SimAccount(name="ed", api_key="rogue-key-0002", secret=ED25519_PUBLIC, key_type="ed25519"),
    ]
    return VenueSettings(**{"accounts": accounts, "rate_limit_scale": 100.0, **kw})  # type: ignore[arg-type]


@pytest.fixture
async def sim(case: VenueCase) -> AsyncIterator[SimVenue]:
    accounts = settings()
    if case.venue != "binance":
        accounts.accounts = accounts.accounts[:1]
    async with running(dialect_class(case.venue, None)(accounts)) as venue:
        yield venue


def bot(case: VenueCase, sim: SimVenue, **kw: object) -> RogueBot:
    args: dict[str, object] = {
        "venue": case.venue,
        "rest_url": sim.base_url,
        "api_key": "rogue-key-0001",
        "api_secret": "rogue-secret-0001",
        "symbols": case.symbols,
        "rate_per_s": 200.0,
        "client_id_prefix": "rogue_",
        **kw,
    }
    return RogueBot(**args)  # type: ignore[arg-type]


def open_ids(sim: SimVenue, account: str = "bot") -> set[str]:
    return {o.order_id for o in sim.book(sim.accounts[account]).open_orders()}


def open_keys(sim: SimVenue, account: str = "bot") -> set[tuple[str, str]]:
    """Open orders as (symbol, id): Binance numbers orders per symbol, so ids collide."""
    return {(o.symbol, o.order_id) for o in sim.book(sim.accounts[account]).open_orders()}


async def test_every_order_the_bot_counts_as_placed_is_open_on_the_venue(
    case: VenueCase, sim: SimVenue
) -> None:
    rogue = bot(case, sim)
    async with rogue:
        async with asyncio.timeout(30):
            await rogue.wait_placed(20)
    assert rogue.placed >= 20
    assert rogue.rejected == 0
    assert rogue.unknown == 0
    assert set(rogue.placed_ids) == open_ids(sim)
    orders = sim.book(sim.accounts["bot"]).open_orders()
    assert {o.symbol for o in orders} == set(case.symbols)
    assert all(o.client_order_id.startswith("rogue_") for o in orders)
    assert len({o.client_order_id for o in orders}) == len(orders)
    # Stopped means stopped: every attempt reached the venue and nothing more is sent.
    assert sim.counters[f"requests POST {case.place_path}"] == rogue.attempts
    assert not rogue.running


async def test_the_bot_keeps_placing_after_its_orders_are_swept(
    case: VenueCase, sim: SimVenue
) -> None:
    book = sim.book(sim.accounts["bot"])
    async with bot(case, sim) as rogue, asyncio.timeout(30):
        await rogue.wait_placed(5)
        swept = {(o.symbol, o.order_id) for o in book.cancel_symbols(None)}
        assert swept
        await rogue.wait_placed(rogue.placed + 5)
        assert open_keys(sim) - swept
    assert open_keys(sim) == set(rogue.placed_keys) - swept


async def test_a_wrong_secret_makes_every_order_a_rejection(case: VenueCase, sim: SimVenue) -> None:
    async with bot(case, sim, api_secret="not-the-secret") as rogue:
        await eventually(lambda: rogue.rejected >= 5)
    assert rogue.placed == 0
    assert rogue.rejected == rogue.attempts
    assert rogue.throttled == 0
    assert rogue.last_rejection
    assert sim.counters["signature_failures"] == rogue.attempts
    assert open_ids(sim) == set()


async def test_the_bot_waits_out_retry_after_and_is_never_banned(
    case: VenueCase, sim: SimVenue
) -> None:
    fault = Fault(FaultKind.RATE_LIMIT, endpoint=case.place_path, retry_after_s=1, count=1)
    sim.faults.add(fault)
    async with bot(case, sim, rate_per_s=50.0) as rogue, asyncio.timeout(30):
        await eventually(lambda: rogue.throttled == 1)
        await rogue.wait_placed(5)
    assert sim.counters["http 429"] == 1
    assert sim.counters["http 418"] == 0
    assert rogue.throttled == 1


async def test_the_bot_counts_a_5xx_as_unknown_outcome(case: VenueCase, sim: SimVenue) -> None:
    sim.faults.add(Fault(FaultKind.ERROR_AFTER, endpoint=case.place_path, count=3))
    async with bot(case, sim) as rogue, asyncio.timeout(30):
        await rogue.wait_placed(3)
    assert rogue.unknown == 3
    # The 5xx came after the order was placed: the book holds more than the bot counted.
    assert len(open_keys(sim)) == rogue.placed + 3


async def test_an_ed25519_key_places_binance_orders() -> None:
    async with running(dialect_class("binance", None)(settings())) as sim:
        rogue = RogueBot(
            venue="binance",
            rest_url=sim.base_url,
            api_key="rogue-key-0002",
            api_secret=ED25519_PRIVATE,
            key_type="ed25519",
            symbols=["BTCUSDT"],
            rate_per_s=100.0,
        )
        async with rogue, asyncio.timeout(30):
            await rogue.wait_placed(3)
        assert rogue.rejected == 0
        assert set(rogue.placed_ids) == open_ids(sim, "ed")


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"venue": "kraken"}, "unknown venue"),
        ({"venue": "mexc", "key_type": "ed25519"}, "not supported"),
        ({"symbols": []}, "symbols"),
        ({"rate_per_s": 0}, "rate_per_s"),
    ],
)
def test_a_bot_that_cannot_work_is_refused_at_construction(
    kw: dict[str, object], match: str
) -> None:
    args: dict[str, object] = {
        "venue": "binance",
        "rest_url": "http://127.0.0.1:1",
        "api_key": "k",
        "api_secret": ED25519_PRIVATE,
        "symbols": ["BTCUSDT"],
        **kw,
    }
    with pytest.raises(ValueError, match=match):
        RogueBot(**args)  # type: ignore[arg-type]
