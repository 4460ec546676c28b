"""The latch replicator's read before the engine resumes its journal's latched kills, when the
topic cannot be read or the release cannot be journaled: every latch resumes (fail-safe, never
open), an alarm says the cluster's resets were not applied, and READY is not held up twice.
With a broker, see tests/integration/test_kafka_replica_restart.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
from aiokafka import TopicPartition

from killswitch.backoff import Backoff
from killswitch.kafka.replicas import LatchReplicator
from killswitch.model import AccountRef, Mode, Scope, Trigger
from killswitch.settings import KafkaSettings
from tests.conftest import free_port
from tests.fixtures.kafka_engine import FakeEngine
from tests.unit.test_engine import Rig, kill_trigger, make_rig

SYNC_TIMEOUT_S = 0.5


async def latched_last_life(tmp_path: Path) -> Rig:
    """An engine whose journal holds k1 latched, not started (a restart about to resume it)."""
    first = await make_rig(tmp_path)
    await first.engine.submit(kill_trigger("k1", venues=["binance"]))
    await first.engine.wait_idle()
    await first.engine.stop()
    binance = first.venues["binance"]
    binance.place("ETHUSDT", "after-", n=2)  # placed while this replica was down
    return await make_rig(tmp_path, first.venues, start=False)


def replicator(engine: Any, bootstrap: str) -> LatchReplicator:
    rep = LatchReplicator(
        KafkaSettings(bootstrap_servers=bootstrap),
        engine,
        replica_id="b",
        sync_timeout_s=SYNC_TIMEOUT_S,
        backoff=Backoff(initial_s=0.01, max_s=0.02),
        accounts=[AccountRef("binance", "mm-1")],
    )
    engine.events.add(rep)
    return rep


@contextlib.asynccontextmanager
async def silent_broker() -> AsyncIterator[str]:
    """A listener that accepts connections and never answers (a broker behind a black hole)."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        for writer in held:
            writer.transport.abort()
        server.close()
        await server.wait_closed()


async def assert_resumed_with_an_alarm(rig: Rig, rep: LatchReplicator) -> None:
    await rig.engine.start(before_resume=rep.before_resume)
    try:
        assert "k1" in rig.engine.latches()
        assert [e["trigger_id"] for e in rig.log.of("resumed")] == ["k1"]
        assert not rig.venues["binance"].open_keys()  # the resumed kill ran
        (alarm,) = rig.log.of("alarm")
        assert alarm["kind"] == "latch_sync_skipped"
        assert alarm["account"] == "latch_topic"
        assert alarm["trigger_ids"] == ["k1"]
        assert alarm["error"]
        await rep.start()  # tried just now: left to run()'s backoff, READY not held up again
        assert rep.connects == 0
        assert rep.status().startswith("disconnected")
    finally:
        await rep.stop()
        await rig.engine.stop()


async def test_without_a_broker_a_restart_resumes_every_latch_and_raises_an_alarm(
    tmp_path: Path,
) -> None:
    rig = await latched_last_life(tmp_path)
    rep = replicator(rig.engine, f"127.0.0.1:{free_port()}")  # nothing listens: refused
    await assert_resumed_with_an_alarm(rig, rep)


async def test_a_broker_that_never_answers_holds_the_resume_for_the_sync_timeout_only(
    tmp_path: Path,
) -> None:
    rig = await latched_last_life(tmp_path)
    async with silent_broker() as bootstrap:
        rep = replicator(rig.engine, bootstrap)
        await assert_resumed_with_an_alarm(rig, rep)


async def test_a_restart_holding_no_latch_does_not_touch_the_topic_before_it_resumes() -> None:
    engine = FakeEngine()
    rep = replicator(engine, f"127.0.0.1:{free_port()}")
    await rep.before_resume()
    assert (rep.connects, rep.disconnects) == (0, 0)
    assert not engine.sink.of_type("alarm")


# -- the release itself fails (a journal that cannot be written) -----------------------------

TP = TopicPartition("risk.killswitch.latch", 0)


class TopicReader:
    """Just enough of aiokafka's consumer for the replicator's read: the records, once."""

    def __init__(self, records: list[tuple[bytes, bytes | None]]) -> None:
        self.records = records
        self.read = False

    async def end_offsets(self, _tps: object) -> dict[TopicPartition, int]:
        return {TP: len(self.records)}

    async def getmany(self, *_tps: object, timeout_ms: int = 0) -> dict[TopicPartition, Any]:
        if self.read:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        self.read = True
        return {
            TP: [SimpleNamespace(offset=i, key=k, value=v) for i, (k, v) in enumerate(self.records)]
        }

    async def stop(self) -> None:
        pass


class FakeTopicReplicator(LatchReplicator):
    def __init__(self, *a: Any, topic: TopicReader, **k: Any) -> None:
        super().__init__(*a, **k)
        self.topic_reader = topic

    async def _connect(self) -> None:
        self._consumer = self.topic_reader


class FullDisk(FakeEngine):
    async def reset(self, **kw: Any) -> bool:
        raise OSError(28, "No space left on device")


async def test_a_release_that_cannot_be_journaled_keeps_the_latch_and_raises_an_alarm() -> None:
    engine = FullDisk()
    k1 = Trigger("k1", "control", Mode.KILL, "drawdown", Scope.of(["binance"]))
    await engine.submit(k1)
    reset = {"type": "reset", "origin": "a", "released": ["k1"]}
    topic = TopicReader(
        [
            (b"latch/k1", orjson.dumps({"type": "latch", "origin": "b", "trigger": k1.to_json()})),
            (b"reset/a/1", orjson.dumps(reset)),
        ]
    )
    rep = FakeTopicReplicator(
        KafkaSettings(bootstrap_servers="127.0.0.1:9"), engine, replica_id="b", topic=topic
    )
    engine.events.add(rep)
    await rep.before_resume()
    assert list(engine.latches()) == ["k1"]  # resumes: fail-safe
    (alarm,) = engine.sink.of_type("alarm")
    assert alarm["kind"] == "latch_sync_skipped"
    assert "No space left" in str(alarm["error"])
    assert not rep._skipped_at_resume  # the topic was read: start() connects and retries
