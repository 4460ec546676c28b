"""The alert consumer's handling of one record, without a broker: a fake aiokafka consumer in
front, the real engine behind. What a record may do to the consumer (nothing fatal), how a reset
is dated and de-duplicated, and what an id reused for another scope gets."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
from aiokafka import TopicPartition

from killswitch.handlers.alerts import signature
from killswitch.kafka.alerts import KafkaAlertConsumer
from killswitch.kafka.dead_letters import DeadLetter
from killswitch.settings import KafkaSettings
from tests.unit.test_engine import make_rig

TOPIC = "risk.alerts"
TP = TopicPartition(TOPIC, 0)
KEY = b"alert-key-for-tests"


def record(offset: int, value: bytes | None, headers: Sequence[tuple[str, Any]] = ()) -> Any:
    return SimpleNamespace(
        topic=TOPIC, partition=0, offset=offset, key=None, value=value, headers=list(headers)
    )


def alert_value(alert_id: str, action: str = "kill", **fields: object) -> bytes:
    body: dict[str, object] = {"id": alert_id, "ts": 1, "source": "pnl", "action": action}
    return orjson.dumps(body | fields)


def signed(offset: int, value: bytes) -> Any:
    return record(offset, value, [("x-signature", signature(KEY, value).encode())])


class FakeConsumer:
    """Just enough of aiokafka's consumer for `run()`: hands over its records once."""

    def __init__(self, records: list[Any]) -> None:
        self.records = records
        self.commits: list[dict[TopicPartition, int]] = []

    async def getmany(self, *_a: object, **_k: object) -> dict[TopicPartition, list[Any]]:
        out, self.records = self.records, []
        if not out:
            await asyncio.sleep(0.01)
            return {}
        return {TP: out}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    async def topics(self) -> set[str]:
        return {TOPIC}

    def partitions_for_topic(self, _topic: str) -> set[int]:
        return {0}

    def highwater(self, _tp: TopicPartition) -> int | None:
        return None

    async def stop(self) -> None:
        pass


class Letters:
    """Stands in for the dead-letter sender: keeps each letter and marks it delivered."""

    def __init__(self) -> None:
        self.sent: list[DeadLetter] = []

    def __call__(self, letter: DeadLetter) -> None:
        letter.attempts += 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        letter.future = future
        self.sent.append(letter)

    def kinds(self) -> list[tuple[int, str]]:
        return [(lt.offset, lt.error.kind) for lt in self.sent]


def attach(consumer: KafkaAlertConsumer, records: list[Any]) -> tuple[FakeConsumer, Letters]:
    """Put `consumer` in the connected state on a fake broker holding `records`."""
    fake = FakeConsumer(records)
    letters = Letters()
    consumer._consumer = fake  # type: ignore[assignment]
    consumer._partitions = [TP]
    consumer._committed = {TP: 0}
    consumer.connected = True
    consumer._started = True
    consumer._send_dead_letter = letters  # type: ignore[method-assign]
    return fake, letters


async def run_until(consumer: KafkaAlertConsumer, fake: FakeConsumer, offset: int) -> None:
    """Run the consumer until it commits past `offset` (or dies, which fails the test)."""
    task = asyncio.create_task(consumer.run())
    try:
        async with asyncio.timeout(5):
            while not any(c.get(TP, 0) > offset for c in fake.commits):
                if task.done():
                    raise AssertionError(f"the consumer's run() ended: {task.exception()!r}")
                await asyncio.sleep(0.01)
    finally:
        await consumer.stop()
        await asyncio.wait_for(task, 5)
    assert task.exception() is None


# -- one record never stops the consumer -------------------------------------------------------


async def test_a_null_signature_header_is_dead_lettered_and_the_alert_behind_it_acted_on(
    tmp_path: Path,
) -> None:
    rig = await make_rig(tmp_path)
    try:
        settings = KafkaSettings(bootstrap_servers="127.0.0.1:9", alert_hmac_key=KEY.decode())
        consumer = KafkaAlertConsumer(settings, rig.engine, probe_interval_s=3600)
        poison = record(0, alert_value("a-1"), [("x-signature", None)])
        good = signed(1, alert_value("a-2", scope={"venues": ["binance"]}))
        fake, letters = attach(consumer, [poison, good])
        await run_until(consumer, fake, 1)
        assert letters.kinds() == [(0, "bad_signature")]
        assert rig.engine.kill_for("a-1") is None
        assert rig.engine.kill_for("a-2") is not None
        assert fake.commits[-1] == {TP: 2}
    finally:
        await rig.engine.stop()


class BrokenHeartbeats:
    def beat(self, source: str, ts_ms: int) -> bool:
        raise KeyError(source)


async def test_an_error_of_ours_on_one_record_dead_letters_it_and_the_consumer_goes_on(
    tmp_path: Path,
) -> None:
    rig = await make_rig(tmp_path)
    try:
        settings = KafkaSettings(bootstrap_servers="127.0.0.1:9")
        consumer = KafkaAlertConsumer(
            settings, rig.engine, heartbeats=BrokenHeartbeats(), probe_interval_s=3600
        )
        beat = record(0, alert_value("hb-1", "heartbeat", source="bot-7"))
        kill = record(1, alert_value("a-2", scope={"venues": ["binance"]}))
        fake, letters = attach(consumer, [beat, kill])
        await run_until(consumer, fake, 1)
        assert letters.kinds() == [(0, "unhandled")]
        assert "KeyError" in letters.sent[0].error.msg
        assert rig.engine.kill_for("a-2") is not None
        assert consumer.stats.rejected == {"unhandled": 1}
    finally:
        await rig.engine.stop()
