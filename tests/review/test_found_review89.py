"""Review 89: two faults in a socket fire's wait for its latch record (review 88's fix).

F1: the fire published the outbox from its own task, under its own deadline. A send cut short
(a bounded wait that ended before a slow acknowledgement, a fire cancelled, the 0 s "second
look" after a kill's wait) still reached the topic (aiokafka keeps what it queued), while the
outbox kept the record: the next drain wrote it again. Only the replicator's loop sends now,
woken by a fire; a fire only waits, and the second look only looks.

F2: a fire retrying the id of a latch a reset had released (no latch held anywhere) asked for
its replication: `replicated: false`, exit 5 and an ERROR "only this replica holds it" when
this replica made the reset, `replicated: true` when a peer did (this replica's own
acknowledgement outlived the peer's reset). Such an answer now carries neither field, and an
acknowledged latch record whose id a reset on the topic released is not "on the topic".

Real parts: a Tansu broker and real replicators (and a real engine and control server for
F2); the only stand-in is a slow acknowledgement, put after aiokafka queued the record.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from killswitch.cli.control import fire_exit_code
from killswitch.control_client import EXIT_OK
from killswitch.handlers.control import ControlServer
from killswitch.journal import Journal
from killswitch.kafka.replicas import LatchReplicator
from killswitch.kill.config import Account, EngineConfig
from killswitch.kill.engine import Engine
from killswitch.model import AccountRef
from killswitch.settings import KafkaSettings
from tests.conftest import eventually
from tests.fakes import FakeExchange
from tests.fixtures.kafka import KafkaBroker, kafka_broker, unique_name
from tests.fixtures.kafka_engine import FakeEngine
from tests.integration.test_kafka_replicas import kill, replicator, running

__all__ = ["kafka_broker"]

pytestmark = [pytest.mark.kafka]

ACK_S = 0.6  # the broker's acknowledgement of each record, slower than a fire's bound


@pytest.fixture
def latch_settings(kafka_broker: KafkaBroker) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=kafka_broker.bootstrap, latch_topic=unique_name("latch"))


def slow_acks(rep: LatchReplicator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Acknowledge each record `ACK_S` late, as a loaded broker does with acks=all: aiokafka
    has queued the record (it reaches the topic) before its `send_and_wait` first yields."""
    producer = rep._producer
    assert producer is not None

    async def send_and_wait(topic: str, value: bytes | None = None, **kw: Any) -> Any:
        delivered = await producer.send(topic, value, **kw)
        await asyncio.sleep(ACK_S)
        return await delivered

    monkeypatch.setattr(producer, "send_and_wait", send_and_wait)


async def topic_keys(settings: KafkaSettings) -> list[str]:
    """Every record's key on the latch topic, in offset order (a tombstone as `-key`)."""
    tp = TopicPartition(settings.latch_topic, 0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        keys: list[str] = []
        async with asyncio.timeout(30):
            while await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=200)
                keys.extend(
                    ("" if r.value is not None else "-") + (r.key or b"").decode()
                    for r in batch.get(tp, [])
                )
        return keys
    finally:
        await consumer.stop()


async def fire_cut_short(rep: LatchReplicator, how: str) -> None:
    """What a socket fire does to its replicator before the broker acknowledged its record."""
    if how == "bounded wait ends":
        # (its answer may be either: the broker took the record, only its ack is late)
        await rep.latch_published("k-1", 0.2)
    elif how == "second look":
        assert await rep.latch_published("k-1", 0.0) is not None
    else:  # the fire is cancelled (the control server stops, the client went away)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(rep.latch_published("k-1", 30.0), 0.1)


