"""Binance's used weight kept fresh while idle, so a kill after a quiet spell needs no probe.

The weight the venue reports counts every client behind the IP. The connector asks for it
(a ws-api `ping`, weight 1) whenever nobody behind the IP heard it for a while; while it is
fresh and under half of what a kill may spend, the gate lets the whole first wave go at once.
Against the simulator on loopback.
"""

from __future__ import annotations

import asyncio

import pytest

from killswitch.exchanges.base import RateLimits
from killswitch.exchanges.binance import connector as binance_connector
from killswitch.exchanges.budget import RateBudget
from killswitch.kill.config import EngineConfig
from killswitch.kill.gate import Gate
from tests.conftest import eventually
from tests.fixtures.binance import binance_venue

FRESH_S = 0.6  # how long the count is trusted here (5 s in the daemon)
EVERY_S = 0.15  # how often it is asked for here (2 s in the daemon)


def pings(sim: object) -> int:
    log = sim.request_log  # type: ignore[attr-defined]
    return sum(1 for e in log if e["method"] == "WS" and e["path"] == "ping")


@pytest.fixture(autouse=True)
def quick_freshness(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(binance_connector, "HEADROOM_FRESH_S", FRESH_S)


async def test_an_idle_account_keeps_its_headroom_known_and_its_gate_open() -> None:
    async with binance_venue() as venue:
        ex = await venue.connect(keep_fresh_s=EVERY_S)
        gate = Gate(EngineConfig(probe_first=True, open_for_s=0.0), lambda: 0.0, ex.headroom_known)
        # Long past the last answer the start-up brought: only the pings keep it known.
        for _ in range(6):
            await asyncio.sleep(FRESH_S / 2)
            assert ex.headroom_known()
            assert gate.mode == "open"
        assert pings(venue.sim) >= 3


async def test_without_the_pings_an_idle_account_probes() -> None:
    async with binance_venue() as venue:
        ex = await venue.connect(keep_fresh_s=None)
        await asyncio.sleep(FRESH_S * 1.5)
        assert not ex.headroom_known()
        gate = Gate(EngineConfig(probe_first=True, open_for_s=0.0), lambda: 0.0, ex.headroom_known)
        assert gate.mode == "probe"
        assert pings(venue.sim) == 0


async def test_accounts_behind_one_ip_share_the_pings() -> None:
    async with binance_venue(n_accounts=4) as venue:
        for name in venue.accounts:
            await venue.connect(name, keep_fresh_s=EVERY_S)
        before = pings(venue.sim)
        await asyncio.sleep(EVERY_S * 12)
        # One ping per interval for the IP, not one per account (4 would be about 48).
        assert pings(venue.sim) - before <= 20


async def test_weight_spent_by_another_client_behind_the_ip_brings_the_probe_back() -> None:
    limits = RateLimits(weight_per_window=1000, window_s=60.0, kill_headroom=0.1)
    async with binance_venue() as venue:
        ex = await venue.connect(keep_fresh_s=EVERY_S, budget=RateBudget(limits))
        await eventually(ex.headroom_known)
        # The user's own bot (the sim counts a loopback "IP" by its key) reads all open orders
        # (weight 80 each): 560 of the sim's 6000, past half of the 900 a kill may spend under
        # the budget given here.
        for _ in range(7):
            status, _, _ = await venue.rest("acct0", "GET", "/api/v3/openOrders")
            assert status == 200
        await eventually(lambda: not ex.headroom_known())
        gate = Gate(EngineConfig(probe_first=True, open_for_s=0.0), lambda: 0.0, ex.headroom_known)
        assert gate.mode == "probe"
