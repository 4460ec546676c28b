"""Daemon lifecycle: a real `killswitch run` under a real notify socket and real signals, and
the Daemon's shutdown rules (grace period, critical work, forced exit) with fake services."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from secrets import token_hex

import orjson
import pytest

from killswitch.daemon import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_FORCED,
    EXIT_OK,
    CriticalTasks,
    Daemon,
    Service,
)
from killswitch.notify import Notifier
from tests.conftest import eventually

SECRET = "do-not-print-this-secret-5b1f0c"
API_KEY = "do-not-print-this-key-77aa21"


class NotifyListener:
    """The systemd side of the notify protocol: a bound AF_UNIX datagram socket, read as
    datagrams arrive (like systemd, so the sender never finds the queue full)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.sock.fileno(), self.drain)

    def drain(self) -> list[str]:
        """Read every datagram sent so far; return the new ones."""
        new = []
        while True:
            try:
                new.append(self.sock.recv(65536).decode())
            except BlockingIOError:
                break
        self.messages.extend(new)
        return new

    def count(self, line: str) -> int:
        self.drain()
        return sum(line in m.splitlines() for m in self.messages)

    def statuses(self) -> list[str]:
        self.drain()
        return [
            line.removeprefix("STATUS=")
            for m in self.messages
            for line in m.splitlines()
            if line.startswith("STATUS=")
        ]

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


@pytest.fixture
async def listener(tmp_path: Path) -> AsyncIterator[NotifyListener]:
    sock = NotifyListener(tmp_path / "notify.sock")
    yield sock
    sock.close()


# -- the real daemon in a subprocess ----------------------------------------------------------


def write_config(
    tmp_path: Path,
    extra: str = "",
    *,
    rest_url: str = "http://127.0.0.1:9",
    ws_url: str = "ws://127.0.0.1:9/ws-api/v3",
    keys: str = f'api_key = "{API_KEY}"\napi_secret = "{SECRET}"',
) -> Path:
    path = tmp_path / "killswitch.toml"
    path.write_text(
        f"""
state_dir = "{tmp_path / "state"}"

[[accounts]]
venue = "binance"
name = "drill"
rest_url = "{rest_url}"
ws_url = "{ws_url}"
{keys}

[kafka]
enabled = false

[engine]
grace_period_s = 30.0

[control]
socket_path = "{tmp_path / "control.sock"}"
{extra}
"""
    )
    return path


@dataclass(frozen=True)
class SimBinance:
    rest_url: str
    ws_api_url: str
    api_key: str
    secret: str


@pytest.fixture
async def sim_binance(tmp_path: Path) -> AsyncIterator[SimBinance]:
    """A `killswitch sim` subprocess serving Binance spot with one fresh HMAC account."""
    api_key, secret = token_hex(32), token_hex(32)
    config = tmp_path / "sim.toml"
    config.write_text(
        f"""
host = "127.0.0.1"
[venues.binance]
port = 0
symbols = ["BTCUSDT"]
[[venues.binance.accounts]]
name = "drill"
api_key = "{api_key}"
secret = "{secret}"
"""
    )
    with (tmp_path / "sim.err").open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            *killswitch_command(),
            "sim",
            "--config",
            str(config),
            env=child_env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
        assert line, (tmp_path / "sim.err").read_text()
        venue = orjson.loads(line)
        yield SimBinance(venue["rest_url"], venue["ws_api_url"], api_key, secret)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            await asyncio.wait_for(proc.wait(), timeout=30)


def killswitch_command() -> list[str]:
    script = Path(sys.executable).parent / "killswitch"
    return [str(script)] if script.exists() else [sys.executable, "-m", "killswitch"]


def child_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith("KILLSWITCH_")
        and k not in {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "CREDENTIALS_DIRECTORY"}
    }
    env.update(extra)
    return env


@dataclass
class Child:
    proc: asyncio.subprocess.Process
    out: Path
    err: Path

    def output(self) -> str:
        return self.out.read_text() + self.err.read_text()

    def records(self) -> list[dict[str, object]]:
        return [orjson.loads(line) for line in self.out.read_text().splitlines()]


Spawn = Callable[..., Awaitable[Child]]


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Spawn]:
    children: list[Child] = []

    async def start(*args: str, env: dict[str, str]) -> Child:
        out, err = tmp_path / f"out{len(children)}.log", tmp_path / f"err{len(children)}.log"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                *killswitch_command(), *args, env=env, stdout=stdout, stderr=stderr
            )
        child = Child(proc, out, err)
        children.append(child)
        return child

    yield start
    for child in children:
        if child.proc.returncode is None:
            child.proc.kill()
            await child.proc.wait()


