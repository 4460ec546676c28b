"""The daemon as systemd runs it, driven through Kafka, against the simulated venues."""

from __future__ import annotations

import signal
from pathlib import Path

import orjson
import pytest

from killswitch.sim.book import OrderSpec
from tests.conftest import eventually
from tests.fixtures.kafka import KafkaBroker, kafka_broker, read_topic
from tests.fixtures.kafka_daemon import alert, hold_commit_command, kafka_drill

__all__ = ["kafka_broker"]

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


async def test_a_published_kill_alert_ends_flat_and_its_events_reach_the_topic_in_order(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    async with kafka_drill(tmp_path, kafka_broker.bootstrap) as d:
        assert all(n > 0 for n in d.open_orders().values())
        async with d.daemon("a") as daemon:
            await daemon.ready()
            await d.wait_live(daemon)
            await d.publish(alert("kill-1", reason="drawdown 5.2% > 5%"))
            await eventually(d.flat, timeout_s=60)
            await eventually(
                lambda: any(r["type"] == "confirmed" for r in daemon.audit()), timeout_s=60
            )
            status = await daemon.status()
            assert status["latched"] is True
        audit = daemon.audit()
        confirmed = next(r["seq"] for r in audit if r["type"] == "confirmed")
        until_confirmed = [r for r in audit if int(r["seq"]) <= int(confirmed)]
        records = await read_topic(
            kafka_broker.bootstrap, d.topics["events_topic"], count=len(until_confirmed)
        )
    events = [orjson.loads(r.value) for r in records]
    # the events topic carries what the audit log has, in the same order
    assert [(e["seq"], e["type"]) for e in events][: len(until_confirmed)] == [
        (r["seq"], r["type"]) for r in until_confirmed
    ]
    kill_steps = [e["type"] for e in events if e["type"] in ("triggered", "latched", "flat")]
    assert kill_steps == ["triggered", "latched", "flat"]
    triggered = next(e for e in events if e["type"] == "triggered")
    assert triggered["trigger"]["id"] == "kill-1"
    assert triggered["trigger"]["source"] == "kafka"
    assert triggered["trigger"]["actor"] == "pnl-monitor"
    assert any(e["type"] == "outcome" and e["cancelled"] for e in events)
    assert {r.key for r in records} == {b"a"}


async def test_sigkill_between_journal_and_commit_acts_again_on_restart_with_one_latch(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    async with kafka_drill(tmp_path, kafka_broker.bootstrap) as d:
        config = d.config("a")
        group = f"group-a-{d.topics['alerts_topic'][-6:]}"
        async with d.daemon("a", config, command=hold_commit_command()) as first:
            await first.ready()
            await d.wait_live(first)
            await d.publish(alert("kill-1"))
            held = first.state_dir / "held-commit"
            await eventually(held.exists, timeout_s=60)
            assert held.read_text() == "0:1"  # about to commit past the alert
            first.proc.send_signal(signal.SIGKILL)
            await first.proc.wait()
        assert await d.committed(group) == 0  # the pin of the first start, not past the alert
        assert first.latched_in_journal()
        bingx = d.sim("bingx")
        bingx.book(bingx.accounts["mm-1"]).place(
            OrderSpec("SOL-USDT", client_order_id="while_down")
        )
        assert not d.flat()

        async with d.daemon("a", config) as second:
            await second.ready()
            assert d.flat()  # a latched journal is re-swept before READY
            await eventually(lambda: d.committed(group), timeout_s=60)
            assert await d.committed(group) == 1
            duplicates = [r for r in second.audit() if r["type"] == "duplicate"]
            assert [r["trigger_id"] for r in duplicates] == ["kill-1"]
        records = second.journal_records()
    assert [r["trigger"]["id"] for r in records if r["kind"] == "trigger"] == ["kill-1"]
    assert [r["trigger_id"] for r in records if r["kind"] == "latch"] == ["kill-1"]
