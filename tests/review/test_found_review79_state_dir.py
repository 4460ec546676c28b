"""Review 79: two daemons on one state_dir were not refused, and latches were lost.

- Same state_dir, separate control sockets: each compacted the shared journal from its own
  memory, which never held the other's kill: one daemon's acknowledged latch vanished from disk.
- Same config twice (`killswitch run` by hand beside the service): the second unlinked the
  service's control socket and bound its own, and unlinked that too when it stopped; the service
  ran on healthy, unreachable by `killswitch status` and `reset`.

Now `killswitch run` holds an exclusive lock on `state_dir/lock` for its life (a second daemon
exits 2 naming the state_dir and the holder's PID), and a control server never takes a socket
another daemon answers on. Two smaller findings of the same review: `VenueService.stop` swallowed
(with `contextlib.suppress`) a cancel aimed at it, and a stream task that had died with an error
raised out of it before the exchanges were closed; a venue whose start kept failing was written
down in `failed_starts` and shown nowhere.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import pytest

from killswitch.app import VenueService, build_parts
from killswitch.control_client import request
from killswitch.daemon import EXIT_CONFIG, EXIT_OK
from killswitch.handlers.control import ControlError, ControlServer
from killswitch.journal import Journal
from killswitch.kill.config import EngineConfig
from killswitch.kill.engine import Engine
from killswitch.model import AccountRef
from killswitch.settings import Settings
from killswitch.streams.supervisor import StreamState
from tests.conftest import eventually
from tests.fakes import FakeExchange
from tests.integration.test_daemon_lifecycle import (
    NotifyListener,
    Spawn,
    child_env,
    listener,
    spawn,
    write_config,
)

__all__ = ["listener", "spawn"]


async def _status(socket: Path) -> dict[str, object]:
    answer = await asyncio.to_thread(request, socket, {"op": "status"}, timeout_s=10.0)
    assert answer["ok"] is True, answer
    return answer


@pytest.mark.parametrize("own_socket", [True, False], ids=["own-socket", "same-config"])
async def test_a_second_daemon_on_a_state_dir_in_use_exits_2_naming_it_and_the_first_serves_on(
    tmp_path: Path, listener: NotifyListener, spawn: Spawn, own_socket: bool
) -> None:
    config = write_config(tmp_path)
    state_dir, socket = tmp_path / "state", tmp_path / "control.sock"
    second_config = config
    if own_socket:  # the review's first case: only the state_dir is shared
        second_config = tmp_path / "second.toml"
        second_config.write_text(config.read_text().replace(str(socket), str(tmp_path / "b.sock")))
    env = child_env(NOTIFY_SOCKET=str(listener.path))
    first = await spawn("run", "--config", str(config), env=env)
    await eventually(lambda: listener.count("READY=1"), timeout_s=60)

    second = await spawn("run", "--config", str(second_config), env=env)
    await eventually(
        lambda: second.proc.returncode is not None or listener.count("READY=1") > 1,
        timeout_s=60,
    )

    assert second.proc.returncode == EXIT_CONFIG, second.output()
    assert (
        f"config error: state_dir {state_dir} is in use by another killswitch daemon "
        f"(pid {first.proc.pid}, holding {state_dir / 'lock'})"
    ) in second.output()
    assert listener.count("READY=1") == 1
    assert (state_dir / "lock").read_text().strip() == str(first.proc.pid)
    # The first still answers on its socket.
    assert first.proc.returncode is None
    await _status(socket)
    first.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(first.proc.wait(), timeout=30) == EXIT_OK
    # Released with its holder: the next daemon on the state_dir starts.
    third = await spawn("run", "--config", str(second_config), env=env)
    await eventually(lambda: listener.count("READY=1") == 2, timeout_s=60)
    third.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(third.proc.wait(), timeout=30) == EXIT_OK


async def test_a_control_server_refuses_a_socket_another_daemon_answers_on(
    tmp_path: Path,
) -> None:
    path = tmp_path / "control.sock"
    first_engine = Engine([], Journal(tmp_path / "a" / "journal.jsonl"), EngineConfig())
    first = ControlServer(first_engine, path)
    await first.start()
    try:
        second = ControlServer(
            Engine([], Journal(tmp_path / "b" / "journal.jsonl"), EngineConfig()), path
        )
        with pytest.raises(ControlError, match="another daemon is listening there") as refused:
            await second.start()
        assert str(path) in str(refused.value)
        await second.stop()  # the daemon stops a service whose start failed

        assert path.exists()
        assert first.healthy()
        await _status(path)
    finally:
        await first.stop()
    assert not path.exists()


class _DeadStream:
    """A stream supervisor whose run ended with an error."""

    ref = AccountRef("binance", "mm-1")
    state = StreamState.DOWN

    async def run(self) -> None:
        raise RuntimeError("stream task bug")


async def test_venue_stop_closes_the_exchanges_when_a_stream_task_ended_with_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exchange = FakeExchange("binance", "mm-1")
    service = VenueService()
    service.add(exchange, _DeadStream())  # type: ignore[arg-type]
    running = asyncio.create_task(service.run())
    await eventually(lambda: not service.healthy())

    with caplog.at_level(logging.ERROR, logger="killswitch.app"):
        await service.stop()
    await running

    assert exchange.closed
    [record] = [r for r in caplog.records if r.getMessage().startswith("venue task failed")]
    assert record.exc_info is not None
    assert "stream task bug" in str(record.exc_info[1])


async def test_a_venue_whose_start_keeps_failing_is_named_in_status(tmp_path: Path) -> None:
    settings = Settings(
        state_dir=tmp_path / "state",
        accounts=[
            {
                "venue": "binance",
                "name": "mm-1",
                "api_key": "k",
                "api_secret": "s",
                "rest_url": "http://127.0.0.1:9",  # nothing listens: every start fails
                "ws_url": "ws://127.0.0.1:9/ws-api/v3",
            }
        ],
        control={"socket_path": tmp_path / "control.sock"},
    )
    parts = build_parts(settings)
    await parts.venues.start()
    try:
        assert list(parts.venues.failed_starts) == ["binance/mm-1"]
        (entry,) = parts.engine.status()["accounts"]  # type: ignore[misc]
        assert entry["ready"] is False
        assert entry["reason"].startswith("venue start failed (")
        assert "binance/mm-1=down (start failing: " in parts.venues.status()
    finally:
        await parts.venues.stop()
        parts.audit.close()
