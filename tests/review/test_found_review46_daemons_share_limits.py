"""Found by review 46: the per-IP budgets live in one process, but a venue counts the whole
IP. Two daemons behind one IP (shards reading the same alert topic, or replicas) each spent the
whole per-IP limit: on the same kill-everything alert, BingX answered 100410s, and one daemon
that never saw the other's kept sending into the disabled period. `limits.daemons` now says how
many daemons spend the same limits; each plans for its share of every budget and error allowance.
Also: configurations BingX cannot hold (more websockets than it allows per IP, dead-man's-switch
re-arms past its per-IP rate) are refused."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from killswitch.exchanges.base import RateLimits
from killswitch.exchanges.bingx import BingxExchange
from killswitch.exchanges.budget import ErrorCounter, RateBudget, set_fleet
from killswitch.exchanges.sliding_budget import SlidingBudget
from killswitch.journal import Journal
from killswitch.kill.config import Account, EngineConfig
from killswitch.kill.engine import Engine
from killswitch.model import AccountRef
from killswitch.settings import Settings
from killswitch.sim.bingx import BingxSim
from killswitch.sim.book import OrderSpec
from killswitch.sim.venue import SimAccount, VenueSettings
from tests.fixtures.bingx import ACCOUNT_KEYS, account_keys
from tests.unit.test_engine import kill_trigger

PER_DAEMON = 3


@pytest.fixture
def two_daemons() -> Iterator[None]:
    set_fleet(2)
    try:
        yield
    finally:
        set_fleet(1)


@pytest.mark.usefixtures("two_daemons")
def test_each_budget_and_allowance_is_cut_to_this_daemons_share() -> None:
    budget = RateBudget(RateLimits(weight_per_window=6000, window_s=60.0))
    assert budget.limits.weight_per_window == 3000
    budget.observe_remaining(5000)  # the venue's count is of the whole IP: 1000 used, shared
    assert budget.used == 500  # out, so the two daemons' additions stay within it (review 49)
    budget.observe_remaining(2000)
    assert budget.used == 2000
    assert SlidingBudget(2, 1.0).rate_per_s < 1.0
    assert ErrorCounter(20, 480.0, reserve=4).limit == 10


@pytest.mark.usefixtures("two_daemons")
async def test_two_shard_daemons_behind_one_ip_earn_no_bingx_throttle(tmp_path: Path) -> None:
    """Two daemons in one process, each its own `ip_scope` (one reaches the sim as 127.0.0.1,
    the other as localhost) as in two processes, both from one IP: the reviewer's case."""
    accounts = [account_keys(i) for i in range(2 * PER_DAEMON)]
    sim = BingxSim(
        VenueSettings(accounts=[SimAccount(name=n, api_key=k, secret=s) for n, k, s in accounts]),
        variant="strictest",
    )
    await sim.start()
    urls = [sim.base_url, sim.base_url.replace("127.0.0.1", "localhost")]
    daemons: list[tuple[list[BingxExchange], Engine]] = []
    try:
        for name, _, _ in accounts:
            sim.seed(
                sim.accounts[name],
                [
                    OrderSpec(symbol, price=Decimal("100"))
                    for symbol in ("BTC-USDT", "ETH-USDT", "SOL-USDT")
                    for _ in range(3)
                ],
            )
        for d in range(2):
            exchanges = []
            for name, _, _ in accounts[d * PER_DAEMON : (d + 1) * PER_DAEMON]:
                key, secret = ACCOUNT_KEYS[name]
                exchange = BingxExchange(
                    account=name,
                    api_key=key,
                    api_secret=secret,
                    rest_url=urls[d],
                    ws_url=f"{sim.ws_url}/market",
                    timeout_s=2.0,
                    warm_connections=1,
                )
                await exchange.start()
                exchanges.append(exchange)
            engine = Engine(
                [Account(AccountRef("bingx", ex.account), ex) for ex in exchanges],
                Journal(tmp_path / f"j{d}.jsonl"),
                EngineConfig(sweep_interval_s=3600.0),
                rng=random.Random(d),
            )
            await engine.start()
            daemons.append((exchanges, engine))
        assert len({ex.ip_scope for exchanges, _ in daemons for ex in exchanges}) == 2
        sim.reset_limits()
        sim.counters.clear()
        await asyncio.gather(*(e.submit(kill_trigger("k1", venues=["bingx"])) for _, e in daemons))
        for _, engine in daemons:
            kill = engine.kill_for("k1")
            assert kill is not None
            await asyncio.wait_for(kill.finished.wait(), 90)
        assert not sim.earned_throttles(ignore=("/trade/order",))
        assert all(not sim.book(a).open_orders() for a in sim.accounts.values())
    finally:
        for exchanges, engine in daemons:
            await engine.stop(grace_s=1.0)
            for exchange in exchanges:
                await exchange.close()
        await sim.stop()


def _settings(accounts: list[dict[str, Any]], daemons: int = 1) -> Settings:
    return Settings.model_validate(
        {"accounts": accounts, "limits": {"daemons": daemons}, "state_dir": "/tmp/x"}
    )


def _bingx(i: int, dms: int = 0) -> dict[str, Any]:
    return {
        "venue": "bingx",
        "name": f"bx{i}",
        "api_key": "k" * 20,
        "api_secret": "s" * 20,
        "dead_mans_switch_s": dms,
    }


def test_more_bingx_streams_than_it_allows_per_ip_are_refused() -> None:
    _settings([_bingx(i) for i in range(30)], daemons=2)
    with pytest.raises(ValueError, match="websockets BingX allows per IP"):
        _settings([_bingx(i) for i in range(31)], daemons=2)


def test_dead_mans_switch_re_arms_past_bingx_per_ip_rate_are_refused() -> None:
    _settings([_bingx(i, dms=20) for i in range(10)])  # 1.5 re-arms a second
    with pytest.raises(ValueError, match="re-arms"):
        _settings([_bingx(i, dms=10) for i in range(6)])
    with pytest.raises(ValueError, match="re-arms"):
        _settings([_bingx(i, dms=20) for i in range(10)], daemons=2)
