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

from killswitch.control_client import format_status, request
from killswitch.exchanges.base import Fatal
from killswitch.handlers.control import ControlServer
from killswitch.journal import Journal
from killswitch.kill.config import Account, EngineConfig
from killswitch.kill.engine import Engine
from killswitch.model import AccountRef
from killswitch.sinks.audit import AuditLog, read_audit
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


async def test_the_socket_is_read_write_for_its_owner_and_group_only(served: Served) -> None:
    # Members of the daemon's group (killswitch under systemd) may use the socket.
    info = served.path.stat()
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert (info.st_uid, info.st_gid) == (os.geteuid(), os.getegid())
    assert served.server.healthy()


async def test_a_stale_socket_is_replaced_with_the_same_mode_whatever_the_umask(
    tmp_path: Path,
) -> None:
    path = tmp_path / "run" / "control.sock"
    engine = Engine([], Journal(tmp_path / "journal.jsonl"), EngineConfig())
    first = ControlServer(engine, path)
    await first.start()
    first._server.close()  # type: ignore[union-attr]  # a crash: the file stays behind
    old = os.umask(0o022)
    try:
        second = ControlServer(engine, path)
        await second.start()
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
    finally:
        await second.stop()


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


def untouched(served: Served) -> None:
    """Nothing was fired: no latch, no trigger in the audit log, every order still open."""
    assert not served.engine.latched()
    assert not [r for r in read_audit(served.audit_path) if r["type"] == "triggered"]
    assert len(served.venues["binance"].book.orders) == 3
    assert len(served.venues["bingx"].book.orders) == 2


async def test_a_fire_whose_scope_covers_no_configured_account_is_refused(served: Served) -> None:
    answer = await served.ask({"op": "fire", "reason": "x", "accounts": ["mm-typo"]})
    assert answer["ok"] is False
    assert answer["refused"] is True
    assert "covers no configured account" in str(answer["error"])
    assert "accounts: no configured account mm-typo" in str(answer["error"])
    unknown = await served.ask({"op": "fire", "reason": "x", "venues": ["kraken"]})
    assert "unknown venue" in str(unknown["error"])
    untouched(served)


@pytest.mark.parametrize(
    ("scope", "named"),
    [
        # mm-1 is on binance only: the pair selects no account, though both names exist.
        ({"venues": ["bingx"], "accounts": ["mm-1"]}, "accounts: no configured account mm-1"),
        # No mexc account is configured here.
        ({"venues": ["mexc"]}, "venues: no configured account on mexc"),
    ],
)
async def test_a_venue_and_account_pair_that_selects_nothing_is_refused(
    served: Served, scope: dict[str, object], named: str
) -> None:
    answer = await served.ask({"op": "fire", "reason": "x", **scope})
    assert answer["ok"] is False
    assert named in str(answer["error"])
    untouched(served)


async def test_a_fire_naming_one_unknown_account_among_known_ones_fires_nothing(
    served: Served,
) -> None:
    # Killing mm-1 alone and answering "flat" would tell the operator mm-typo is flat too.
    answer = await served.ask(
        {"op": "fire", "reason": "x", "accounts": ["mm-1", "mm-typo"], "wait": "done"}
    )
    assert answer["ok"] is False
    assert answer["refused"] is True
    assert "accounts: no configured account mm-typo" in str(answer["error"])
    assert "nothing was fired" in str(answer["error"])
    untouched(served)


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"prefix": 5}, "prefix: Input should be a valid string"),
        ({"prefix": ""}, "prefix must not be empty"),
        ({"cancel_only": "no"}, "cancel_only: Input should be a valid boolean"),
        ({"accounts": "mm-1"}, "accounts: Input should be a valid list"),
        ({"symbols": [7]}, "symbols.0: Input should be a valid string"),
        ({"wait": "forever"}, "wait: Input should be 'done' or 'confirmed'"),
        ({"timeout_s": "soon"}, "timeout_s: Input should be a valid number"),
        ({"timeout_s": -1}, "timeout_s: Input should be greater than 0"),
        ({"id": 12}, "id: Input should be a valid string"),
        # A misspelt scope field must not widen the kill to everything.
        ({"account": ["mm-1"]}, "account: unknown field"),
        ({"scope": {"accounts": ["mm-1"]}}, "scope: unknown field"),
    ],
)
async def test_a_malformed_fire_is_refused_and_changes_nothing(
    served: Served, fields: dict[str, object], error: str
) -> None:
    answer = await served.ask({"op": "fire", "reason": "x", **fields})
    assert answer["ok"] is False
    assert answer["refused"] is True
    assert error in str(answer["error"])
    untouched(served)


