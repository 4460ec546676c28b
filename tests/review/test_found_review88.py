"""Review 88: a socket fire on a replica sharing the latch was answered "accepted" while its
latch record only waited in the replicator's outbox; the replica SIGKILLed right after the
answer took the kill with it (no other replica ever heard of it). A fire now answers once its
latch record is on the topic (`replicated`), or says plainly that it is not (exit 5).

Real parts: a Tansu broker, daemons run as systemd runs them, the simulated venues, the CLI.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from killswitch.cli.control import EXIT_NOT_REPLICATED, fire_exit_code
from killswitch.control_client import EXIT_FAILED, EXIT_OK, EXIT_RUNNING
from killswitch.handlers.control import ControlServer
from killswitch.journal import Journal
from killswitch.kill.config import Account, EngineConfig
from killswitch.kill.engine import Engine
from killswitch.model import AccountRef
from killswitch.sim.faults import Fault
from killswitch.sim.venue import SimVenue
from tests.conftest import eventually
from tests.fakes import FakeExchange
from tests.fixtures.kafka import KafkaBroker, ProxiedBroker, kafka_broker, proxied_broker
from tests.fixtures.kafka_daemon import Daemon, KafkaDrill, kafka_drill

__all__ = ["kafka_broker", "proxied_broker"]

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

CANCELS = ("/openApi/spot/v1/trade/cancel*", "/openApi/spot/v1/oco/cancel")


def bingx_refuses_cancels(d: KafkaDrill) -> SimVenue:
    """Keep the kill running: BingX answers every cancel 503 until the faults are cleared."""
    bingx = d.sim("bingx")
    for endpoint in CANCELS:
        bingx.faults.add(
            Fault.from_json({"kind": "error_before", "endpoint": endpoint, "http_status": 503})
        )
    return bingx


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "killswitch"
    return subprocess.run(
        [str(script), *args], capture_output=True, text=True, timeout=90, check=False
    )


async def latched(daemon: Daemon, trigger_id: str) -> bool:
    status = await daemon.status()
    return any(latch["trigger_id"] == trigger_id for latch in status["latches"])


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        (
            {"ok": True, "outcome": "running", "timed_out": False, "replicated": False},
            EXIT_NOT_REPLICATED,
        ),
        (
            {"ok": True, "outcome": "flat", "timed_out": False, "replicated": False},
            EXIT_NOT_REPLICATED,
        ),
        ({"ok": True, "outcome": "flat", "timed_out": False, "replicated": True}, EXIT_OK),
        ({"ok": True, "outcome": "running", "timed_out": False, "replicated": True}, EXIT_RUNNING),
        # a failed kill says more than where its latch is
        ({"ok": False, "outcome": "failed", "timed_out": False, "replicated": False}, EXIT_FAILED),
        # no shared latch: no field, the codes of before
        ({"ok": True, "outcome": "flat", "timed_out": False}, EXIT_OK),
    ],
)
def test_fire_exits_5_for_an_accepted_kill_whose_latch_only_this_host_holds(
    answer: dict[str, object], code: int
) -> None:
    assert fire_exit_code(answer) == code


async def test_a_replica_killed_right_after_answering_a_fire_leaves_the_kill_to_its_peer(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    async with (
        kafka_drill(tmp_path, kafka_broker.bootstrap) as d,
        d.daemon("a") as a,
        d.daemon("b") as b,
    ):
        await asyncio.gather(a.ready(), b.ready())
        await asyncio.gather(d.wait_live(a), d.wait_live(b))
        bingx = bingx_refuses_cancels(d)
        answer = await a.ask({"op": "fire", "reason": "socket fire on a", "actor": "r88"})
        # The host is gone for good right after the operator was told "accepted".
        a.proc.send_signal(signal.SIGKILL)
        await a.proc.wait()
        assert answer["result"] == "accepted"
        trigger_id = answer["trigger_id"]
        bingx.faults.clear()
        await eventually(lambda: latched(b, trigger_id), timeout_s=20, interval_s=0.2)
        await eventually(d.flat, timeout_s=60)
        assert answer["replicated"] is True
        assert "not_replicated" not in answer
        # Only b was left to act, and it acted on a's trigger, by a's id.
        triggers = [r["trigger"]["id"] for r in b.journal_records() if r["kind"] == "trigger"]
        assert triggers == [trigger_id]


async def test_a_fire_whose_latch_cannot_reach_the_topic_runs_and_says_it_is_not_replicated(
    tmp_path: Path, proxied_broker: ProxiedBroker
) -> None:
    async with kafka_drill(tmp_path, proxied_broker.bootstrap) as d, d.daemon("a") as a:
        await a.ready()
        await d.wait_live(a)
        await proxied_broker.cut()
        fired = await asyncio.to_thread(
            cli, "fire", "--socket", str(a.socket), "--reason", "broker away", "--no-wait"
        )
        assert fired.returncode == 5, (fired.stdout, fired.stderr)
        assert "accepted trigger" in fired.stdout
        assert "NOT REPLICATED" in fired.stderr
        trigger_id = fired.stdout.split()[2]
        # The kill did not wait for the broker: it ran while the answer waited (10 s).
        assert d.flat()
        status = await asyncio.to_thread(cli, "status", "--socket", str(a.socket))
        assert status.returncode == 0, status.stderr
        assert "NOT REPLICATED: 1 latch(es)" in status.stdout
        assert trigger_id in status.stdout.split("NOT REPLICATED")[1]

        await proxied_broker.restore()

        async def published() -> bool:
            topic: dict[str, Any] = (await a.status())["latch_topic"]
            return topic["synced"] and not topic["not_on_topic"]

        await eventually(published, timeout_s=60, interval_s=0.2)
        # A fire once the broker is back is answered replicated, and exits by its kill.
        again = await asyncio.to_thread(
            cli, "fire", "--socket", str(a.socket), "--reason", "broker back", "--json"
        )
        assert again.returncode == 0, (again.stdout, again.stderr)
        assert orjson.loads(again.stdout)["replicated"] is True


class LateShare:
    """A shared latch whose topic takes the record only after the bounded wait ended."""

    publish_timeout_s = 0.05

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.calls: list[tuple[str, float, bool]] = []  # (id, bound, kill started by then)
        self.back = False  # the broker is back: a second look finds the record on the topic

    async def latch_published(self, trigger_id: str, timeout_s: float) -> str | None:
        self.calls.append((trigger_id, timeout_s, self.engine.kill_for(trigger_id) is not None))
        if self.back and timeout_s == 0.0:
            return None
        return "not on the latch topic after 0.05s (broker away)"

    def latch_status(self) -> dict[str, object]:
        return {"not_on_topic": list(self.engine.latches())}


async def test_a_fire_answer_says_replicated_as_it_is_when_written(tmp_path: Path) -> None:
    exchange = FakeExchange("binance", "mm-1")
    exchange.place("BTCUSDT", "s7-", n=2)
    engine = Engine(
        [Account(AccountRef("binance", "mm-1"), exchange)],
        Journal(tmp_path / "journal.jsonl"),
        EngineConfig(quiet_window_s=0.01, sweep_interval_s=3600),
    )
    await engine.start()
    share = LateShare(engine)
    server = ControlServer(engine, tmp_path / "control.sock", latch_share=share)
    try:
        # Not on the topic within the bound: accepted, the kill runs, and the answer says so.
        first = await server.handle_line(orjson.dumps({"op": "fire", "reason": "r"}), "op")
        assert first["result"] == "accepted"
        assert first["replicated"] is False
        assert "broker away" in str(first["not_replicated"])
        assert share.calls == [(first["trigger_id"], 0.05, True)]  # the kill started first
        status = await server.handle_line(b'{"op": "status"}', "op")
        latch_topic = status["status"]["latch_topic"]  # type: ignore[index]
        assert latch_topic == {"not_on_topic": [first["trigger_id"]]}
        # A fire that waits for its kill asks again at the end: on the topic by then.
        share.calls.clear()
        share.back = True
        fire = {"op": "fire", "reason": "r", "wait": "done", "timeout_s": 30}
        second = await server.handle_line(orjson.dumps(fire), "op")
        assert second["ok"] is True
        assert second["replicated"] is True
        assert "not_replicated" not in second
        assert [bound for _, bound, _ in share.calls] == [0.05, 0.0]
        # cancel_only latches nothing: nothing to replicate, no field
        once = await server.handle_line(
            orjson.dumps({"op": "fire", "reason": "r", "cancel_only": True}), "op"
        )
        assert "replicated" not in once
    finally:
        await engine.stop()


class SlowShare:
    """A shared latch whose broker is away: the wait for the record lasts until `give_up`."""

    publish_timeout_s = 30.0

    def __init__(self) -> None:
        self.waiting = asyncio.Event()
        self.give_up = asyncio.Event()

    async def latch_published(self, trigger_id: str, timeout_s: float) -> str | None:
        if timeout_s == 0.0:
            return "not on the latch topic after 0s (broker away)"
        self.waiting.set()
        await self.give_up.wait()
        return "not on the latch topic after 30s (broker away)"

    def latch_status(self) -> dict[str, object]:
        return {}


async def answer_after_the_replication_wait(tmp_path: Path, **scope: object) -> dict[str, Any]:
    """A fire waiting 0.2 s for its kill, the broker away: the kill's wait times out, the kill
    ends flat while the answer still waits for the latch record, then the answer is written."""
    exchange = FakeExchange("binance", "mm-1")
    exchange.place("BTCUSDT", "s7-", n=2)
    gate = asyncio.Event()
    for method in ("cancel_all", "cancel_orders", "cancel_order", "snapshot"):
        exchange.hold(method, gate)
    engine = Engine(
        [Account(AccountRef("binance", "mm-1"), exchange, symbols=("BTCUSDT",))],
        Journal(tmp_path / "journal.jsonl"),
        EngineConfig(quiet_window_s=0.01, sweep_interval_s=3600),
    )
    await engine.start()
    share = SlowShare()
    server = ControlServer(engine, tmp_path / "control.sock", latch_share=share)
    try:
        fire = {"op": "fire", "reason": "r", "wait": "done", "timeout_s": 0.2, **scope}
        answering = asyncio.ensure_future(server.handle_line(orjson.dumps(fire), "op"))
        await share.waiting.wait()
        await asyncio.sleep(0.4)  # the kill's wait has timed out: the answer waits on the share
        assert not answering.done()
        assert not any(k.done.is_set() for k in engine.kills.values())
        gate.set()  # the kill goes on, and ends flat while the answer still waits
        await eventually(lambda: any(k.done.is_set() for k in engine.kills.values()), timeout_s=10)
        share.give_up.set()
        return await answering
    finally:
        gate.set()
        share.give_up.set()
        await engine.stop()


async def test_a_fire_answer_written_after_the_replication_wait_says_the_kill_s_state_then(
    tmp_path: Path,
) -> None:
    # Review 92: `--timeout 2` with the broker down answered "running" (exit 5) 10 s later,
    # though the kill had ended failed 5 s before: its state was read when the kill's wait
    # ended, and the answer was written after the wait for the latch record.
    answer = await answer_after_the_replication_wait(tmp_path)
    assert answer["replicated"] is False
    assert answer["outcome"] == "flat"  # before: "running", with timed_out true
    assert answer["timed_out"] is False
    assert answer["ok"] is True


async def test_the_second_look_also_warns_of_a_symbol_no_account_trades(tmp_path: Path) -> None:
    # Review 93: the warning for a mistyped symbol (review 39) came from the first look only.
    answer = await answer_after_the_replication_wait(tmp_path, symbols=["BTCUSTD"])
    assert answer["outcome"] == "flat"
    assert "BTCUSTD" in str(answer.get("warning"))