async def test_run_reports_ready_feeds_the_watchdog_and_stops_cleanly_on_sigterm(
    tmp_path: Path, listener: NotifyListener, spawn: Spawn, sim_binance: SimBinance
) -> None:
    # Keys reach the daemon as systemd credentials, never through the config file.
    config = write_config(
        tmp_path, rest_url=sim_binance.rest_url, ws_url=sim_binance.ws_api_url, keys=""
    )
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "killswitch_accounts__binance__drill__api_key").write_text(sim_binance.api_key)
    (creds / "killswitch_accounts__binance__drill__api_secret").write_text(sim_binance.secret)
    watchdog_usec = 200_000  # the daemon should ping every 0.1 s
    env = child_env(
        NOTIFY_SOCKET=str(listener.path),
        WATCHDOG_USEC=str(watchdog_usec),
        CREDENTIALS_DIRECTORY=str(creds),
    )
    loop = asyncio.get_running_loop()

    child = await spawn("run", "--config", str(config), "--log-level", "DEBUG", env=env)
    await eventually(lambda: listener.count("READY=1"), timeout_s=60)
    ready_at = loop.time()
    pings_at_ready = listener.count("WATCHDOG=1")
    await eventually(lambda: listener.count("WATCHDOG=1") >= pings_at_ready + 3, timeout_s=60)
    elapsed_s = loop.time() - ready_at
    child.proc.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(child.proc.wait(), timeout=30)

    pings = listener.count("WATCHDOG=1") - pings_at_ready
    assert code == EXIT_OK
    assert listener.count("STOPPING=1") == 1
    # Never more often than every WATCHDOG_USEC/2 (a slow machine may send fewer, never more).
    assert pings <= elapsed_s / (watchdog_usec / 2e6) + 2
    assert any(s.startswith("running") for s in listener.statuses())
    messages = [r["msg"] for r in child.records()]
    assert "stopping signal=SIGTERM grace_period_s=30.0" in messages
    assert "stopped failed=False" in messages
    assert sim_binance.secret not in child.output()
    assert sim_binance.api_key not in child.output()


async def test_sigint_stops_the_daemon_cleanly_too(
    tmp_path: Path, listener: NotifyListener, spawn: Spawn
) -> None:
    env = child_env(NOTIFY_SOCKET=str(listener.path))

    child = await spawn("run", "--config", str(write_config(tmp_path)), env=env)
    await eventually(lambda: listener.count("READY=1"), timeout_s=60)
    child.proc.send_signal(signal.SIGINT)

    assert await asyncio.wait_for(child.proc.wait(), timeout=30) == EXIT_OK
    assert listener.count("STOPPING=1") == 1


async def test_run_refuses_to_start_on_an_unknown_killswitch_variable(
    tmp_path: Path, listener: NotifyListener, spawn: Spawn
) -> None:
    env = child_env(NOTIFY_SOCKET=str(listener.path), KILLSWITCH_ENGINE__DEADLINE="5")

    child = await spawn("run", "--config", str(write_config(tmp_path)), env=env)

    assert await asyncio.wait_for(child.proc.wait(), timeout=60) == EXIT_CONFIG
    assert "KILLSWITCH_ENGINE__DEADLINE: unknown setting" in child.output()
    assert listener.count("READY=1") == 0


async def test_run_refuses_to_start_on_a_bad_field_naming_it_without_leaking_secrets(
    tmp_path: Path, spawn: Spawn
) -> None:
    config = write_config(tmp_path, extra="\n[metrics]\nport = 70000\n")

    child = await spawn("run", "--config", str(config), env=child_env())

    assert await asyncio.wait_for(child.proc.wait(), timeout=60) == EXIT_CONFIG
    [record] = child.records()
    assert record["msg"] == (
        "config error: metrics.port: Input should be less than or equal to 65535"
    )
    assert SECRET not in child.output()


async def test_check_config_output_never_contains_a_secret(tmp_path: Path, spawn: Spawn) -> None:
    child = await spawn("check-config", "--config", str(write_config(tmp_path)), env=child_env())

    assert await asyncio.wait_for(child.proc.wait(), timeout=60) == EXIT_OK
    out = child.output()
    assert 'api_secret = "**********"' in out
    assert SECRET not in out
    assert API_KEY not in out


# -- the Daemon's rules, with fake services ---------------------------------------------------


