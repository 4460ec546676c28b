"""Readiness (issue 14): `killswitch preflight` and the daemon's own checks, against the simulator.

A bad key (MEXC's secret mistyped) must be named with the venue's reason by preflight (non-zero
exit), `killswitch status` and `status --json`, STATUS=, the `killswitch_account_ready` metric
and exactly one alarm event; the other accounts keep working and the bad one stays configured.
"""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from killswitch.drill.demo import NotifySocket, killswitch_command
from killswitch.events import EventRecord
from killswitch.model import AccountRef
from killswitch.readiness.checks import Target
from killswitch.readiness.service import ReadinessService
from killswitch.sim.faults import Fault, FaultKind
from killswitch.sinks.audit import read_audit
from tests.conftest import eventually, free_port
from tests.fixtures.binance import binance_venue
from tests.fixtures.live_rig import MEXC_REASON, Rig, cli, make_rig, row, running_daemon


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    made = await make_rig(tmp_path, bad={"mexc"})
    yield made
    await made.cluster.stop()


# -- preflight ------------------------------------------------------------------------------


async def test_preflight_names_a_bad_key_by_the_venues_reason_and_exits_1(rig: Rig) -> None:
    code, out, err = await cli(rig, "preflight")
    assert code == 1, out + err
    assert row(out, "mexc/mm-1").endswith(MEXC_REASON)
    assert row(out, "binance/mm-1").endswith(" OK")
    assert row(out, "bingx/mm-1").endswith(" OK")
    assert "NOT READY: 2/3 accounts ready" in out
    for secret in rig.secrets():
        assert secret not in out + err


async def test_preflight_json_says_the_same_without_secrets(rig: Rig) -> None:
    code, out, err = await cli(rig, "preflight", "--json")
    assert code == 1, out + err
    data = orjson.loads(out)
    assert data["ready"] is False
    by_label = {f"{a['venue']}/{a['account']}": a for a in data["accounts"]}
    assert by_label["mexc/mm-1"]["reason"] == MEXC_REASON
    assert by_label["binance/mm-1"]["ready"] is True
    checks = {c["name"]: c for c in by_label["binance/mm-1"]["checks"]}
    assert checks["stream"]["ok"] is True  # a real subscription, confirmed by the venue
    assert checks["clock"]["ok"] is True
    for secret in rig.secrets():
        assert secret not in out + err


async def test_preflight_exits_0_when_every_account_is_ready(tmp_path: Path) -> None:
    good = await make_rig(tmp_path, bad=set())
    try:
        code, out, err = await cli(good, "preflight")
    finally:
        await good.cluster.stop()
    assert code == 0, out + err
    assert "READY: 3/3 accounts ready" in out


async def test_preflight_names_a_key_that_may_read_but_not_trade(tmp_path: Path) -> None:
    good = await make_rig(tmp_path, bad=set())
    for venue in ("binance", "mexc", "bingx"):
        good.cluster.venues[venue].trade_disabled = frozenset({"mm-1"})  # type: ignore[attr-defined]
    try:
        code, out, err = await cli(good, "preflight")
    finally:
        await good.cluster.stop()
    assert code == 1, out + err
    assert row(out, "binance/mm-1").endswith("key may not trade: canTrade=false (permissions: -)")
    assert row(out, "mexc/mm-1").endswith("key may not trade: canTrade=false (permissions: SPOT)")
    assert row(out, "bingx/mm-1").endswith(
        "key may not trade: no SPOT_TRADING permission (permissions: READ)"
    )
    assert "NOT READY: 0/3 accounts ready" in out


def with_bingx_dead_mans_switch(rig: Rig, timeout_s: int = 30) -> None:
    text = rig.config.read_text()
    block = 'venue = "bingx"\nname = "mm-1"\n'
    assert block in text
    rig.config.write_text(text.replace(block, f"{block}dead_mans_switch_s = {timeout_s}\n"))


