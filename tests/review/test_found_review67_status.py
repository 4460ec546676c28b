"""Review 67: `killswitch status` showed only the last kill. A one-shot cancel that ended failed
(orders left open on Binance) vanished from it, and from `killswitch_last_kill_failed`, as soon
as a later cancel on another venue ended flat: status exited 0 saying "last kill: ... FLAT".

Now a failed kill stays in `status` (`failed_kills`, printed as UNRESOLVED) and in the
`killswitch_failed_kills` gauge, across a restart, until a later kill over a scope containing
its own ends flat, or resets release every trigger of it.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from killswitch.exchanges.base import Fatal
from killswitch.journal import Journal
from killswitch.kill.record import KillState
from killswitch.model import Mode, Scope, Trigger
from killswitch.sim.faults import Fault, FaultKind
from tests.conftest import eventually
from tests.fakes import FakeExchange, ScriptedFault
from tests.fixtures.kafka import KafkaBroker, kafka_broker
from tests.fixtures.kafka_daemon import REPO, Daemon, kafka_drill
from tests.review.helpers import run_kills

__all__ = ["kafka_broker"]


def _cli_status(socket: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "killswitch", "status", "--socket", str(socket)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    return done.stdout


async def _failed_ids(daemon: Daemon) -> list[str]:
    return [k["kill_id"] for k in (await daemon.status())["failed_kills"]]


async def _done(daemon: Daemon, kill_id: str) -> bool:
    """Whether the kill's end is journaled (a `fire` answers before that)."""
    last = (await daemon.status())["last_kill"]
    return isinstance(last, dict) and last.get("summary", last)["kill_id"] == kill_id


def _failed_gauge(output: str) -> float:
    port = re.search(r"metrics listening host=\S+ port=(\d+)", output)
    assert port is not None, "the daemon did not say where its metrics are"
    with urllib.request.urlopen(f"http://127.0.0.1:{port.group(1)}/metrics") as answer:
        body = answer.read().decode()
    line = next(x for x in body.splitlines() if x.startswith("killswitch_failed_kills "))
    return float(line.split()[1])


async def test_a_failed_cancel_stays_in_status_until_a_flat_kill_covers_it(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    async with kafka_drill(tmp_path, kafka_broker.bootstrap) as d:
        config = d.config("a")
        text = config.read_text().replace("deadline_s = 60.0", "deadline_s = 3.0")
        config.write_text(text + "\n[metrics]\nenabled = true\nport = 0\n")
        binance = d.sim("binance")
        async with d.daemon("a", config) as daemon:
            await daemon.ready()
            await d.wait_live(daemon)
            binance.faults.add(Fault(FaultKind.ERROR_BEFORE, http_status=503))
            fire = {"op": "fire", "reason": "r67", "cancel_only": True, "wait": "done"}
            first = await daemon.ask({**fire, "id": "c-bin", "venues": ["binance"]})
            assert first["outcome"] == "failed"
            binance.faults.faults.clear()
            second = await daemon.ask({**fire, "id": "c-mexc", "venues": ["mexc"]})
            assert second["outcome"] == "flat"
            await eventually(lambda: _done(daemon, "c-mexc"))
            assert await _failed_ids(daemon) == ["c-bin"]
            text = _cli_status(daemon.socket)
            assert "UNRESOLVED: 1 kill(s) ended FAILED" in text
            assert "c-bin FAILED" in text
            assert _failed_gauge(daemon.output()) == 1.0
        async with d.daemon("a", config) as daemon:  # the journal keeps it across a restart
            await daemon.ready()
            await d.wait_live(daemon)
            assert await _failed_ids(daemon) == ["c-bin"]
            # A flat cancel over another venue's scope proves nothing for it ...
            third = await daemon.ask({**fire, "id": "c-bingx", "venues": ["bingx"]})
            assert third["outcome"] == "flat"
            await eventually(lambda: _done(daemon, "c-bingx"))
            assert await _failed_ids(daemon) == ["c-bin"]
            # ... one over a scope containing its own does.
            fourth = await daemon.ask({**fire, "id": "c-all"})
            assert fourth["outcome"] == "flat"
            await eventually(lambda: _done(daemon, "c-all"))
            assert await _failed_ids(daemon) == []
            assert "UNRESOLVED" not in _cli_status(daemon.socket)
            assert _failed_gauge(daemon.output()) == 0.0


def _kill_done(
    kill_id: str, state: str, scope: dict[str, object], triggers: list[str]
) -> list[dict[str, object]]:
    summary = {"kill_id": kill_id, "state": state, "scope": scope, "trigger_ids": triggers}
    return [{"trigger_id": t, "state": state, "summary": summary} for t in triggers]


def test_resets_resolve_a_failed_kill_only_once_every_trigger_of_it_is_released(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    journal.open()
    for trigger_id in ("k1", "k2"):
        trigger = Trigger(trigger_id, "t", Mode.KILL, "r67", Scope(venues=frozenset({"binance"})))
        journal.record_trigger(trigger)
    binance = Scope(venues=frozenset({"binance"})).to_json()
    for fields in _kill_done("k1", "failed", binance, ["k1", "k2"]):
        journal.append("kill_done", **fields)
    assert list(journal.state.failed) == ["k1"]
    # A narrower scope's flat proves nothing for the whole venue.
    narrower = Scope(venues=frozenset({"binance"}), symbols=frozenset({"BTCUSDT"})).to_json()
    journal.append("kill_done", **_kill_done("n", "flat", narrower, ["n"])[0])
    assert list(journal.state.failed) == ["k1"]
    journal.append("reset", actor="op", reason="r", origin="local", released=[{"trigger_id": "k1"}])
    assert list(journal.state.failed) == ["k1"]  # k2 still holds it
    # Compaction keeps it, and what the reset already released.
    journal.compact()
    journal.close()
    again = Journal(path)
    again.open()
    assert list(again.state.failed) == ["k1"]
    again.append("reset", actor="op", reason="r", origin="local", released=[{"trigger_id": "k2"}])
    assert not again.state.failed
    again.close()


async def test_a_failed_kill_logs_counts_not_every_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Review 69: the `kill failed` log line held every order left open (1.2 MB for 7,000);
    the event and the audit log name them, the log line counts them."""
    venue = FakeExchange()
    ids = venue.place("BTCUSDT", "x-", n=50)
    venue.faults.append(ScriptedFault("cancel_all", Fatal("refused", venue="binance"), times=1000))
    venue.faults.append(
        ScriptedFault("cancel_order", Fatal("refused", venue="binance"), times=1000)
    )
    with caplog.at_level(logging.ERROR):
        kills = await run_kills(tmp_path, venue, ["BTCUSDT"], [Scope()])
    assert kills[0].state is KillState.FAILED
    line = next(r.getMessage() for r in caplog.records if "kill failed" in r.getMessage())
    assert "50 orders, 0 lists" in line
    assert not any(order_id in line for order_id in ids)