@dataclass
class FakeService:
    """A service whose every step the test controls."""

    name: str
    log: list[str]
    is_healthy: bool = True
    ignores_stop: bool = False
    start_gate: asyncio.Event = field(default_factory=asyncio.Event)
    fail_start: bool = False
    crash: asyncio.Event = field(default_factory=asyncio.Event)
    stop_called: asyncio.Event = field(default_factory=asyncio.Event)
    health_checks: int = 0
    unhealthy_checks: int = 0

    def __post_init__(self) -> None:
        self.start_gate.set()

    async def start(self) -> None:
        self.log.append(f"start {self.name}")
        await self.start_gate.wait()
        if self.fail_start:
            raise ConnectionError(f"{self.name} cannot connect")

    async def run(self) -> None:
        stop = asyncio.create_task(self.stop_called.wait())
        crash = asyncio.create_task(self.crash.wait())
        try:
            await asyncio.wait({stop, crash}, return_when=asyncio.FIRST_COMPLETED)
            if crash.done():
                raise RuntimeError(f"{self.name} crashed")
            if self.ignores_stop:
                await asyncio.Event().wait()
        finally:
            stop.cancel()
            crash.cancel()

    async def stop(self) -> None:
        self.log.append(f"stop {self.name}")
        self.stop_called.set()

    def healthy(self) -> bool:
        self.health_checks += 1
        if not self.is_healthy:
            self.unhealthy_checks += 1
        return self.is_healthy

    def status(self) -> str:
        return "healthy" if self.is_healthy else "stream down"


def test_the_fake_service_satisfies_the_service_protocol() -> None:
    assert isinstance(FakeService("x", []), Service)


