"""The control socket on a real unix socket, and the CLI that talks to it, in a subprocess."""

from __future__ import annotations

import asyncio
import os
import pwd
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from killswitch.audit import AuditLog, read_audit
from killswitch.control_client import format_status, request
from killswitch.engine import Account, Engine, EngineConfig
from killswitch.handlers.control import ControlServer
from killswitch.journal import Journal
from killswitch.model import AccountRef
from tests.fakes import BINGX_CAPS, FakeExchange

ME = pwd.getpwuid(os.getuid()).pw_name


@dataclass
class Served:
    engine: Engine
    server: ControlServer
    path: Path
    venues: dict[str, FakeExchange]
    audit_path: Path

    async def ask(self, payload: dict[str, object]) -> dict[str, object]:
        return await asyncio.to_thread(request, self.path, payload)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    venues = {
        "binance": FakeExchange("binance", "mm-1"),
        "bingx": FakeExchange("bingx", "mm-2", BINGX_CAPS),
    }
    venues["binance"].place("BTCUSDT", "s7-", n=3)
    venues["bingx"].place("BTC-USDT", "s7_", n=2)
    engine = Engine(
        [Account(AccountRef(v.venue, v.account), v) for v in venues.values()],
        Journal(tmp_path / "state" / "journal.jsonl"),
        EngineConfig(quiet_window_s=0.01, sweep_interval_s=3600),
    )
    audit = AuditLog(tmp_path / "state" / "audit.jsonl")
    engine.events.add(audit)
    await engine.start()
    path = tmp_path / "control.sock"
    server = ControlServer(engine, path)
    await server.start()
    yield Served(engine, server, path, venues, audit.path)
    await server.stop()
    await engine.stop()
    audit.close()


async def test_the_socket_is_owner_only(served: Served) -> None:
    assert stat.S_IMODE(served.path.stat().st_mode) == 0o600
    assert served.server.healthy()


async def test_fire_kills_latches_and_records_the_kernel_reported_user(served: Served) -> None:
    answer = await served.ask(
        {"op": "fire", "reason": "drawdown", "actor": "mallory", "wait": "done", "timeout_s": 30}
    )
    assert answer["ok"] is True
    assert answer["result"] == "accepted"
    assert answer["actor"] == f"{ME} (as mallory)"
    assert served.engine.latched()
    assert not served.venues["binance"].book.orders
    kill = answer["kill"]
    assert isinstance(kill, dict)
    assert kill["state"] in ("flat", "confirmed")
    triggered = [r for r in read_audit(served.audit_path) if r["type"] == "triggered"]
    assert triggered[0]["trigger"]["actor"] == f"{ME} (as mallory)"  # type: ignore[index]


async def test_a_fire_whose_scope_covers_no_configured_account_is_refused(served: Served) -> None:
    answer = await served.ask({"op": "fire", "reason": "x", "accounts": ["mm-typo"]})
    assert answer["ok"] is False
    assert "covers no configured account" in str(answer["error"])
    assert not served.engine.latched()
    unknown = await served.ask({"op": "fire", "reason": "x", "venues": ["kraken"]})
    assert "unknown venue" in str(unknown["error"])


async def test_a_fire_without_a_reason_is_refused(served: Served) -> None:
    answer = await served.ask({"op": "fire", "reason": "  "})
    assert answer == {"ok": False, "error": "reason is required"}


async def test_cancel_only_does_not_latch_and_a_repeated_id_is_a_duplicate(served: Served) -> None:
    first = await served.ask(
        {"op": "fire", "reason": "r", "cancel_only": True, "id": "op-1", "wait": "done"}
    )
    assert first["mode"] == "cancel"
    assert not served.engine.latched()
    again = await served.ask({"op": "fire", "reason": "r", "id": "op-1"})
    assert again["result"] == "duplicate"


async def test_garbage_gets_an_error_and_the_server_keeps_serving(served: Served) -> None:
    reader, writer = await asyncio.open_unix_connection(str(served.path))
    writer.write(b"not json\n[1]\n" + orjson.dumps({"op": "nope"}) + b"\n")
    await writer.drain()
    answers = [orjson.loads(await reader.readline()) for _ in range(3)]
    writer.close()
    await writer.wait_closed()
    assert [a["ok"] for a in answers] == [False, False, False]
    status = await served.ask({"op": "status"})
    assert status["ok"] is True


async def test_reset_unlatches_and_the_audit_log_says_who_and_why(served: Served) -> None:
    await served.ask({"op": "fire", "reason": "risk", "wait": "done"})
    answer = await served.ask({"op": "reset", "reason": "drill over"})
    assert answer == {"ok": True, "was_latched": True, "actor": ME}
    assert not served.engine.latched()
    resets = [r for r in read_audit(served.audit_path) if r["type"] == "reset"]
    assert len(resets) == 1
    assert resets[0]["actor"] == ME
    assert resets[0]["reason"] == "drill over"
    assert resets[0]["origin"] == "control"


async def test_status_renders_a_table_with_latch_and_last_kill(served: Served) -> None:
    await served.ask({"op": "fire", "reason": "risk", "venues": ["bingx"], "wait": "confirmed"})
    status = await served.ask({"op": "status"})
    text = format_status(status["status"])  # type: ignore[arg-type]
    assert text.startswith("LATCHED: 1 latch(es)")
    assert "venues=bingx" in text
    assert "bingx/mm-2" in text
    assert "CONFIRMED" in text


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "killswitch"
    return subprocess.run(
        [str(script), *args], capture_output=True, text=True, timeout=60, check=False
    )


async def test_cli_fire_status_reset_round_trip(served: Served) -> None:
    sock = str(served.path)
    fired = await asyncio.to_thread(
        cli, "fire", "--socket", sock, "--venue", "binance", "--reason", "cli drill"
    )
    assert fired.returncode == 0, fired.stderr
    assert "accepted" in fired.stdout
    assert not served.venues["binance"].book.orders
    assert served.venues["bingx"].book.orders  # outside --venue binance

    status = await asyncio.to_thread(cli, "status", "--socket", sock, "--json")
    assert status.returncode == 0
    data = orjson.loads(status.stdout)
    assert data["latched"] is True

    reset = await asyncio.to_thread(cli, "reset", "--socket", sock, "--reason", "all clear")
    assert reset.returncode == 0
    assert "latch released" in reset.stdout
    assert not served.engine.latched()


async def test_cli_says_plainly_when_the_daemon_is_not_there(tmp_path: Path) -> None:
    result = await asyncio.to_thread(cli, "status", "--socket", str(tmp_path / "none.sock"))
    assert result.returncode == 3
    assert "cannot reach the daemon" in result.stderr