async def test_preflight_arms_and_closes_bingxs_dead_mans_switch_when_no_daemon_runs(
    rig: Rig,
) -> None:
    with_bingx_dead_mans_switch(rig)
    code, out, err = await cli(rig, "preflight")
    assert code == 1, out + err  # MEXC's key is still bad
    assert row(out, "bingx/mm-1").endswith(" OK")
    assert "dms    ok    answers (armed for 30 s, then closed)" in out
    sim = rig.cluster.venues["bingx"]
    assert [n for k, n in sim.counters.items() if "cancelAllAfter" in k] == [2]  # arm, close
    assert sim._dms["mm-1"].timer is None  # type: ignore[attr-defined]  # closed again


@pytest.mark.slow
async def test_preflight_reports_the_running_daemons_dead_mans_switch_and_leaves_it_armed(
    rig: Rig,
) -> None:
    with_bingx_dead_mans_switch(rig)
    sim = rig.cluster.venues["bingx"]
    async with running_daemon(rig):
        await eventually(
            lambda: sim._dms["mm-1"].timer is not None,  # type: ignore[attr-defined]
            timeout_s=20,
        )
        code, out, err = await cli(rig, "preflight")
        assert code == 1  # MEXC's key is still bad
        assert "dms    ok    the running daemon reports it armed" in out, out + err
        assert sim._dms["mm-1"].timer is not None  # type: ignore[attr-defined]


async def test_preflight_leaves_the_dead_mans_switch_alone_when_a_daemon_may_be_running(
    rig: Rig,
) -> None:
    with_bingx_dead_mans_switch(rig)
    # A socket that takes the connection and never answers: a daemon may be there.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as hung:
        hung.bind(str(rig.socket))
        hung.listen(1)
        code, out, err = await cli(rig, "preflight")
    assert code == 1, out + err  # MEXC's key is still bad
    assert "dms    -     not checked: a daemon may be running" in out
    counters = rig.cluster.venues["bingx"].counters
    assert not [k for k, n in counters.items() if "cancelAllAfter" in k and n]  # never armed


async def test_preflight_refuses_an_invalid_config_with_exit_2(rig: Rig) -> None:
    rig.config.write_text(rig.config.read_text() + "\n[engine.nonsense]\n")
    code, _out, err = await cli(rig, "preflight")
    assert code == 2
    assert "engine" in err


# -- the daemon ---------------------------------------------------------------------------------


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return str(answer.read().decode())


@pytest.mark.slow
async def test_the_daemon_names_a_bad_key_everywhere_and_keeps_the_others_working(
    tmp_path: Path,
) -> None:
    port = free_port()
    rig = await make_rig(
        tmp_path, bad={"mexc"}, extra=f"\n[metrics]\nenabled = true\nport = {port}\n"
    )
    notify = NotifySocket(tmp_path / "notify.sock")
    log_path = tmp_path / "daemon.log"
    proc = None
    try:
        with log_path.open("wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                *killswitch_command(),
                "run",
                "--config",
                str(rig.config),
                env=rig.env(NOTIFY_SOCKET=str(notify.path), KILLSWITCH_LOGGING__FORMAT="text"),
                stdout=log_file,
                stderr=log_file,
            )
        assert await notify.wait_for("READY=1", 60.0), log_path.read_text()

        # STATUS= for systemctl status
        def status_line() -> bool:
            return any(
                line.startswith("STATUS=") and f"NOT READY mexc/mm-1: {MEXC_REASON}" in line
                for line in notify.lines
            )

        await eventually(status_line, timeout_s=20)

        # killswitch status: the REASON column
        code, out, _ = await cli(rig, "status")
        assert code == 0
        assert row(out, "mexc/mm-1").split()[1] == "NO"
        assert row(out, "mexc/mm-1").endswith(MEXC_REASON)
        assert row(out, "binance/mm-1").split()[1] == "yes"

        # status --json
        code, out, _ = await cli(rig, "status", "--json")
        accounts = {f"{a['venue']}/{a['account']}": a for a in orjson.loads(out)["accounts"]}
        assert (accounts["mexc/mm-1"]["ready"], accounts["mexc/mm-1"]["reason"]) == (
            False,
            MEXC_REASON,
        )
        assert accounts["binance/mm-1"]["ready"] is True

        # the metric
        metrics = await asyncio.to_thread(scrape, port)
        assert 'killswitch_account_ready{account="mm-1",venue="mexc"} 0.0' in metrics
        assert 'killswitch_account_ready{account="mm-1",venue="binance"} 1.0' in metrics

        # a kill still acts on the others, and its report names the bad one's reason
        code, out, _ = await cli(rig, "fire", "--reason", "readiness test", "--json")
        assert code == 1  # not flat: MEXC could not be acted on
        kill = orjson.loads(out)["kill"]
        by_label = {f"{a['venue']}/{a['account']}": a for a in kill["accounts"]}
        assert by_label["mexc/mm-1"]["not_ready"] == MEXC_REASON
        assert by_label["binance/mm-1"]["state"] in ("flat", "confirmed")
        assert by_label["bingx/mm-1"]["state"] in ("flat", "confirmed")
        for secret in rig.secrets():
            assert secret not in out
    finally:
        if proc is not None and proc.returncode is None:
            proc.terminate()
            await proc.wait()
        notify.close()
        await rig.cluster.stop()

    # one alarm for the one change, in the audit log (the events topic gets the same records)
    audit = read_audit(tmp_path / "state" / "audit.jsonl")
    alarms = [r for r in audit if r["type"] == "alarm" and r.get("kind") == "not_ready"]
    assert [(a["account"], a["reason"]) for a in alarms] == [("mexc/mm-1", MEXC_REASON)]
    text = log_path.read_text()
    for secret in rig.secrets():
        assert secret not in text