def make_daemon(
    listener: NotifyListener, services: list[FakeService], grace_period_s: float = 60.0
) -> Daemon:
    notifier = Notifier({"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "20000"})
    return Daemon(
        services, grace_period_s=grace_period_s, notifier=notifier, status_interval_s=0.01
    )


async def test_ready_is_sent_only_after_every_service_has_started(
    listener: NotifyListener,
) -> None:
    events: list[str] = []
    slow = FakeService("slow", events)
    slow.start_gate.clear()
    daemon = make_daemon(listener, [FakeService("fast", events), slow])
    serving = asyncio.create_task(daemon.serve())

    await eventually(lambda: "start slow" in events)
    assert listener.count("READY=1") == 0
    slow.start_gate.set()
    await eventually(lambda: listener.count("READY=1"))
    daemon.handle_signal(signal.SIGTERM)

    assert await serving == EXIT_OK
    assert events == ["start fast", "start slow", "stop slow", "stop fast"]


async def test_a_stop_last_service_is_stopped_after_all_the_others(
    listener: NotifyListener,
) -> None:
    # The events sink stops after the engine: a kill that ends in the engine's grace period
    # still has its flat or failed event sent.
    events: list[str] = []
    sink = FakeService("sink", events)
    services = [FakeService("venues", events), sink, FakeService("engine", events)]
    notifier = Notifier({"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "20000"})
    daemon = Daemon(services, notifier=notifier, status_interval_s=0.01, stop_last=[sink])
    serving = asyncio.create_task(daemon.serve())
    await eventually(lambda: listener.count("READY=1"))
    daemon.handle_signal(signal.SIGTERM)

    assert await serving == EXIT_OK
    stops = [e for e in events if e.startswith("stop")]
    assert stops == ["stop engine", "stop venues", "stop sink"]


async def test_the_watchdog_is_fed_only_while_every_service_is_healthy(
    listener: NotifyListener,
) -> None:
    sick = FakeService("stream", [])
    daemon = make_daemon(listener, [FakeService("kafka", []), sick])
    serving = asyncio.create_task(daemon.serve())
    await eventually(lambda: listener.count("WATCHDOG=1") >= 2)

    sick.is_healthy = False
    await eventually(lambda: sick.unhealthy_checks >= 2)
    before = listener.count("WATCHDOG=1")  # pings sent before the daemon saw the failure
    await eventually(lambda: sick.unhealthy_checks >= 8)
    missed = listener.count("WATCHDOG=1") - before
    sick.is_healthy = True
    pings = listener.count("WATCHDOG=1")
    await eventually(lambda: listener.count("WATCHDOG=1") > pings)
    daemon.handle_signal(signal.SIGTERM)

    assert missed == 0
    assert any("stream: stream down" in s for s in listener.statuses())
    assert await serving == EXIT_OK


async def test_a_service_that_ignores_stop_is_cancelled_after_the_grace_period(
    listener: NotifyListener, caplog: pytest.LogCaptureFixture
) -> None:
    stuck = FakeService("stuck", [], ignores_stop=True)
    daemon = make_daemon(listener, [FakeService("ok", []), stuck], grace_period_s=0.2)
    serving = asyncio.create_task(daemon.serve())
    await eventually(lambda: listener.count("READY=1"))

    with caplog.at_level(logging.INFO, logger="killswitch.daemon"):
        daemon.handle_signal(signal.SIGTERM)
        code = await serving

    assert code == EXIT_OK
    assert "grace period over, cancelled count=1 tasks=run stuck" in caplog.messages
    assert listener.count("STOPPING=1") == 1


async def test_critical_work_survives_a_crashing_service_and_the_cancel_of_its_caller(
    listener: NotifyListener,
) -> None:
    release = asyncio.Event()
    outcome: list[str] = []
    crasher = FakeService("kafka", [])
    daemon = make_daemon(listener, [crasher])

    async def kill() -> str:
        await release.wait()
        outcome.append("kill finished")
        return "flat"

    async def engine_waits_on_kill() -> None:
        try:
            outcome.append(await daemon.critical.run(kill(), name="kill t-1"))
        except asyncio.CancelledError:
            outcome.append("caller cancelled")
            raise

    serving = asyncio.create_task(daemon.serve())
    await eventually(lambda: listener.count("READY=1"))
    caller = asyncio.create_task(engine_waits_on_kill())
    await eventually(lambda: daemon.critical.names() == ["kill t-1"])
    crasher.crash.set()
    await eventually(lambda: listener.count("STOPPING=1"))
    caller.cancel()
    await eventually(lambda: outcome == ["caller cancelled"])
    release.set()

    assert await serving == EXIT_FAILED
    assert outcome == ["caller cancelled", "kill finished"]
    assert len(daemon.critical) == 0


async def test_critical_work_left_after_the_grace_period_is_cancelled_and_named(
    listener: NotifyListener, caplog: pytest.LogCaptureFixture
) -> None:
    daemon = make_daemon(listener, [], grace_period_s=0.2)
    serving = asyncio.create_task(daemon.serve())
    await eventually(lambda: listener.count("READY=1"))
    task = daemon.critical.spawn(asyncio.Event().wait(), name="kill t-9")

    with caplog.at_level(logging.INFO, logger="killswitch.daemon"):
        daemon.handle_signal(signal.SIGTERM)
        code = await serving

    assert code == EXIT_OK
    assert task.cancelled()
    assert "grace period over, cancelled count=1 tasks=kill t-9" in caplog.messages


async def test_a_second_sigint_forces_exit_without_waiting_for_the_grace_period(
    listener: NotifyListener,
) -> None:
    stuck = FakeService("stuck", [], ignores_stop=True)
    daemon = make_daemon(listener, [stuck], grace_period_s=3600)
    serving = asyncio.create_task(daemon.serve())
    await eventually(lambda: listener.count("READY=1"))

    daemon.handle_signal(signal.SIGINT)
    await stuck.stop_called.wait()
    daemon.handle_signal(signal.SIGINT)

    assert await serving == EXIT_FORCED


async def test_a_failed_start_stops_what_started_and_exits_1(listener: NotifyListener) -> None:
    events: list[str] = []
    services = [
        FakeService("a", events),
        FakeService("b", events, fail_start=True),
        FakeService("c", events),
    ]

    code = await make_daemon(listener, services).serve()

    assert code == EXIT_FAILED
    assert events == ["start a", "start b", "stop b", "stop a"]
    assert listener.count("READY=1") == 0
    assert listener.count("STOPPING=1") == 1


async def test_a_stop_during_startup_exits_0_without_ready(listener: NotifyListener) -> None:
    events: list[str] = []
    hung = FakeService("hung", events)
    hung.start_gate.clear()
    daemon = make_daemon(listener, [hung])
    serving = asyncio.create_task(daemon.serve())
    await eventually(lambda: "start hung" in events)

    daemon.handle_signal(signal.SIGTERM)

    assert await serving == EXIT_OK
    assert events == ["start hung", "stop hung"]
    assert listener.count("READY=1") == 0


async def test_a_critical_task_failing_after_its_caller_left_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    critical = CriticalTasks()
    release = asyncio.Event()

    async def kill() -> None:
        await release.wait()
        raise RuntimeError("venue refused")

    caller = asyncio.create_task(critical.run(kill(), name="kill t-3"))
    await eventually(lambda: critical.names() == ["kill t-3"])
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    release.set()
    await eventually(lambda: len(critical) == 0)

    assert "critical task failed task=kill t-3" in caplog.messages
