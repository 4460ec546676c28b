"""Found by review 66: MEXC allows 60 listenKeys per UID, valid 60 min. Every process life
made a new key, and only a graceful stop of a started connector deleted it: a crash loop
(systemd restarts in 3 s; a watchdog abort or an OOM once a minute suffices) leaked one key per
life, and after 60 in an hour the UID could make none, for the daemon's stream and every other
bot's user data on that UID. The daemon now remembers its key in its state directory and the
next life reuses it while MEXC still lists it; a connector whose start failed deletes the key
its stream made; and a UID whose 60 keys are all others' is said, by name, not left silent."""

from __future__ import annotations

import asyncio
import logging
import stat
from pathlib import Path
from typing import cast

import pytest

from killswitch.exchanges import budget
from killswitch.exchanges.base import Fatal
from killswitch.exchanges.factory import build_exchange
from killswitch.exchanges.mexc import MexcExchange
from killswitch.model import StreamSubscribed
from killswitch.sim.mexc import MexcSim
from tests.fixtures.answers import answers
from tests.fixtures.mexc import MexcRawClient, mexc_sim

LIVES = 65  # more than the UID's 60 keys
POSTS = "requests POST /api/v3/userDataStream"


def files_in(directory: Path) -> list[Path]:
    return sorted(directory.iterdir())


def held_keys(sim: MexcSim, account: str = "acct0") -> list[str]:
    return [k.key for k in sim.listen_keys.values() if k.account == account]


async def subscribe(exchange: MexcExchange) -> None:
    """Open the user stream until MEXC acknowledges the subscription; leave it open."""
    stream = exchange.user_stream()
    first = await asyncio.wait_for(anext(stream), 10)
    assert isinstance(first, StreamSubscribed)


async def crash(exchange: MexcExchange) -> None:
    """What SIGKILL leaves: sockets gone, nothing else run (no listenKey DELETE)."""
    for task in list(exchange._tasks):
        task.cancel()
    for ws in list(exchange._streams):
        ws.transport.abort()
    await exchange.transport.close()
    budget.release_shared(exchange.ip_scope)
    exchange._closed = True  # the fixture's close must not run `_shut`: the process is gone


def daemon_connector(sim: MexcSim, state_dir: Path) -> MexcExchange:
    """The acct0 connector as the daemon builds it: by the factory, its key file in the
    state directory (`app.connector`)."""
    account = sim.accounts["acct0"]
    exchange = build_exchange(
        "mexc",
        account="acct0",
        api_key=account.api_key,
        api_secret=account.secret,
        rest_url=sim.base_url,
        ws_url=f"{sim.ws_url}/ws",
        timeout_s=2.0,
        listen_key_path=state_dir / "listen-key-mexc-acct0.json",
    )
    return cast(MexcExchange, exchange)


async def test_a_crash_loop_of_daemon_lives_makes_one_listen_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with mexc_sim(accounts=1) as (sim, _):
        for _life in range(LIVES):
            exchange = daemon_connector(sim, tmp_path)
            try:
                await exchange.start()
                await subscribe(exchange)
            finally:
                await crash(exchange)
        keys = held_keys(sim)
        assert sim.counters[POSTS] == 1, f"{sim.counters[POSTS]} listenKeys made in {LIVES} lives"
        assert len(keys) == 1
        (state,) = files_in(tmp_path)
        assert stat.S_IMODE(state.stat().st_mode) == 0o600
        assert keys[0] not in caplog.text  # a credential-like secret: never logged


async def test_close_after_a_failed_start_deletes_the_key_its_stream_made() -> None:
    async with mexc_sim(accounts=1) as (sim, connect):
        exchange = connect("acct0")
        answers(sim).arm("GET", "/api/v3/time", 503, {"code": 503, "msg": "busy"}, times=1000)
        with pytest.raises(Exception):  # noqa: B017, PT011 - any failure: it is the start's
            await exchange.start()
        answers(sim).armed.clear()
        await subscribe(exchange)  # the daemon's stream runs on a venue whose start failed
        assert len(held_keys(sim)) == 1
        await exchange.close()
        assert held_keys(sim) == [], "the key made after a failed start outlived the connector"


