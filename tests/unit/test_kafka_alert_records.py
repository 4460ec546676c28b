"""The alert consumer's handling of one record, without a broker: a fake aiokafka consumer in
front, the real engine behind. What a record may do to the consumer (nothing fatal), how a reset
is dated and de-duplicated, and what an id reused for another scope gets."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition

from killswitch.handlers.alerts import RESET_FUTURE_TOLERANCE_MS, signature
from killswitch.kafka.alerts import KafkaAlertConsumer
from killswitch.kafka.dead_letters import DeadLetter
from killswitch.settings import KafkaSettings
from tests.fixtures.kafka_engine import FakeEngine
from tests.unit.test_engine import finished, kill_trigger, make_rig

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
    consumer.letters.send = letters  # type: ignore[method-assign]
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
        assert "bot-7" not in letters.sent[0].error.msg  # never the record's own text
        assert rig.engine.kill_for("a-2") is not None
        assert consumer.stats.rejected == {"unhandled": 1}
    finally:
        await rig.engine.stop()


# -- resets: dated by the earlier of ts and receipt, de-duplicated by id --------------------------


def reset_record(ts: int, offset: int = 0, alert_id: str = "r-1") -> Any:
    value = orjson.dumps({"id": alert_id, "ts": ts, "source": "risk-desk", "action": "reset"})
    return record(offset, value)


def wall_ms() -> int:
    return int(time.time() * 1000)


async def test_a_reset_dated_ahead_of_our_clock_is_refused_and_releases_nothing(
    tmp_path: Path,
) -> None:
    rig = await make_rig(tmp_path)
    try:
        settings = KafkaSettings(
            bootstrap_servers="127.0.0.1:9", allow_reset=True, alert_ttl_ms=60_000
        )
        consumer = KafkaAlertConsumer(settings, rig.engine)
        letters = Letters()
        consumer.letters.send = letters  # type: ignore[method-assign]
        await rig.engine.submit(kill_trigger("k1", venues=["binance"]))
        await finished(rig, "k1")
        reset = reset_record(wall_ms() + 120_000)  # the producer's clock two minutes ahead
        await consumer._process(TP, reset)
        assert "k1" in rig.engine.latches()
        assert letters.kinds() == [(0, "future_reset")]
        assert "ahead of this daemon's clock" in letters.sent[0].error.msg
    finally:
        await rig.engine.stop()


async def test_a_re_read_reset_is_a_no_op_and_never_releases_a_kill_latched_after_it(
    tmp_path: Path,
) -> None:
    # Review repro: a reset dated ahead of our clock, read again (a crash before its commit,
    # offsets lost), released a kill latched after it was applied.
    rig = await make_rig(tmp_path)
    try:
        settings = KafkaSettings(bootstrap_servers="127.0.0.1:9", allow_reset=True)
        consumer = KafkaAlertConsumer(settings, rig.engine)
        letters = Letters()
        consumer.letters.send = letters  # type: ignore[method-assign]
        await rig.engine.submit(kill_trigger("k1", venues=["binance"]))
        await finished(rig, "k1")
        reset = reset_record(wall_ms() + RESET_FUTURE_TOLERANCE_MS // 2)  # within tolerance
        await consumer._process(TP, reset)
        assert "k1" not in rig.engine.latches()
        await rig.engine.submit(kill_trigger("k2", venues=["mexc"]))  # after the reset
        await finished(rig, "k2")
        await consumer._process(TP, reset)
        assert "k2" in rig.engine.latches(), "the re-read reset released a kill latched after it"
        assert consumer.stats.resets == 1
        assert consumer.stats.duplicates == 1
        assert letters.sent == []  # a true duplicate is quiet
    finally:
        await rig.engine.stop()


class ResetLog(FakeEngine):
    """The in-memory engine, keeping the `latched_before_ms` of every reset."""

    def __init__(self) -> None:
        super().__init__()
        self.before: list[int | None] = []

    async def reset(self, **kw: Any) -> bool:
        self.before.append(kw.get("latched_before_ms"))
        return await super().reset(**kw)


NOW = 1_800_000_000_000


@pytest.mark.parametrize(("ts", "before"), [(NOW + 800, NOW), (NOW - 300, NOW - 300)])
async def test_a_reset_releases_only_latches_received_before_the_earlier_of_ts_and_receipt(
    ts: int, before: int
) -> None:
    engine = ResetLog()
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:9", allow_reset=True)
    consumer = KafkaAlertConsumer(settings, engine, wall_ms=lambda: NOW)
    await engine.submit(replace(kill_trigger("k1"), received_ms=NOW - 5000))
    await consumer._process(TP, reset_record(ts))
    assert engine.before == [before]
    assert not engine.latched()


async def reset_then_a_kill(engine: ResetLog, settings: KafkaSettings) -> Any:
    """A reset from ahead of our clock applied, then a kill latched after it: the reset."""
    first = KafkaAlertConsumer(settings, engine, wall_ms=lambda: NOW)
    await engine.submit(replace(kill_trigger("k1"), received_ms=NOW - 5000))
    reset = reset_record(NOW + 800)
    await first._process(TP, reset)
    assert not engine.latched()
    await engine.submit(replace(kill_trigger("k2"), received_ms=NOW + 2000))
    return reset


async def test_a_reset_from_ahead_re_read_after_a_restart_is_a_duplicate() -> None:
    # The engine journaled the reset's id: after a restart (a new consumer) the re-read is a
    # duplicate, never a `stale_reset` dead letter saying "not acted on" of a reset that was.
    engine = ResetLog()
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:9", allow_reset=True)
    reset = await reset_then_a_kill(engine, settings)
    again = KafkaAlertConsumer(settings, engine, wall_ms=lambda: NOW + 60_000)
    letters = Letters()
    again.letters.send = letters  # type: ignore[method-assign]
    await again._process(TP, reset)
    assert list(engine.latches()) == ["k2"]
    assert letters.sent == []
    assert (again.stats.duplicates, again.stats.resets) == (1, 0)
    assert [e["reset_id"] for e in engine.sink.of_type("duplicate")] == ["r-1"]
    assert engine.before == [NOW]  # handed to the engine once


async def test_a_reset_from_ahead_whose_id_the_engine_forgot_is_refused_as_stale() -> None:
    # Past the ids the journal keeps, the time rule alone must hold. The reset counts as issued
    # no later than `ts`, before the kill latched since.
    engine = ResetLog()
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:9", allow_reset=True)
    reset = await reset_then_a_kill(engine, settings)
    engine.reset_ids.clear()  # older than the journal's seen ids
    again = KafkaAlertConsumer(settings, engine, wall_ms=lambda: NOW + 60_000)
    letters = Letters()
    again.letters.send = letters  # type: ignore[method-assign]
    await again._process(TP, reset)
    assert list(engine.latches()) == ["k2"]
    assert letters.kinds() == [(0, "stale_reset")]


def kill_record(offset: int, alert_id: str) -> Any:
    return record(
        offset, orjson.dumps({"id": alert_id, "ts": NOW, "source": "pnl", "action": "kill"})
    )


async def test_reset_ids_and_trigger_ids_are_apart() -> None:
    # A kill reusing an applied reset's id is a new kill; a reset reusing a kill's id is a new
    # reset (the engine keeps the two namespaces apart; so does the consumer's duplicate rule).
    engine = FakeEngine()
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:9", allow_reset=True)
    consumer = KafkaAlertConsumer(settings, engine, wall_ms=lambda: NOW)
    letters = Letters()
    consumer.letters.send = letters  # type: ignore[method-assign]
    await consumer._process(TP, reset_record(NOW - 10, offset=0, alert_id="x-1"))
    await consumer._process(TP, kill_record(1, "x-1"))
    await consumer._process(TP, reset_record(NOW - 10, offset=0, alert_id="x-1"))  # re-read
    assert list(engine.latches()) == ["x-1"]
    await consumer._process(TP, kill_record(2, "y-1"))
    await consumer._process(TP, reset_record(NOW + 10, offset=3, alert_id="y-1"))
    assert engine.latches() == {}  # a new reset: it released both
    assert letters.sent == []
    assert (consumer.stats.triggers, consumer.stats.resets, consumer.stats.duplicates) == (2, 2, 1)


# -- an id reused for another alert ---------------------------------------------------------------


def kill_of(offset: int, venue: str, action: str = "kill") -> Any:
    return record(offset, alert_value("dd-breach", action, scope={"venues": [venue]}))


async def test_an_id_reused_for_another_scope_is_dead_lettered_never_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Review repro: counted as a duplicate, committed and dropped; the MEXC kill it asked for
    # was never made and nothing but an info line said so.
    rig = await make_rig(tmp_path)
    try:
        consumer = KafkaAlertConsumer(KafkaSettings(bootstrap_servers="127.0.0.1:9"), rig.engine)
        letters = Letters()
        consumer.letters.send = letters  # type: ignore[method-assign]
        await consumer._process(TP, kill_of(0, "binance"))
        await finished(rig, "dd-breach")
        with caplog.at_level(logging.WARNING, logger="killswitch.kafka.alerts"):
            await consumer._process(TP, kill_of(1, "mexc"))
        assert letters.kinds() == [(1, "id_conflict")]
        error = letters.sent[0].error.msg
        assert "id dd-breach was already used for another alert" in error
        assert '"venues":["mexc"]' in error
        assert '"venues":["binance"]' in error
        assert "not acted on" in error
        assert any(
            "dd-breach" in r.getMessage() and "mexc" in r.getMessage() for r in caplog.records
        )
        assert consumer.stats.duplicates == 0
        assert consumer.stats.rejected == {"id_conflict": 1}
    finally:
        await rig.engine.stop()


async def test_an_id_reused_for_another_mode_is_dead_lettered() -> None:
    engine = FakeEngine()
    consumer = KafkaAlertConsumer(KafkaSettings(bootstrap_servers="127.0.0.1:9"), engine)
    letters = Letters()
    consumer.letters.send = letters  # type: ignore[method-assign]
    await consumer._process(TP, kill_of(0, "binance", "cancel"))
    await consumer._process(TP, kill_of(1, "binance", "kill"))
    assert letters.kinds() == [(1, "id_conflict")]
    assert "this kill of" in letters.sent[0].error.msg
    assert [t.mode.value for t in engine.journal] == ["cancel"]


async def test_a_true_duplicate_stays_a_quiet_no_op() -> None:
    engine = FakeEngine()
    consumer = KafkaAlertConsumer(KafkaSettings(bootstrap_servers="127.0.0.1:9"), engine)
    letters = Letters()
    consumer.letters.send = letters  # type: ignore[method-assign]
    for offset in range(3):
        await consumer._process(TP, kill_of(offset, "binance"))
    assert letters.sent == []
    assert (consumer.stats.triggers, consumer.stats.duplicates) == (1, 2)
    assert len(engine.journal) == 1