async def test_a_refused_prefix_never_reaches_the_latch_and_stream_cancels_still_work(
    served: Served,
) -> None:
    await served.ask({"op": "fire", "reason": "x", "prefix": ["s7-"]})
    answer = await served.ask({"op": "fire", "reason": "y", "prefix": "s7-", "wait": "done"})
    assert answer["ok"] is True
    assert [s.client_order_id_prefix for s in served.engine.latch_scopes()] == ["s7-"]
    assert not served.venues["binance"].book.orders


@pytest.mark.parametrize(
    "payload",
    [
        {"op": "reset", "reason": 3},
        {"op": "reset"},
        {"op": "reset", "reason": "r", "force": True},
        {"op": "wait", "trigger_id": "t", "until": "later"},
        {"op": "wait", "trigger_id": ["t"]},
        {"op": "status", "verbose": True},
    ],
)
async def test_other_malformed_requests_are_refused(
    served: Served, payload: dict[str, object]
) -> None:
    await served.ask({"op": "fire", "reason": "risk", "wait": "done"})
    answer = await served.ask(payload)
    assert answer["ok"] is False
    assert answer["refused"] is True
    assert served.engine.latched()  # a malformed reset released nothing


async def test_a_fire_without_a_reason_is_refused(served: Served) -> None:
    answer = await served.ask({"op": "fire", "reason": "  "})
    assert answer == {
        "ok": False,
        "refused": True,
        "error": "bad fire request: reason must not be empty",
    }
    untouched(served)


async def test_cancel_only_does_not_latch_and_a_repeated_id_is_a_duplicate(served: Served) -> None:
    first = await served.ask(
        {"op": "fire", "reason": "r", "cancel_only": True, "id": "op-1", "wait": "done"}
    )
    assert first["mode"] == "cancel"
    assert not served.engine.latched()
    again = await served.ask({"op": "fire", "reason": "r", "cancel_only": True, "id": "op-1"})
    assert again["result"] == "duplicate"
    # The same id for a kill (another mode) was never acted on: refused, not "duplicate".
    other = await served.ask({"op": "fire", "reason": "r", "id": "op-1"})
    assert other["ok"] is False
    assert other.get("refused")
    assert not served.engine.latched()


async def test_garbage_gets_an_error_and_the_server_keeps_serving(served: Served) -> None:
    reader, writer = await asyncio.open_unix_connection(str(served.path))
    writer.write(b"not json\n[1]\n" + orjson.dumps({"op": "nope"}) + b"\n")
    await writer.drain()
    answers = [orjson.loads(await reader.readline()) for _ in range(3)]
    writer.close()
    await writer.wait_closed()
    assert [a["ok"] for a in answers] == [False, False, False]
    assert answers[0]["error"].startswith("not JSON: ")  # and where, in orjson's words
    assert [a["error"] for a in answers[1:]] == [
        "expected a JSON object, got list",
        "unknown op 'nope'; have fire, status, reset, wait",
    ]
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


# -- exit codes a script can trust: 0 flat/confirmed, 1 failed, 2 refused, 3 unreachable, 4 running


def fire_cli(served: Served, *args: str) -> subprocess.CompletedProcess[str]:
    return cli("fire", "--socket", str(served.path), *args)


async def test_a_wait_that_ends_while_the_kill_runs_is_not_ok_and_fire_exits_4(
    served: Served,
) -> None:
    gate = asyncio.Event()  # every venue read waits: the kill cannot finish
    for venue in served.venues.values():
        venue.hold("snapshot", gate)
    try:
        answer = await served.ask({"op": "fire", "reason": "r", "wait": "done", "timeout_s": 0.2})
        assert answer["ok"] is False
        assert answer["outcome"] == "running"
        assert answer["timed_out"] is True
        waited = await served.ask(
            {"op": "wait", "trigger_id": answer["trigger_id"], "timeout_s": 0.2}
        )
        assert (waited["ok"], waited["outcome"], waited["timed_out"]) == (False, "running", True)

        fired = await asyncio.to_thread(fire_cli, served, "--reason", "r2", "--timeout", "0.3")
        assert fired.returncode == 4, fired.stderr
        assert "still running" in fired.stderr
    finally:
        gate.set()


