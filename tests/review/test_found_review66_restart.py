"""Review 66, finding 1: what the venues hold against us was forgotten at a restart.

Budgets, bans, blocks and BingX's error counts lived in memory only, and systemd restarts the
daemon 3 s after it ends. A life that spent most of MEXC's 500 weight per 10 s on one endpoint
was followed by one sending as if fresh (three 429s, then 93 418s); a BingX 418 or error count
was forgotten, and the next life sent into the ban or spent the allowance a second time.
`limits_file.persist_to` now keeps them in a file and seeds the next life's budgets from it.

Each life here is a process of its own: its connectors closed (the last user of the IP's scope
drops every shared budget, as a process that ends does) and the file read again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from killswitch.exchanges import budget, limits_file
from killswitch.exchanges.base import IpBanned, Priority, RateLimited
from killswitch.exchanges.bingx import BingxExchange
from killswitch.exchanges.bingx.venue import ERROR_LOCK_COUNT, OPEN_ORDERS
from killswitch.sim.bingx import ENDPOINT_LIMITS, BingxSim
from killswitch.sim.mexc import MexcSim
from killswitch.sim.ratelimit import BanTracker, Verdict
from killswitch.sim.venue import SimAccount, VenueSettings
from tests.fixtures.answers import install
from tests.fixtures.bingx import ACCOUNT_KEYS, account_keys
from tests.fixtures.mexc import account_settings, mexc_sim
from tests.review.test_found_review66_sweeps import held_by_us


@pytest.fixture
def limits_path(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "venue-limits.json"
    yield path
    limits_file.stop_persisting()


def new_life(path: Path) -> None:
    """What a new process starts with: nothing shared, and the file read again."""
    limits_file.stop_persisting()
    assert not budget._SHARED, "a connector of the last life is still open"
    limits_file.persist_to(path)


def throttled(counters: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counters.items() if "429" in k or "418" in k or "lock" in k}


def aligned_windows(sim: MexcSim) -> None:
    """The sim's fixed 10 s windows start now: a life that follows within one lands in it."""
    spend: Callable[[str, int, float], Verdict] = sim.spend
    start = time.monotonic()

    def from_now(bucket: str, weight: int, now: float) -> Verdict:
        return spend(bucket, weight, now - start)

    sim.spend = from_now  # type: ignore[method-assign]


async def test_a_restart_within_mexc_s_window_waits_for_what_the_last_life_spent(
    limits_path: Path,
) -> None:
    symbols = [f"C{i:03d}USDT" for i in range(130)]
    settings = account_settings(1, symbols=symbols)
    async with mexc_sim(settings=settings, list_read="each") as (sim, connect):
        new_life(limits_path)
        aligned_windows(sim)
        first = connect("acct0", symbols_hint=symbols)
        await first.start()
        await first.snapshot(symbols)  # 130 reads by name: 390 of the endpoint's 500
        await first.close()  # the process ends; systemd starts the next at once

        new_life(limits_path)
        second = connect("acct0", symbols_hint=symbols)
        await second.start()
        snapshot = await second.snapshot(symbols)
        await second.close()
    assert snapshot.complete
    assert throttled(sim.counters) == {}, sim.counters


def bingx_sim() -> BingxSim:
    accounts = [SimAccount(name=n, api_key=k, secret=s) for n, k, s in map(account_keys, (0, 1))]
    sim = BingxSim(VenueSettings(accounts=accounts), empty_read="no_data")
    install(sim)
    return sim


def bingx(sim: BingxSim, account: str = "bx0") -> BingxExchange:
    api_key, secret = ACCOUNT_KEYS[account]
    return BingxExchange(
        account=account,
        api_key=api_key,
        api_secret=secret,
        rest_url=sim.base_url,
        ws_url=f"{sim.ws_url}/market",
        timeout_s=2.0,
        warm_connections=1,
    )


async def reads(exchange: BingxExchange, priority: Priority, n: int) -> int:
    """Read `n` times; how many were answered (the rest held by the connector)."""
    answered = 0
    for _ in range(n):
        try:
            await exchange.snapshot(priority=priority)
        except RateLimited as exc:
            if not held_by_us(exc):
                raise  # the venue refused: fails the test
            continue
        answered += 1
    return answered


async def test_bingx_error_counts_outlive_a_restart(limits_path: Path) -> None:
    # An idle account answers every read "No data", and each answer counts toward the lock.
    sim = bingx_sim()
    await sim.start()
    try:
        for _ in range(2):  # two lives of reconciles, a restart between them
            new_life(limits_path)
            exchange = bingx(sim)
            await exchange.start()
            await reads(exchange, Priority.BACKGROUND, ERROR_LOCK_COUNT + 5)
            assert exchange.errors.count(OPEN_ORDERS) <= ERROR_LOCK_COUNT // 2
            await exchange.close()
        new_life(limits_path)
        exchange = bingx(sim)
        await exchange.start()  # a kill's reads find the allowance the reconciles left them
        assert await reads(exchange, Priority.KILL, 3) == 3
        await exchange.close()
    finally:
        await sim.stop()
    assert throttled(sim.counters) == {}, sim.counters


async def test_a_bingx_ban_in_force_at_start_holds_every_account_behind_the_ip(
    limits_path: Path,
) -> None:
    sim = bingx_sim()
    await sim.start()
    try:
        new_life(limits_path)
        exchange = bingx(sim)
        await exchange.start()
        ban = BanTracker()
        ban.banned_until = time.monotonic() + 300
        key = ACCOUNT_KEYS["bx0"][0]
        for client in (key, *(f"{key} {path}" for path in ENDPOINT_LIMITS)):
            sim.bans[client] = ban  # the sim keys its bans by key and endpoint
        with pytest.raises(IpBanned):
            await exchange.snapshot()
        await exchange.close()

        new_life(limits_path)
        accounts = [bingx(sim, "bx0"), bingx(sim, "bx1")]
        sent = sim.counters.copy()
        for other in accounts:
            with pytest.raises(IpBanned):
                await other.start()  # its clock sync is held: the start fails at once
            with pytest.raises(IpBanned) as held:
                await other.cancel_all(None)
            assert held.value.retry_after_s > 200
        assert sim.counters == sent, "a request went to the banned IP"
        for other in accounts:
            await other.close()
    finally:
        await sim.stop()


@pytest.fixture
def cut_short(limits_path: Path) -> Path:
    """A limits file whose last write was cut short (a full disk, a copy by hand)."""
    limits_path.write_bytes(b'{"version": 1, "entries": [{"scope": ')
    return limits_path


async def test_an_unreadable_limits_file_starts_fresh_with_a_warning(
    cut_short: Path, caplog: pytest.LogCaptureFixture
) -> None:
    limits_path = cut_short
    sim = bingx_sim()
    await sim.start()
    try:
        with caplog.at_level(logging.WARNING, logger="killswitch.exchanges.budget"):
            new_life(limits_path)
        assert any("corrupt" in r.getMessage() for r in caplog.records)
        exchange = bingx(sim)
        await exchange.start()
        assert await reads(exchange, Priority.KILL, 1) == 1
        await exchange.close()
    finally:
        await sim.stop()
    written = orjson.loads(await asyncio.to_thread(limits_path.read_bytes))  # afresh, whole
    assert isinstance(written["entries"], list)
