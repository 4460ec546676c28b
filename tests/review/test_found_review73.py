"""Review 73's findings in the fixes of review 66.

A venue start cut short by `VenueService`'s start timeout left what `_open` had spawned running
(Binance: the ws-api session keeper), and the retried start spawned a second: the two replaced
each other's sessions for the connector's life. A failed start now leaves nothing running.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

import killswitch.app as app
from killswitch.app import VenueService
from killswitch.backoff import Backoff
from killswitch.exchanges import budget, limits_file
from killswitch.exchanges.base import IpBanned
from killswitch.exchanges.binance import session as binance_session
from killswitch.exchanges.binance.connector import BinanceExchange
from killswitch.preflight import run_preflight
from killswitch.settings import Settings
from killswitch.sim.bingx import ENDPOINT_LIMITS, BingxSim
from killswitch.sim.ratelimit import BanTracker
from tests.conftest import eventually
from tests.fixtures.binance import binance_venue
from tests.fixtures.bingx import ACCOUNT_KEYS
from tests.review.test_found_review66_restart import bingx, bingx_sim, new_life


def _keepers(exchange: BinanceExchange) -> int:
    return sum(
        1
        for t in exchange._tasks
        if not t.done() and "_keep_session" in t.get_coro().__qualname__  # type: ignore[union-attr]
    )


async def test_a_start_cut_short_and_retried_keeps_one_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(app, "START_TIMEOUT_S", 1.0)
    async with binance_venue() as venue:
        # The connection-attempt window is full for 2 s more (a flapping network spent it):
        # the start waits for its session past the start timeout.
        window = binance_session.connect_attempts(venue.sim.ws_api_url)
        spent = time.monotonic() - binance_session.CONNECT_WINDOW_S + 2.0
        window._times.extend([spent] * binance_session.CONNECT_ATTEMPTS)
        exchange = venue.exchange(timeout_s=3.0)
        service = VenueService(retry_backoff=lambda: Backoff(initial_s=0.2, max_s=0.2))
        service.exchanges.append(exchange)
        await service.start()
        try:
            assert service.failed_starts == {"binance/acct0": "TimeoutError"}
            assert _keepers(exchange) == 0  # the cut-short start left nothing running
            await eventually(lambda: not service.failed_starts, timeout_s=20.0)
            await eventually(lambda: exchange.session is not None, timeout_s=20.0)
            session = exchange.session
            await asyncio.sleep(1.0)  # a second keeper would have replaced it by now
            assert _keepers(exchange) == 1
            assert exchange.session is session
        finally:
            await service.stop()


async def remember_a_bingx_ban(sim: BingxSim, path: Path) -> None:
    """A daemon's life that earns a BingX ban and keeps it in `path`, then ends; what is
    shared per IP goes with it, as a process of its own that comes after would not have it."""
    new_life(path)
    exchange = bingx(sim)
    await exchange.start()
    ban = BanTracker()
    ban.banned_until = time.monotonic() + 300
    key = ACCOUNT_KEYS["bx0"][0]
    for client in (key, *(f"{key} {p}" for p in ENDPOINT_LIMITS)):
        sim.bans[client] = ban
    with pytest.raises(IpBanned):
        await exchange.snapshot()
    await exchange.close()
    limits_file.stop_persisting()
    budget._SHARED.clear()
    budget._USERS.clear()


def bx0_settings(sim: BingxSim, state_dir: Path) -> Settings:
    """Settings with the sim's BingX account `bx0` alone, state in `state_dir`."""
    key, secret = ACCOUNT_KEYS["bx0"]
    account = {
        "venue": "bingx",
        "name": "bx0",
        "rest_url": sim.base_url,
        "ws_url": f"{sim.ws_url}/market",
        "api_key": key,
        "api_secret": secret,
        "timeout_s": 2.0,
    }
    return Settings(
        state_dir=state_dir,
        accounts=[account],
        control={"socket_path": state_dir / "control.sock"},
    )


async def test_preflight_never_sends_into_a_ban_the_daemon_keeps(tmp_path: Path) -> None:
    """`killswitch preflight` (what `status` sends an operator to for a NOT READY account)
    built connectors that read nothing of `venue-limits.json`: it sent into a ban the daemon
    had written there. It now seeds from the file, and never writes it."""
    path = tmp_path / "venue-limits.json"
    sim = bingx_sim()
    await sim.start()
    try:
        await remember_a_bingx_ban(sim, path)
        kept = path.read_bytes()
        before = dict(sim.counters)
        settings = bx0_settings(sim, tmp_path)
        (result,) = await run_preflight(settings, timeout_s=5.0, daemon_dms={})
        sent = {k: v - before.get(k, 0) for k, v in sim.counters.items() if v != before.get(k, 0)}
        assert sent == {}
        assert not result.ready
        assert "banned" in (result.reason or "").lower()
        assert path.read_bytes() == kept  # the daemon's file is the daemon's
    finally:
        limits_file.stop_persisting()
        await sim.stop()


async def test_a_read_held_by_an_error_allowance_leaves_the_gate_open() -> None:
    """Review 73: a read the BingX error allowance held (`AllowanceHeld`, nothing sent) put
    the account's gate in careful mode, one request at a time for `careful_s`: now routine
    with latched sweeps held at half the allowance, it slowed the next kill's cancels."""
    from killswitch.exchanges.base import AllowanceHeld
    from killswitch.kill.config import EngineConfig
    from killswitch.kill.gate import Gate

    gate = Gate(EngineConfig(probe_first=True), lambda: 120.0, lambda: True)

    async def held() -> None:
        raise AllowanceHeld("error allowance", retry_after_s=30.0)

    with pytest.raises(AllowanceHeld):
        await gate.run(held)
    assert gate.mode == "open"


def test_more_daemons_than_bingx_s_error_allowance_can_share_are_refused() -> None:
    """Review 73: with `limits.daemons` 7 each daemon's share of BingX's 20 error answers was
    2; a kill whose verification and confirming reads were both answered 'No data' held past
    its deadline and ended failed though it had emptied the account; review 75: with 5 or 6,
    after latched sweeps spent their half. Four still share it."""
    bingx = {"venue": "bingx", "name": "bx0", "api_key": "k" * 20, "api_secret": "s" * 20}

    def settings(daemons: int) -> Settings:
        return Settings.model_validate(
            {"accounts": [bingx], "limits": {"daemons": daemons}, "state_dir": "/tmp/x"}
        )

    assert settings(4).limits.daemons == 4
    with pytest.raises(ValueError, match="at most 4 daemons may share BingX accounts"):
        settings(5)  # review 75: after latched sweeps' half, a kill at 5 or 6 had 1 error
    binance = {**bingx, "venue": "binance"}
    assert (
        Settings.model_validate(  # no BingX account: no BingX allowance to share
            {"accounts": [binance], "limits": {"daemons": 7}, "state_dir": "/tmp/x"}
        ).limits.daemons
        == 7
    )