async def test_fire_no_wait_exits_4_because_nothing_is_proved_yet(served: Served) -> None:
    gate = asyncio.Event()
    served.venues["binance"].hold("snapshot", gate)
    try:
        fired = await asyncio.to_thread(fire_cli, served, "--reason", "r", "--no-wait")
        assert fired.returncode == 4, fired.stderr
        assert "accepted" in fired.stdout
        assert served.engine.latched()
    finally:
        gate.set()


async def test_fire_exits_1_when_the_kill_fails(served: Served) -> None:
    served.venues["binance"].fail("snapshot", Fatal("bad key", code=-2015), times=1000)
    served.venues["binance"].fail("cancel_all", Fatal("bad key", code=-2015), times=1000)

    fired = await asyncio.to_thread(fire_cli, served, "--reason", "r", "--venue", "binance")

    assert fired.returncode == 1, (fired.stdout, fired.stderr)
    assert "NOT flat: the kill is failed" in fired.stderr
    assert served.venues["binance"].book.orders


async def test_fire_exits_0_when_flat_and_the_answer_says_so(served: Served) -> None:
    fired = await asyncio.to_thread(fire_cli, served, "--reason", "r", "--json")

    assert fired.returncode == 0, fired.stderr
    answer = orjson.loads(fired.stdout)
    assert answer["ok"] is True
    assert answer["outcome"] in ("flat", "confirmed")
    assert answer["timed_out"] is False


async def test_fire_exits_2_when_the_daemon_refuses_and_nothing_is_fired(served: Served) -> None:
    fired = await asyncio.to_thread(fire_cli, served, "--reason", "r", "--account", "mm-typo")
    assert fired.returncode == 2, fired.stderr
    assert "refused" in fired.stderr
    assert "mm-typo" in fired.stderr
    prefix = await asyncio.to_thread(fire_cli, served, "--reason", "r", "--prefix", "x" * 37)
    assert prefix.returncode == 2, prefix.stderr
    usage = await asyncio.to_thread(fire_cli, served)  # no --reason: argparse's usage error
    assert usage.returncode == 2
    untouched(served)


async def test_fire_exits_3_when_no_daemon_listens(tmp_path: Path) -> None:
    result = await asyncio.to_thread(
        cli, "fire", "--socket", str(tmp_path / "none.sock"), "--reason", "r"
    )
    assert result.returncode == 3
    assert "cannot reach the daemon" in result.stderr


def test_fire_help_prints_the_exit_code_table() -> None:
    result = cli("fire", "--help")
    assert result.returncode == 0
    table = result.stdout[result.stdout.index("exit codes:") :]
    for code in ("0  flat or confirmed", "1  failed", "2  usage", "3  unreachable", "4  still"):
        assert code in table


async def test_a_reset_naming_trigger_ids_releases_exactly_those_and_a_drill_is_recorded_as_one(
    served: Served,
) -> None:
    operator = await served.ask(
        {"op": "fire", "reason": "desk", "venues": ["binance"], "wait": "done", "timeout_s": 30}
    )
    drill = await served.ask(
        {
            "op": "fire",
            "reason": "drill",
            "venues": ["bingx"],
            "prefix": "ksdrill_ab_",
            "id": "drill-1",
            "drill": True,
            "wait": "done",
            "timeout_s": 30,
        }
    )
    assert (operator["ok"], drill["ok"]) == (True, True)
    for bad in ({"trigger_ids": []}, {"trigger_ids": "drill-1"}, {"drill": "yes"}):
        refused = await served.ask({"op": "reset", "reason": "x", **bad})
        assert refused["refused"] is True
    answer = await served.ask(
        {"op": "reset", "reason": "drill done", "trigger_ids": ["drill-1"], "drill": True}
    )
    assert answer["was_latched"] is True
    assert [str(s.to_json()["venues"]) for s in served.engine.latch_scopes()] == ["['binance']"]
    again = await served.ask({"op": "reset", "reason": "again", "trigger_ids": ["drill-1"]})
    # Nothing of that name is latched any more: refused, naming what is held (review 39: a
    # mistyped id answered "was not latched" with exit 0 while the latch stayed).
    assert again["refused"] is True
    assert again["error"] == f"no latch is held by drill-1; held: {operator['trigger_id']}"
    audit = read_audit(served.audit_path)
    sources = {
        r["trigger"]["id"]: r["trigger"]["source"] for r in audit if r["type"] == "triggered"
    }
    assert sources == {operator["trigger_id"]: "control", "drill-1": "drill"}
    resets = [r for r in audit if r["type"] == "reset"]
    assert (resets[0]["origin"], [x["trigger_id"] for x in resets[0]["released"]]) == (
        "drill",
        ["drill-1"],
    )