async def test_a_graceful_stop_deletes_the_key_and_the_next_life_makes_one(
    tmp_path: Path,
) -> None:
    async with mexc_sim(accounts=1) as (sim, connect):
        first = connect("acct0", listen_key_path=tmp_path / "key.json")
        await first.start()
        await subscribe(first)
        await first.close()
        assert held_keys(sim) == []
        assert not (tmp_path / "key.json").exists()
        second = connect("acct0", listen_key_path=tmp_path / "key.json")
        await second.start()
        await subscribe(second)
        assert len(held_keys(sim)) == 1
        assert sim.counters[POSTS] == 2


async def test_a_remembered_key_mexc_no_longer_lists_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "key.json"
    async with mexc_sim(accounts=1) as (sim, connect):
        first = connect("acct0", listen_key_path=path)
        await first.start()
        await subscribe(first)
        await crash(first)
        sim.listen_keys.clear()  # expired while no process ran
        second = connect("acct0", listen_key_path=path)
        await second.start()
        await subscribe(second)
        assert sim.counters[POSTS] == 2
        (key,) = held_keys(sim)
        assert key in path.read_text()


async def test_a_corrupt_listen_key_file_is_said_and_a_fresh_key_made(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "key.json"
    path.write_text('{"listen_key": "ab&c=1", "ours": true')
    async with mexc_sim(accounts=1) as (sim, connect):
        exchange = connect("acct0", listen_key_path=path)
        assert any(
            r.levelno == logging.WARNING and "listenKey file corrupt" in r.getMessage()
            for r in caplog.records
        )
        await exchange.start()
        await subscribe(exchange)
        (key,) = held_keys(sim)
        assert key in path.read_text()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_another_clients_key_taken_up_is_reused_but_never_deleted(tmp_path: Path) -> None:
    path = tmp_path / "key.json"
    async with mexc_sim(accounts=1) as (sim, connect), MexcRawClient(sim) as bot:
        _, made, _ = await bot.request("POST", "/api/v3/userDataStream")
        bots_key = made["listenKey"]
        # what a create whose answer was lost leaves (`_taken_up`): a key that may be the bot's
        path.write_text(f'{{"listen_key": "{bots_key}", "ours": false}}')
        exchange = connect("acct0", listen_key_path=path)
        await exchange.start()
        await subscribe(exchange)
        assert sim.counters[POSTS] == 1  # the bot's alone
        await exchange.close()
        assert held_keys(sim) == [bots_key]


async def test_a_uid_whose_60_keys_are_all_others_is_named_as_the_cause(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with mexc_sim(accounts=1) as (sim, connect), MexcRawClient(sim) as bot:
        for _ in range(sim.max_listen_keys):
            status, _, _ = await bot.request("POST", "/api/v3/userDataStream")
            assert status == 200
        exchange = connect("acct0", listen_key_path=tmp_path / "key.json")
        await exchange.start()
        with pytest.raises(Fatal) as refused:
            await subscribe(exchange)
        assert "60 valid listenKeys" in refused.value.msg
        assert any(
            r.levelno == logging.ERROR and "60 valid listenKeys" in r.getMessage()
            for r in caplog.records
        )
        for key in held_keys(sim):
            assert key not in caplog.text
            assert key not in str(refused.value)


async def test_without_a_path_each_life_makes_its_own_key(tmp_path: Path) -> None:
    async with mexc_sim(accounts=1) as (sim, connect):
        for _ in range(2):
            exchange = connect("acct0")
            await exchange.start()
            await subscribe(exchange)
            await crash(exchange)
        assert sim.counters[POSTS] == 2
        assert files_in(tmp_path) == []
