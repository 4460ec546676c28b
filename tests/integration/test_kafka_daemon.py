"""The daemon as systemd runs it, driven through Kafka, against the simulated venues."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import orjson
import pytest

from killswitch.handlers.alerts import signature
from killswitch.sim.book import OrderSpec
from tests.conftest import eventually
from tests.fixtures.kafka import (
    KafkaBroker,
    ProxiedBroker,
    kafka_broker,
    proxied_broker,
    read_topic,
)
from tests.fixtures.kafka_daemon import alert, hold_commit_command, kafka_drill

__all__ = ["kafka_broker", "proxied_broker"]

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
        group = d.group("a")
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


BAD_RECORDS = (
    b"not json",
    b"[1, 2, 3]",
    alert("bad", action="nuke"),
    alert("bad", scpoe={"venues": ["binance"]}),
    alert("bad", scope={"venues": ["ftx"]}),
)


async def test_ten_thousand_malformed_records_are_dead_lettered_and_every_valid_alert_acts(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    async with kafka_drill(tmp_path, kafka_broker.bootstrap) as d:
        async with d.daemon("a") as daemon:
            await daemon.ready()
            await d.wait_live(daemon)
            values = []
            valid = []
            for i in range(10_000):
                values.append(BAD_RECORDS[i % len(BAD_RECORDS)])
                if i % 500 == 250:
                    valid.append(f"kill-{i}")
                    values.append(alert(valid[-1]))
            await d.publish(*values)
            total = len(values)

            async def all_consumed() -> bool:
                return await d.committed(d.group("a")) == total

            await eventually(all_consumed, timeout_s=120)
            await eventually(d.flat, timeout_s=60)
            assert daemon.proc.returncode is None
            status = await daemon.status()
            assert status["latched"] is True
        journal = daemon.journal_records()
        letters = await read_topic(
            kafka_broker.bootstrap, d.topics["dead_letter_topic"], count=10_000
        )
    assert [r["trigger"]["id"] for r in journal if r["kind"] == "trigger"] == valid
    assert len(letters) == 10_000
    offsets = sorted(int(dict(r.headers)["x-dlq-offset"]) for r in letters)
    assert len(set(offsets)) == 10_000
    assert sorted(r.value for r in letters) == sorted(BAD_RECORDS * 2000)
    assert {dict(r.headers)["x-dlq-error-kind"] for r in letters} == {b"malformed"}


async def test_an_unsigned_alert_is_rejected_when_a_key_is_set_and_a_signed_one_acts(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    key = "risk-engine-signing-key"
    async with kafka_drill(tmp_path, kafka_broker.bootstrap) as d:
        before = d.open_orders()
        config = d.config("a", kafka={"alert_hmac_key": key})
        async with d.daemon("a", config) as daemon:
            await daemon.ready()
            await d.wait_live(daemon)
            unsigned = alert("unsigned-kill")
            await d.publish(unsigned)
            [letter] = await read_topic(
                kafka_broker.bootstrap, d.topics["dead_letter_topic"], count=1
            )
            assert letter.value == unsigned
            assert dict(letter.headers)["x-dlq-error-kind"] == b"unsigned"
            assert d.open_orders() == before
            assert (await daemon.status())["latched"] is False
            signed = alert("signed-kill")
            await d.publish(
                signed, headers=[("x-signature", signature(key.encode(), signed).encode())]
            )
            await eventually(d.flat, timeout_s=60)
        journal = daemon.journal_records()
    assert [r["trigger"]["id"] for r in journal if r["kind"] == "trigger"] == ["signed-kill"]


def _bot7_watch(*, timeout_s: float) -> dict[str, object]:
    """A heartbeat watch of the producer bot-7, killing mexc/mm-1 when it falls silent."""
    return {
        "source": "bot-7",
        "timeout_s": timeout_s,
        "mode": "kill",
        "scope": {"venues": ["mexc"], "accounts": ["mm-1"]},
    }


async def test_a_silent_heartbeat_fires_its_scope_and_only_its_scope(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    async with kafka_drill(tmp_path, kafka_broker.bootstrap) as d:
        config = d.config("a", heartbeats=[_bot7_watch(timeout_s=1.5)])
        async with d.daemon("a", config) as daemon:
            await daemon.ready()
            await d.wait_live(daemon)
            await d.publish(alert("hb-1", action="heartbeat", source="bot-7"))
            await eventually(lambda: d.flat(["mexc/mm-1"]), timeout_s=60)
            silent = [r for r in daemon.audit() if r["type"] == "heartbeat_silent"]
            assert [r["source"] for r in silent] == ["bot-7"]
        others = {k: v for k, v in d.open_orders().items() if k != "mexc/mm-1"}
        triggers = [r["trigger"] for r in daemon.journal_records() if r["kind"] == "trigger"]
    assert all(n > 0 for n in others.values())
    assert [(t["source"], t["actor"], t["mode"]) for t in triggers] == [
        ("heartbeat", "bot-7", "kill")
    ]
    assert triggers[0]["scope"]["venues"] == ["mexc"]


async def test_a_producer_that_keeps_beating_fires_nothing(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    # The daemon's heartbeat watch must hear the beats the alerts input reads (a refactor once
    # left them on an attribute nothing read: every watch fired at its timeout, beating or not).
    async with kafka_drill(tmp_path, kafka_broker.bootstrap) as d:
        config = d.config("a", heartbeats=[_bot7_watch(timeout_s=3.0)])
        async with d.daemon("a", config) as daemon:
            await daemon.ready()
            await d.wait_live(daemon)
            for beat in range(16):  # 8 s of beats, every half second: past two timeouts
                await d.publish(alert(f"hb-{beat}", action="heartbeat", source="bot-7"))
                await asyncio.sleep(0.5)
            silent = [r for r in daemon.audit() if r["type"] == "heartbeat_silent"]
        triggers = [r for r in daemon.journal_records() if r["kind"] == "trigger"]
    assert silent == []
    assert triggers == []
    assert all(n > 0 for n in d.open_orders().values())


async def test_a_fill_notional_rule_fires_on_the_accounts_stream_and_kills_that_account(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    async with kafka_drill(tmp_path, kafka_broker.bootstrap) as d:
        rule = {
            "kind": "fill_notional",
            "venue": "binance",
            "account": "mm-1",
            "limit": 1.0,
            "window_s": 60.0,
        }
        config = d.config("a", rules=[rule])
        async with d.daemon("a", config) as daemon:
            await daemon.ready()
            await d.wait_live(daemon)
            sim = d.sim("binance")
            book = sim.book(sim.accounts["mm-1"])
            filled = next(iter(book.orders.values()))
            book.fill(filled.order_id)  # a fill well above 1.0 of notional
            await eventually(lambda: d.flat(["binance/mm-1"]), timeout_s=60)
            fired = [r for r in daemon.audit() if r["type"] == "rule_fired"]
            assert [r["rule"] for r in fired] == ["fill_notional:binance/mm-1"]
        others = {k: v for k, v in d.open_orders().items() if k != "binance/mm-1"}
        triggers = [r["trigger"] for r in daemon.journal_records() if r["kind"] == "trigger"]
    assert all(n > 0 for n in others.values())
    assert [(t["source"], t["mode"]) for t in triggers] == [("rule", "kill")]
    assert triggers[0]["scope"] == {
        "venues": ["binance"],
        "accounts": ["mm-1"],
        "symbols": [],
        "client_order_id_prefix": None,
    }
    assert "filled notional" in triggers[0]["reason"]


async def test_two_replicas_given_the_same_alert_end_flat_and_the_slower_finds_it_all_gone(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    async with kafka_drill(tmp_path, kafka_broker.bootstrap) as d:
        await d.pin(d.group("b"), 0)  # replica b's group already exists, b is slow to act
        async with d.daemon("a") as a:
            await a.ready()
            await d.wait_live(a)
            await d.publish(alert("kill-1"))
            await eventually(d.flat, timeout_s=60)
            async with d.daemon("b") as b:
                await b.ready()
                await eventually(lambda: d.committed(d.group("b")), timeout_s=60)
                status = await b.status()
                assert status["latched"] is True
                await eventually(
                    lambda: any(r["type"] in ("flat", "confirmed") for r in b.audit()),
                    timeout_s=60,
                )
                assert d.flat()
    a_outcomes = [r for r in a.audit() if r["type"] == "outcome"]
    b_outcomes = [r for r in b.audit() if r["type"] == "outcome"]
    assert sum(int(r["cancelled"]) for r in a_outcomes) > 0
    assert b_outcomes
    # every order was already gone: cancel-alls answered "nothing open" (the connectors turn
    # that AlreadyGone into an empty ack), cancels by id AlreadyGone; nothing was cancelled
    assert {r["result"] for r in b_outcomes} <= {"ok", "gone"}
    assert {r["error"]["kind"] for r in b_outcomes if r["error"]} <= {"AlreadyGone"}
    assert sum(int(r["cancelled"]) for r in b_outcomes) == 0


async def test_a_reset_on_one_replica_unlatches_the_other(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    async with kafka_drill(tmp_path, kafka_broker.bootstrap) as d:
        async with d.daemon("a") as a, d.daemon("b") as b:
            await a.ready()
            await b.ready()
            await d.wait_live(a)
            await d.publish(alert("kill-1"))

            async def both_latched() -> bool:
                return bool((await a.status())["latched"] and (await b.status())["latched"])

            await eventually(both_latched, timeout_s=60)
            answer = await b.ask({"op": "reset", "reason": "false alarm"})
            assert answer["was_latched"] is True

            async def a_unlatched() -> bool:
                return (await a.status())["latched"] is False

            await eventually(a_unlatched, timeout_s=60)
        resets = [r for r in a.audit() if r["type"] == "reset"]
    assert [(r["origin"], r["reason"]) for r in resets] == [("replica:b", "false alarm")]


async def test_without_the_broker_the_daemon_says_so_still_kills_and_resumes_when_it_returns(
    tmp_path: Path, proxied_broker: ProxiedBroker
) -> None:
    async with kafka_drill(tmp_path, proxied_broker.bootstrap) as d:
        async with d.daemon("a") as daemon:
            await daemon.ready()
            await d.wait_live(daemon)
            await proxied_broker.cut()

            def reported() -> bool:
                return any("kafka-alerts: disconnected" in line for line in daemon.notify.lines)

            await eventually(reported, timeout_s=60, interval_s=0.1)
            assert daemon.proc.returncode is None
            fired = await daemon.ask({"op": "fire", "reason": "operator", "wait": "done"})
            assert fired["ok"] is True  # the control socket works without Kafka
            assert d.flat()
            await daemon.ask({"op": "reset", "reason": "drill over"})
            bingx = d.sim("bingx")
            bingx.book(bingx.accounts["mm-1"]).place(OrderSpec("SOL-USDT", client_order_id="late"))
            await proxied_broker.restore()
            await d.publish(alert("after-outage"))
            await eventually(d.flat, timeout_s=60)
        triggers = [r["trigger"]["id"] for r in daemon.journal_records() if r["kind"] == "trigger"]
    assert triggers[1:] == ["after-outage"]