async def test_status_carries_each_accounts_readiness(tmp_path: Path) -> None:
    venue = FakeExchange("binance", "mm-1")
    engine = Engine(
        [Account(AccountRef("binance", "mm-1"), venue, not_ready=lambda: "key rejected: -2015 x")],
        Journal(tmp_path / "journal.jsonl"),
        EngineConfig(),
    )
    await engine.start()
    server = ControlServer(
        engine, tmp_path / "c.sock", readiness=lambda: {"binance/mm-1": {"checks": []}}
    )
    await server.start()
    try:
        answer = await asyncio.to_thread(request, tmp_path / "c.sock", {"op": "status"})
    finally:
        await server.stop()
        await engine.stop()
    status = answer["status"]
    [entry] = status["accounts"]
    assert (entry["ready"], entry["reason"]) == (False, "key rejected: -2015 x")
    assert status["readiness"] == {"binance/mm-1": {"checks": []}}
    assert "key rejected: -2015 x" in format_status(status)


async def test_cli_reset_with_trigger_releases_only_that_latch(served: Served) -> None:
    sock = str(served.path)
    for venue in ("binance", "bingx"):
        fired = await asyncio.to_thread(
            cli, "fire", "--socket", sock, "--venue", venue, "--reason", f"{venue} risk"
        )
        assert fired.returncode == 0, fired.stderr
    [binance_id, bingx_id] = [latch["trigger_id"] for latch in served.engine.status()["latches"]]
    reset = await asyncio.to_thread(
        cli, "reset", "--socket", sock, "--reason", "binance fine", "--trigger", binance_id
    )
    assert reset.returncode == 0, reset.stderr
    assert [latch["trigger_id"] for latch in served.engine.status()["latches"]] == [bingx_id]


async def test_cli_reset_of_a_trigger_id_no_latch_holds_exits_2_and_names_the_latches(
    served: Served,
) -> None:
    sock = str(served.path)
    fired = await asyncio.to_thread(
        cli, "fire", "--socket", sock, "--venue", "binance", "--reason", "risk"
    )
    assert fired.returncode == 0, fired.stderr
    [held] = [latch["trigger_id"] for latch in served.engine.status()["latches"]]
    reset = await asyncio.to_thread(
        cli, "reset", "--socket", sock, "--reason", "typo", "--trigger", held + "x"
    )
    assert reset.returncode == 2
    assert f"no latch is held by {held}x; held: {held}" in reset.stderr
    assert [latch["trigger_id"] for latch in served.engine.status()["latches"]] == [held]


async def test_a_kill_by_a_symbol_nothing_was_open_on_and_nobody_configured_warns(
    served: Served,
) -> None:
    """Review 39: `fire --symbol BTCUSTD` (a typo) answered FLAT, exit 0, with the BTCUSDT orders
    meant still open. Flat is true of BTCUSTD; the operator is now told it found nothing there
    and that no account in scope is configured with it."""
    sock = str(served.path)
    fired = await asyncio.to_thread(
        cli,
        "fire",
        "--socket",
        sock,
        "--venue",
        "binance",
        "--symbol",
        "BTCUSTD",
        "--reason",
        "typo",
    )
    assert fired.returncode == 0, fired.stderr  # flat: nothing of BTCUSTD is open
    assert "warning: nothing was open on BTCUSTD on any account in scope" in fired.stderr
    right = await asyncio.to_thread(
        cli,
        "fire",
        "--socket",
        sock,
        "--venue",
        "binance",
        "--symbol",
        "BTCUSDT",
        "--reason",
        "right",
    )
    assert right.returncode == 0, right.stderr
    assert "warning" not in right.stderr  # it found and cancelled orders there