@pytest.mark.parametrize("how", ["bounded wait ends", "second look", "fire cancelled"])
async def test_a_fire_cut_short_before_the_ack_leaves_one_copy_of_its_latch_record(
    latch_settings: KafkaSettings, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    engine = FakeEngine()
    # A long poll: a fire finds the loop waiting on the topic, as it mostly does.
    rep = replicator(latch_settings, "replica-a", engine, poll_timeout_ms=1000)
    async with running(rep):
        # An earlier kill, published: the loop now waits on the topic, as it mostly does.
        await engine.submit(kill("k-0"))
        assert await rep.latch_published("k-0", 10.0) is None
        await eventually(lambda: "k-0" in rep.log.latched, timeout_s=10)
        slow_acks(rep, monkeypatch)
        await engine.submit(kill("k-1"))
        await fire_cut_short(rep, how)
        # A fire that waits long enough is answered once the loop's one copy is acknowledged.
        assert await rep.latch_published("k-1", 10.0) is None
        await engine.reset(actor="ops", reason="all clear")
        # two latches, a reset, two tombstones
        await eventually(lambda: rep.published == 5, timeout_s=30)
    keys = await topic_keys(latch_settings)
    assert keys[:2] == ["latch/k-0", "latch/k-1"]
    assert keys.count("latch/k-1") == 1, keys  # before: one more copy per fire cut short
    assert sorted(keys[-2:]) == ["-latch/k-0", "-latch/k-1"]


async def test_a_fire_wakes_the_loop_that_waits_on_the_topic(
    latch_settings: KafkaSettings,
) -> None:
    engine = FakeEngine()
    # The loop would not look at its outbox again for 20 s: the fire wakes it.
    rep = replicator(latch_settings, "replica-a", engine, poll_timeout_ms=20_000)
    async with running(rep):
        await engine.submit(kill("k-1"))
        assert await rep.latch_published("k-1", 5.0) is None
    assert await topic_keys(latch_settings) == ["latch/k-1"]


async def test_an_acknowledged_latch_a_peer_reset_is_no_longer_on_the_topic(
    latch_settings: KafkaSettings,
) -> None:
    a_engine, b_engine = FakeEngine(), FakeEngine()
    a = replicator(latch_settings, "replica-a", a_engine)
    b = replicator(latch_settings, "replica-b", b_engine)
    async with running(a, b):
        await a_engine.submit(kill("k-1"))
        assert await a.latch_published("k-1", 10.0) is None
        await eventually(lambda: b_engine.latched(), timeout_s=30)
        await b_engine.reset(actor="ops", reason="all clear")
        await eventually(lambda: "k-1" in a.log.released, timeout_s=30)
        # Acknowledged here once, released on the topic since: no replica holds it now.
        why = await a.latch_published("k-1", 0.0)
        assert why is not None  # before: None, "replicated"
        assert "a reset on the latch topic released it" in why


def real_engine(tmp_path: Path, name: str) -> Engine:
    exchange = FakeExchange("binance", "mm-1")
    exchange.place("BTCUSDT", "s-", n=2)
    return Engine(
        [Account(AccountRef("binance", "mm-1"), exchange)],
        Journal(tmp_path / f"{name}.jsonl"),
        EngineConfig(quiet_window_s=0.01, sweep_interval_s=3600),
    )


@pytest.mark.parametrize("reset_on", ["this replica", "a peer"])
async def test_a_retried_fire_of_a_released_latch_says_nothing_of_replication(
    tmp_path: Path,
    latch_settings: KafkaSettings,
    caplog: pytest.LogCaptureFixture,
    reset_on: str,
) -> None:
    engine = real_engine(tmp_path, "a")
    await engine.start()
    group = latch_settings.model_copy(update={"group_id": "replica-a", "replica_id": "replica-a"})
    rep = LatchReplicator(group, engine, accounts=[AccountRef("binance", "mm-1")])
    engine.events.add(rep)
    peer_engine = FakeEngine()
    peer = replicator(latch_settings, "replica-b", peer_engine)
    server = ControlServer(engine, tmp_path / "control.sock", latch_share=rep)
    fire = orjson.dumps({"op": "fire", "reason": "r", "id": "X", "wait": "done"})
    try:
        async with running(rep, peer):
            first = await server.handle_line(fire, "op")
            assert (first["result"], first["replicated"]) == ("accepted", True)
            await eventually(lambda: peer_engine.latched(), timeout_s=30)
            if reset_on == "this replica":
                await server.handle_line(b'{"op": "reset", "reason": "done"}', "op")
                await eventually(lambda: rep.published == 3, timeout_s=30)
            else:
                await peer_engine.reset(actor="ops", reason="done")
                await eventually(lambda: not engine.latches(), timeout_s=30)
            await eventually(lambda: "X" in rep.log.released, timeout_s=30)
            caplog.clear()
            with caplog.at_level(logging.ERROR, logger="killswitch.handlers.control"):
                again = await server.handle_line(fire, "op")
        assert again["result"] == "duplicate"
        assert engine.latches() == {}
        # No latch is held anywhere: nothing to say about replicating one (before: false
        # with exit 5 when reset here, true when reset by a peer).
        assert "replicated" not in again
        assert "not_replicated" not in again
        assert fire_exit_code(again) == EXIT_OK
        assert not [r for r in caplog.records if "NOT on the latch topic" in r.getMessage()]
    finally:
        await engine.stop()


async def test_a_fire_after_the_replicator_stopped_is_told_at_once(
    latch_settings: KafkaSettings,
) -> None:
    # Review 90: the control server stops after the replicator; a fire between the two got a
    # waiter nobody settles and waited its whole bound (10 s in the daemon) to be told so.
    engine = FakeEngine()
    rep = replicator(latch_settings, "replica-a", engine)
    async with running(rep):
        await engine.submit(kill("k-1"))
        assert await rep.latch_published("k-1", 10.0) is None
    await engine.submit(kill("k-2"))  # its latch record waits in the outbox, never sent
    why = await asyncio.wait_for(rep.latch_published("k-2", 60.0), 30.0)
    assert why is not None
    assert "the replicator stopped before publishing it" in why
