"""Review 67: a `failed` event naming thousands of still-open orders was larger than the
producer's max_request_size. `send` raised, the record stayed at the head of the batch, and the
sink reconnected and sent it again for ever: every later event was lost, the topic filled with
repeats of the records before it, and `healthy()` stayed true. A record orjson cannot encode
stopped the sink's task for good. Now a record too large is sent shrunk (counts exact), one that
can never be sent is dropped with an alarm in its place, and a producer the broker takes
nothing from reports unhealthy.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from killswitch.events import EventType, make_event
from killswitch.exchanges.base import Fatal
from killswitch.journal import Journal
from killswitch.kafka.client import Backoff
from killswitch.kafka.events import KafkaEventSink
from killswitch.kill.config import Account
from killswitch.kill.engine import Engine
from killswitch.model import AccountRef, Mode, Scope, Trigger
from killswitch.settings import KafkaSettings
from killswitch.sim.broker import TansuBroker
from killswitch.sinks.audit import AuditLog, read_audit
from tests.conftest import eventually, free_port
from tests.fakes import FakeExchange
from tests.fixtures.kafka import (
    ENV_VAR,
    KafkaBroker,
    TcpProxy,
    create_topics,
    kafka_broker,
    read_topic,
    running,
    unique_name,
)
from tests.integration.test_kafka_events import running as running_sink
from tests.unit.test_engine import QUICK

__all__ = ["kafka_broker"]

pytestmark = pytest.mark.kafka

QUICK_BACKOFF = Backoff(initial_s=0.05, max_s=0.2)


async def events_settings(bootstrap: str) -> KafkaSettings:
    settings = KafkaSettings(bootstrap_servers=bootstrap, events_topic=unique_name("events"))
    await create_topics(bootstrap, settings.events_topic)
    return settings


async def delivered(sink: KafkaEventSink, bootstrap: str) -> list[dict[str, Any]]:
    """Every record on the sink's topic, once the sink has nothing left to send."""
    await eventually(lambda: sink.pending() == 0 and sink.sent > 0, timeout_s=30)
    records = await read_topic(bootstrap, sink.topic, count=sink.sent)
    return [orjson.loads(r.value) for r in records]