@pytest.mark.slow
async def test_a_config_whose_accounts_are_all_unready_still_starts_and_says_so(
    tmp_path: Path,
) -> None:
    rig = await make_rig(tmp_path, bad={"binance", "mexc", "bingx"})
    notify = NotifySocket(tmp_path / "notify.sock")
    log_path = tmp_path / "daemon.log"
    proc = None
    try:
        with log_path.open("wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                *killswitch_command(),
                "run",
                "--config",
                str(rig.config),
                env=rig.env(NOTIFY_SOCKET=str(notify.path), KILLSWITCH_LOGGING__FORMAT="text"),
                stdout=log_file,
                stderr=log_file,
            )
        assert await notify.wait_for("READY=1", 60.0), log_path.read_text()
        code, out, _ = await cli(rig, "status")
        assert code == 0
        assert "3 account(s) NOT READY" in out
    finally:
        if proc is not None and proc.returncode is None:
            proc.terminate()
            await proc.wait()
        notify.close()
        await rig.cluster.stop()
    assert "NO account is ready" in log_path.read_text()


# -- retried in place -----------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.events: list[EventRecord] = []

    def emit(self, event: EventRecord) -> None:
        self.events.append(event)

    def kinds(self) -> list[tuple[object, object]]:
        return [(e["type"], e.get("reason")) for e in self.events]


async def test_an_unready_account_stays_configured_is_retried_and_announced_once_per_change() -> (
    None
):
    recorder = Recorder()
    async with binance_venue(n_accounts=1, latency_ms=0) as venue:
        exchange = await venue.connect("acct0", recv_window_ms=1000)
        ref = AccountRef("binance", "acct0")
        service = ReadinessService(recorder, interval_s=0.05, tick_s=0.01)
        service.add(Target(ref, exchange, recv_window_ms=1000))
        await service.start()
        assert service.reason(ref) is None
        assert recorder.events == []  # ready from the start is not news

        fault = Fault(FaultKind.CLOCK_SKEW, skew_ms=4000)
        venue.sim.faults.add(fault)
        runner = asyncio.create_task(service.run())
        try:
            reason = await eventually(lambda: service.reason(ref))
            assert reason.startswith("clock skew 4.0 s > recvWindow 1.0 s")
            assert "NOT READY binance/acct0: clock skew" in service.status()
            rounds = service.rounds
            await eventually(lambda: service.rounds >= rounds + 3)  # retried, same reason
            assert [k for k, _ in recorder.kinds()] == ["alarm"]

            venue.sim.faults.remove(fault.id)
            await eventually(lambda: service.reason(ref) is None)
            assert [k for k, _ in recorder.kinds()] == ["alarm", "account_ready"]
            assert service.status() == "1/1 accounts ready"
        finally:
            await service.stop()
            await runner