async def test_a_failed_event_too_large_is_sent_shrunk_with_exact_counts_and_holds_up_nothing(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    settings = await events_settings(kafka_broker.bootstrap)
    symbols = [f"SYM{i}USDT" for i in range(20)]
    venue = FakeExchange(venue="binance", account="mm-1")
    for symbol in symbols:
        venue.place(symbol, client_order_id="strat7-2026-11-20-grid-", n=350)  # 7,000 open
    for method in ("cancel_all", "cancel_order", "cancel_orders", "cancel_order_list"):
        venue.fail(method, Fatal("-2015 Invalid API-key, IP, or permissions."), times=10**6)
    sink = KafkaEventSink(settings, key="a", backoff=QUICK_BACKOFF)
    audit = AuditLog(tmp_path / "audit.jsonl")
    engine = Engine(
        [Account(AccountRef("binance", "mm-1"), venue, symbols=tuple(symbols))],
        Journal(tmp_path / "journal.jsonl"),
        replace(QUICK, deadline_s=2.0),
        rng=random.Random(1),
    )
    engine.events.add(audit)
    engine.events.add(sink)
    async with running_sink(sink):
        await engine.start()
        try:
            await engine.submit(Trigger("k1", "test", Mode.KILL, "dd", Scope.of()))
            await engine.kill_for("k1").finished.wait()
            await engine.reset(actor="ops", reason="after the failed kill")
            events = await delivered(sink, kafka_broker.bootstrap)
            assert sink.healthy()
        finally:
            await engine.stop()
    audit.close()

    types = [e["type"] for e in events]
    assert types.count("failed") == 1
    assert types.index("failed") < types.index("reset")  # nothing behind it was held up
    failed = events[types.index("failed")]
    assert failed["truncated"] is True
    assert len(orjson.dumps(failed)) <= sink.max_record_bytes
    # What is still open is cut to a few, its count stays exact.
    open_now = failed["still_open"]["binance/mm-1"]
    assert open_now["orders_total"] == 7000
    assert 0 < len(open_now["orders"]) <= 100
    [account] = failed["accounts"]
    assert account["still_open"]["orders_total"] == 7000
    assert sink.truncated == 1
    assert sink.undeliverable == 0
    # The audit log keeps the record whole.
    [whole] = [r for r in read_audit(tmp_path / "audit.jsonl") if r["type"] == "failed"]
    assert whole["seq"] == failed["seq"]
    assert len(whole["still_open"]["binance/mm-1"]["orders"]) == 7000
    assert "truncated" not in whole


async def test_a_record_too_large_with_no_list_to_cut_is_sent_as_its_small_fields(
    kafka_broker: KafkaBroker,
) -> None:
    settings = await events_settings(kafka_broker.bootstrap)
    sink = KafkaEventSink(settings, backoff=QUICK_BACKOFF)
    async with running_sink(sink):
        big = make_event(EventType.ALARM, account="binance/mm-1", error="x" * 2_000_000)
        sink.emit(big)
        sink.emit(make_event(EventType.RESET, actor="ops"))
        events = await delivered(sink, kafka_broker.bootstrap)
    assert [e["type"] for e in events] == ["alarm", "reset"]
    assert events[0]["seq"] == big["seq"]
    assert events[0]["account"] == "binance/mm-1"
    assert events[0]["truncated"] is True
    assert events[0]["omitted"] == ["error"]


async def test_a_record_the_producer_refuses_is_dropped_once_with_an_alarm_and_holds_up_nothing(
    kafka_broker: KafkaBroker,
) -> None:
    settings = await events_settings(kafka_broker.bootstrap)
    # Allowed by the sink, refused by the producer (max_request_size, 1 MiB), as a broker
    # with a smaller message.max.bytes would refuse it.
    sink = KafkaEventSink(settings, max_record_bytes=4 << 20, backoff=QUICK_BACKOFF)
    async with running_sink(sink):
        sink.emit(make_event(EventType.TRIGGERED, n=1))
        refused = make_event(EventType.FAILED, still_open={"orders": ["x" * 100] * 15_000})
        sink.emit(refused)
        sink.emit(make_event(EventType.RESET, n=3))
        events = await delivered(sink, kafka_broker.bootstrap)
        assert sink.healthy()
    assert [e["type"] for e in events] == ["triggered", "reset", "alarm"]
    alarm = events[-1]
    assert alarm["kind"] == "event_not_sent"
    assert (alarm["record_type"], alarm["record_seq"]) == ("failed", refused["seq"])
    assert "MessageSizeTooLargeError" in alarm["error"]
    assert (sink.undeliverable, sink.dropped) == (1, 1)


async def test_a_record_json_cannot_encode_is_dropped_with_an_alarm_and_the_sink_keeps_going(
    kafka_broker: KafkaBroker,
) -> None:
    settings = await events_settings(kafka_broker.bootstrap)
    sink = KafkaEventSink(settings, backoff=QUICK_BACKOFF)
    async with running_sink(sink) as task:
        odd = make_event(EventType.OUTCOME, filled=2**70)
        sink.emit(odd)
        sink.emit(make_event(EventType.FLAT, n=2))
        events = await delivered(sink, kafka_broker.bootstrap)
        assert not task.done()
    assert [e["type"] for e in events] == ["flat", "alarm"]
    assert (events[1]["record_type"], events[1]["record_seq"]) == ("outcome", odd["seq"])
    assert sink.undeliverable == 1


class ProduceRefusingProxy(TcpProxy):
    """A proxy that passes everything to the broker but Produce requests while `refusing`:
    the client connects and reads metadata, and no record is ever taken."""

    refusing = True
    refused = 0

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        if dst.get_extra_info("peername")[1] != self.target_port:
            await super()._pump(src, dst)  # the broker's answers
            return
        pending = b""
        try:
            while data := await src.read(65536):
                pending += data
                while len(pending) >= 4:
                    end = 4 + int.from_bytes(pending[:4], "big")
                    if len(pending) < end:
                        break
                    request, pending = pending[:end], pending[end:]
                    if self.refusing and int.from_bytes(request[4:6], "big") == 0:  # Produce
                        self.refused += 1
                        continue
                    dst.write(request)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(dst)
            dst.transport.abort()


@pytest.fixture
async def refusing_broker() -> AsyncIterator[ProduceRefusingProxy]:
    """A Tansu of this test's own, reachable only through a `ProduceRefusingProxy`."""
    if os.environ.get(ENV_VAR):
        pytest.skip(f"needs a broker of its own behind a proxy; {ENV_VAR} is set")
    proxy_port = free_port()
    with running(TansuBroker(advertised_port=proxy_port)) as tansu:
        proxy = ProduceRefusingProxy(tansu.port, proxy_port)
        try:
            await proxy.start()
            yield proxy
        finally:
            await proxy.close()


async def test_a_producer_whose_sends_all_fail_on_a_reachable_broker_says_it_is_stuck(
    refusing_broker: ProduceRefusingProxy,
) -> None:
    """Stuck is said in `status`, and the sink stays healthy: going unhealthy would have the
    watchdog restart the kill switch over its events (review 74)."""
    settings = await events_settings(f"127.0.0.1:{refusing_broker.port}")
    sink = KafkaEventSink(settings, stuck_after_failures=1, backoff=QUICK_BACKOFF)
    async with running_sink(sink):
        assert sink.healthy()
        sink.emit(make_event(EventType.TRIGGERED, n=1))
        await eventually(sink.stuck, timeout_s=60)
        assert refusing_broker.refused > 0
        assert sink.status().startswith("stuck")
        assert sink.healthy()
        refusing_broker.refusing = False
        await eventually(lambda: sink.sent == 1, timeout_s=60)
        assert not sink.stuck()
