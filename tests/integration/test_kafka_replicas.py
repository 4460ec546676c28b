"""Replicas share the latch through a compacted topic: the log's rules, then real replicators."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from killswitch.events import FanOut, make_event
from killswitch.kafka.client import Backoff
from killswitch.kafka.replicas import LatchLog, LatchReplicator
from killswitch.model import AccountRef, Mode, Scope, Trigger
from killswitch.settings import KafkaSettings
from tests.conftest import eventually
from tests.fixtures.kafka import (
    KafkaBroker,
    ProxiedBroker,
    kafka_broker,
    proxied_broker,
    read_topic,
    unique_name,
)
from tests.fixtures.kafka_engine import FakeEngine, _Kill
from tests.unit.test_engine import finished, make_rig

__all__ = ["kafka_broker", "proxied_broker"]


def kill(trigger_id: str, **kw: Any) -> Trigger:
    return Trigger(
        id=trigger_id,
        source="control",
        mode=Mode.KILL,
        reason="test",
        scope=Scope.of(["binance"]),
        **kw,
    )


def latch_record(trigger_id: str, origin: str = "a") -> tuple[bytes, bytes]:
    body = {"type": "latch", "origin": origin, "trigger": kill(trigger_id).to_json()}
    return f"latch/{trigger_id}".encode(), orjson.dumps(body)


def reset_record(released: list[str], origin: str = "a") -> tuple[bytes, bytes]:
    body = {"type": "reset", "origin": origin, "released": released}
    return f"reset/{origin}/1".encode(), orjson.dumps(body)


# -- the log (pure) ---------------------------------------------------------------------------


def test_the_log_folds_latches_resets_and_tombstones_in_order() -> None:
    log = LatchLog()
    log.apply(*latch_record("t1"))
    log.apply(*latch_record("t2", origin="b"))
    log.apply(*reset_record(["t1"]))
    log.apply(b"latch/t1", None)
    log.apply(*latch_record("t3"))
    assert sorted(log.latched) == ["t2", "t3"]
    assert set(log.released) == {"t1"}
    assert log.origins["t2"] == "b"


def test_invalid_latch_records_are_counted_and_skipped() -> None:
    log = LatchLog()
    for value in (b"junk", b"[]", b'{"type": "latch"}', b'{"type": "nuke"}'):
        assert log.apply(b"latch/x", value) is None
    assert log.invalid == 4
    assert log.latched == {}


def test_a_replica_missing_a_cluster_latch_submits_it() -> None:
    log = LatchLog()
    log.apply(*latch_record("t1"))
    decision = log.decide([])
    assert [t["id"] for t in decision.submit] == ["t1"]
    assert decision.release == []


def test_a_reset_that_released_everything_held_resets_the_replica() -> None:
    log = LatchLog()
    log.apply(*latch_record("t1"))
    log.apply(*reset_record(["t1"]))
    decision = log.decide(["t1"])
    assert decision.release == ["t1"]
    assert decision.submit == []


def test_a_latch_the_reset_did_not_name_keeps_the_replica_latched() -> None:
    log = LatchLog()
    log.apply(*latch_record("t1"))
    log.apply(*latch_record("t2", origin="b"))
    log.apply(*reset_record(["t1"]))  # the resetting replica had not read t2 yet
    decision = log.decide(["t1", "t2"])
    assert decision.release == ["t1"]  # exactly what the reset named: t2 stays latched


def test_latches_the_log_never_saw_are_published() -> None:
    log = LatchLog()
    decision = log.decide(["local-only"])
    assert decision.publish == ["local-only"]
    assert decision.release == []


# -- replicators against a broker ------------------------------------------------------------


@pytest.fixture
def latch_settings(kafka_broker: KafkaBroker) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=kafka_broker.bootstrap, latch_topic=unique_name("latch"))


def replicator(
    settings: KafkaSettings, replica: str, engine: FakeEngine, **kw: Any
) -> LatchReplicator:
    group = settings.model_copy(update={"group_id": replica, "replica_id": replica})
    rep = LatchReplicator(group, engine, backoff=Backoff(initial_s=0.05, max_s=0.5), **kw)
    engine.events.add(rep)
    return rep


@contextlib.asynccontextmanager
async def running(*replicators: LatchReplicator) -> AsyncIterator[None]:
    tasks = []
    for rep in replicators:
        await rep.start()
        tasks.append(asyncio.create_task(rep.run()))
    try:
        yield
    finally:
        for rep in replicators:
            await rep.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)


async def records(settings: KafkaSettings, count: int) -> list[tuple[str, dict[str, Any] | None]]:
    found = await read_topic(settings.bootstrap_servers, settings.latch_topic, count=count)
    return [(r.key.decode(), orjson.loads(r.value) if r.value else None) for r in found]


@pytest.mark.kafka
async def test_a_kill_on_one_replica_latches_the_other_without_an_echo(
    latch_settings: KafkaSettings,
) -> None:
    a_engine, b_engine = FakeEngine(), FakeEngine()
    a = replicator(latch_settings, "replica-a", a_engine)
    b = replicator(latch_settings, "replica-b", b_engine)
    async with running(a, b):
        await a_engine.submit(kill("k-1"))
        await eventually(lambda: b_engine.latched(), timeout_s=30)
        await eventually(lambda: a.log.latched and b.log.latched, timeout_s=30)
    assert [t.id for t in b_engine.journal] == ["k-1"]
    assert b_engine.journal[0].scope == Scope.of(["binance"])
    assert a.published == 1
    assert b.published == 0  # applied from the topic: not announced back
    [(key, value)] = await records(latch_settings, 1)
    assert key == "latch/k-1"
    assert value is not None
    assert value["origin"] == "replica-a"


@pytest.mark.kafka
async def test_a_reset_on_one_replica_unlatches_the_other(latch_settings: KafkaSettings) -> None:
    a_engine, b_engine = FakeEngine(), FakeEngine()
    a = replicator(latch_settings, "replica-a", a_engine)
    b = replicator(latch_settings, "replica-b", b_engine)
    async with running(a, b):
        await a_engine.submit(kill("k-1"))
        await eventually(lambda: b_engine.latched(), timeout_s=30)
        await b_engine.reset(actor="ops", reason="all clear")
        await eventually(lambda: not a_engine.latched(), timeout_s=30)
    assert a_engine.resets == [
        {"actor": "ops", "reason": "all clear", "origin": "replica:replica-b"}
    ]
    assert b.published == 2  # the reset and the tombstone of k-1
    assert a.published == 1  # only its own kill: the reset it applied is not echoed


@pytest.mark.kafka
async def test_a_replica_that_starts_reads_the_latch_before_it_is_ready(
    latch_settings: KafkaSettings,
) -> None:
    a_engine = FakeEngine()
    a = replicator(latch_settings, "replica-a", a_engine)
    async with running(a):
        await a_engine.submit(kill("k-1"))
        await eventually(lambda: a.published == 1, timeout_s=30)
        late_engine = FakeEngine()
        late = replicator(latch_settings, "replica-c", late_engine)
        await late.start()  # no run(): start alone must have read the topic
        try:
            assert late.synced
            assert late_engine.latched()
            assert [t.id for t in late_engine.journal] == ["k-1"]
        finally:
            await late.stop()


@pytest.mark.kafka
async def test_a_replica_restarting_latched_after_a_reset_elsewhere_resets_at_start(
    latch_settings: KafkaSettings,
) -> None:
    a_engine = FakeEngine()
    a = replicator(latch_settings, "replica-a", a_engine)
    async with running(a):
        await a_engine.submit(kill("k-1"))
        await a_engine.reset(actor="ops", reason="clear")
        await eventually(lambda: a.published == 3, timeout_s=30)
    restarted = FakeEngine()  # its journal still says k-1 is latched
    await restarted.submit(kill("k-1"))
    b = replicator(latch_settings, "replica-b", restarted)
    await b.start()
    await b.stop()
    assert not restarted.latched()
    assert restarted.resets[0]["origin"] == "replica:replica-a"


@pytest.mark.kafka
async def test_a_restarting_replica_keeps_the_newer_peer_kill_it_applies_while_catching_up(
    latch_settings: KafkaSettings,
) -> None:
    a_engine = FakeEngine()
    a = replicator(latch_settings, "replica-a", a_engine)
    async with running(a):
        await a_engine.submit(kill("k-1"))
        await a_engine.reset(actor="ops", reason="clear")
        await a_engine.submit(kill("k-2"))  # a newer kill, after the reset
        await eventually(lambda: a.published == 4, timeout_s=30)
    restarted = FakeEngine()  # its journal still says k-1 is latched
    await restarted.submit(kill("k-1"))
    b = replicator(latch_settings, "replica-b", restarted)
    await b.start()
    await b.stop()
    assert sorted(restarted.held) == ["k-2"]  # k-1 released, k-2 applied and kept


@pytest.mark.kafka
async def test_a_latch_the_reset_did_not_name_survives_it(latch_settings: KafkaSettings) -> None:
    a_engine, b_engine = FakeEngine(), FakeEngine()
    a = replicator(latch_settings, "replica-a", a_engine)
    b = replicator(latch_settings, "replica-b", b_engine)
    async with running(a, b):
        await a_engine.submit(kill("k-1"))
        await eventually(lambda: b_engine.latched(), timeout_s=30)
        await b.stop()  # b stops reading the topic but keeps its engine
        await b_engine.submit(kill("k-2"))  # latched on b while a cannot hear of it
        await a_engine.reset(actor="ops", reason="clear")  # releases k-1 only
        await eventually(lambda: a.published == 3, timeout_s=30)
    rejoined = replicator(latch_settings, "replica-b", b_engine)
    a_again = replicator(latch_settings, "replica-a", a_engine)
    async with running(rejoined, a_again):
        await eventually(lambda: a_engine.latched(), timeout_s=30)  # a latches k-2
        assert b_engine.latched()
    assert sorted(b_engine.held) == ["k-2"]  # the reset named k-1, and only k-1
    assert "k-2" in a_engine.held
    (reset,) = b_engine.sink.of_type("reset")
    assert [r["trigger_id"] for r in reset["released"]] == ["k-1"]


@pytest.mark.kafka
async def test_a_replica_started_without_a_broker_becomes_ready_and_syncs_later(
    proxied_broker: ProxiedBroker,
) -> None:
    settings = KafkaSettings(
        bootstrap_servers=proxied_broker.bootstrap, latch_topic=unique_name("latch")
    )
    seed_engine = FakeEngine()
    seed = replicator(settings, "replica-a", seed_engine)
    async with running(seed):
        await seed_engine.submit(kill("k-1"))
        await eventually(lambda: seed.published == 1, timeout_s=30)
    await proxied_broker.cut()
    engine = FakeEngine()
    rep = replicator(settings, "replica-b", engine, sync_timeout_s=1.0)
    async with running(rep):
        assert not rep.synced
        assert rep.status().startswith("disconnected")
        await proxied_broker.restore()
        await eventually(lambda: engine.latched(), timeout_s=60)
        assert rep.synced


@pytest.mark.kafka
async def test_a_fail_safe_latch_from_an_unreadable_journal_stays_on_its_replica(
    latch_settings: KafkaSettings,
) -> None:
    damaged = FakeEngine()  # its journal could not be read: latched on everything, locally
    fail_safe = Trigger(
        "journal-unreadable-20261206T180000000Z", "journal", Mode.KILL, "unreadable", Scope()
    )
    damaged.held[fail_safe.id] = fail_safe.scope  # as replayed at start: no "triggered" event
    damaged._kills[fail_safe.id] = _Kill(fail_safe)
    healthy = FakeEngine()
    a = replicator(latch_settings, "replica-a", damaged)
    b = replicator(latch_settings, "replica-b", healthy)
    async with running(a, b):
        await healthy.submit(kill("k-1"))  # a real kill still travels
        await eventually(lambda: "k-1" in damaged.held, timeout_s=30)
    assert a.published == 0
    assert "journal-unreadable-20261206T180000000Z" not in healthy.held


# -- a reset made on a replica reaches the topic, across a stop or a crash -------------------


@pytest.mark.kafka
async def test_a_reset_made_while_unpublished_is_announced_after_a_restart(
    latch_settings: KafkaSettings,
) -> None:
    a_engine, b_engine = FakeEngine(), FakeEngine()
    a = replicator(latch_settings, "replica-a", a_engine)
    b = replicator(latch_settings, "replica-b", b_engine)
    async with running(a):
        await b.start()
        b_task = asyncio.create_task(b.run())
        await a_engine.submit(kill("k-1"))
        await eventually(lambda: b_engine.latched(), timeout_s=30)
        # B stops (a deploy, or a crash) right after an operator reset on it, before its
        # replicator published the reset: the outbox, in memory, is gone with the process.
        await b.stop()
        await asyncio.wait_for(b_task, 30)
        await b_engine.reset(actor="ops", reason="all clear")  # journaled on B only
        b_engine.events = FanOut([b_engine.sink])  # the old replicator died with the process
        b2 = replicator(latch_settings, "replica-b", b_engine)
        async with running(b2):
            await eventually(lambda: not a_engine.latched(), timeout_s=30)
            assert not b_engine.latched()  # the cluster latch is not taken back by B
    assert a_engine.resets[-1]["origin"] == "replica:replica-b"
    (reset,) = [v for k, v in await records(latch_settings, 3) if k.startswith("reset/")]
    assert reset is not None
    assert reset["released"] == ["k-1"]
    assert reset["origin"] == "replica-b"


@pytest.mark.kafka
async def test_a_late_reset_names_only_what_was_reset_on_its_replica(
    latch_settings: KafkaSettings,
) -> None:
    a_engine, b_engine = FakeEngine(), FakeEngine()
    a = replicator(latch_settings, "replica-a", a_engine)
    b = replicator(latch_settings, "replica-b", b_engine)
    async with running(a):
        await b.start()
        b_task = asyncio.create_task(b.run())
        await a_engine.submit(kill("k-1"))
        await eventually(lambda: b_engine.latched(), timeout_s=30)
        await b.stop()
        await asyncio.wait_for(b_task, 30)
        await b_engine.reset(actor="ops", reason="all clear")  # releases k-1, unannounced
        await a_engine.submit(kill("k-2"))  # a newer kill on A, after B's reset
        await eventually(lambda: a.published == 2, timeout_s=30)
        b_engine.events = FanOut([b_engine.sink])
        b2 = replicator(latch_settings, "replica-b", b_engine)
        async with running(b2):
            await eventually(lambda: "k-1" not in a_engine.held, timeout_s=30)
            await asyncio.sleep(0.5)
        assert sorted(a_engine.held) == ["k-2"]  # B's reset named k-1, and only k-1
        assert sorted(b_engine.held) == ["k-2"]  # the newer kill is applied on B
    resets = [v for k, v in await records(latch_settings, 4) if k.startswith("reset/")]
    assert [r["released"] for r in resets if r is not None] == [["k-1"]]


@pytest.mark.kafka
async def test_a_graceful_stop_publishes_the_reset_it_holds(latch_settings: KafkaSettings) -> None:
    a_engine, b_engine = FakeEngine(), FakeEngine()
    a = replicator(latch_settings, "replica-a", a_engine)
    b = replicator(latch_settings, "replica-b", b_engine)
    async with running(a):
        await b.start()
        b_task = asyncio.create_task(b.run())
        await a_engine.submit(kill("k-1"))
        await eventually(lambda: b_engine.latched(), timeout_s=30)
        await b_engine.reset(actor="ops", reason="all clear")
        await b.stop()  # at once: the reset still waits in the outbox
        await asyncio.wait_for(b_task, 30)
        assert not b._outbox
        await eventually(lambda: not a_engine.latched(), timeout_s=30)
    assert b.published == 2  # the reset and the tombstone of k-1


class InFlightEngine(FakeEngine):
    """The real engine's window: a trigger id is seen (DUPLICATE) before its journal write
    ends and its latch is held; `finish()` ends that write."""

    def __init__(self, trigger: Trigger) -> None:
        super().__init__()
        self.in_flight = trigger
        self.journal.append(trigger)  # seen: a submit of it answers DUPLICATE

    def finish(self) -> None:
        self.held[self.in_flight.id] = self.in_flight.scope
        self._kills[self.in_flight.id] = _Kill(self.in_flight)
        self.events.emit(make_event("triggered", trigger=self.in_flight.to_json()))


@pytest.mark.kafka
async def test_a_latch_seen_but_not_yet_held_is_never_announced_as_reset() -> None:
    now = [0.0]
    engine = InFlightEngine(kill("k-1"))  # another input is journaling k-1 right now
    rep = LatchReplicator(
        KafkaSettings(bootstrap_servers="127.0.0.1:9"), engine, replica_id="b", clock=lambda: now[0]
    )
    engine.events.add(rep)
    rep.log.apply(*latch_record("k-1", origin="a"))
    await rep._reconcile()  # DUPLICATE, and not held (yet)
    engine.finish()  # the other input's write ends: k-1 is latched here
    now[0] += 60.0
    await rep._step_resets()
    assert rep._outbox == deque()  # no reset of a latch this replica holds
    assert engine.latches().keys() == {"k-1"}


@pytest.mark.kafka
async def test_a_latch_released_here_is_announced_after_it_settles() -> None:
    now = [0.0]
    engine = FakeEngine()
    await engine.submit(kill("k-1"))
    await engine.reset(actor="ops", reason="clear")  # journaled before this life
    rep = LatchReplicator(
        KafkaSettings(bootstrap_servers="127.0.0.1:9"), engine, replica_id="b", clock=lambda: now[0]
    )
    engine.events.add(rep)
    rep.log.apply(*latch_record("k-1", origin="a"))
    rep.log.apply(*latch_record("k-9", origin="a"))  # never seen here: applied, not reset
    await rep._reconcile()
    assert sorted(engine.held) == ["k-9"]
    await rep._step_resets()
    assert not rep._outbox  # not yet: an input may still be journaling it
    now[0] += 60.0
    await rep._step_resets()
    key, value = rep._outbox[0]
    assert key.startswith(b"reset/b/")
    assert value is not None
    assert orjson.loads(value)["released"] == ["k-1"]
    assert list(rep._outbox)[1] == (b"latch/k-1", None)


# -- a peer's latch is applied only over accounts configured here ------------------------------


@pytest.mark.kafka
async def test_a_peer_latch_over_no_configured_account_is_not_applied(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = await make_rig(tmp_path)  # binance/mm-1, mexc/mm-2, bingx/mm-3
    try:
        rep = LatchReplicator(
            KafkaSettings(bootstrap_servers="127.0.0.1:9"),
            rig.engine,
            replica_id="shard-2",
            accounts=[AccountRef(v.venue, v.account) for v in rig.venues.values()],
        )
        rig.engine.events.add(rep)
        other = Trigger(
            "k-shard1", "kafka", Mode.KILL, "drawdown", Scope.of(["binance"], ["mm-shard1"])
        )
        both = Trigger(
            "k-both", "kafka", Mode.KILL, "drawdown", Scope.of([], ["mm-shard1", "mm-1"])
        )
        with caplog.at_level(logging.INFO, logger="killswitch.kafka.replicas"):
            record = {"type": "latch", "origin": "shard-1", "trigger": other.to_json()}
            await rep._apply(record)
            rep.log.apply(b"latch/k-shard1", orjson.dumps(record))
            await rep._reconcile()  # a restart's reconcile refuses it as well, counted once
        assert rig.engine.kill_for("k-shard1") is None
        assert "k-shard1" not in rig.engine.latches()
        assert rep.refused_latches == 1
        assert not rig.log.of("failed")
        assert any(
            r.levelno == logging.INFO and "k-shard1" in r.getMessage() for r in caplog.records
        )
        await rep._apply({"type": "latch", "origin": "shard-1", "trigger": both.to_json()})
        assert "k-both" in rig.engine.latches()  # covers mm-1: applied as before
        await finished(rig, "k-both")
    finally:
        await rig.engine.stop()


def shard(settings: KafkaSettings, name: str, engine: FakeEngine, account: str) -> LatchReplicator:
    """A replicator of a shard that has the one binance account `account`."""
    return replicator(settings, name, engine, accounts=[AccountRef("binance", account)])


@pytest.mark.kafka
async def test_shards_sharing_the_latch_topic_latch_only_their_own_accounts(
    latch_settings: KafkaSettings,
) -> None:
    one, two = FakeEngine(), FakeEngine()
    shard1 = shard(latch_settings, "shard-1", one, "mm-1")
    shard2 = shard(latch_settings, "shard-2", two, "mm-2")
    mine = Trigger("k-1", "control", Mode.KILL, "test", Scope.of(["binance"], ["mm-1"]))
    wide = Trigger("k-all", "control", Mode.KILL, "test", Scope.of(["binance"]))
    async with running(shard1, shard2):
        await one.submit(mine)
        await one.submit(wide)
        await eventually(lambda: "k-all" in two.held, timeout_s=30)
    assert sorted(two.held) == ["k-all"]  # k-1 covers no account of shard 2
    assert [t.id for t in two.submitted] == ["k-all"]
    assert shard2.refused_latches == 1
    restarted = shard(latch_settings, "shard-2", FakeEngine(), "mm-2")
    await restarted.start()  # its reconcile reads k-1 and k-all again
    await restarted.stop()
    assert sorted(restarted.engine.latches()) == ["k-all"]
    assert restarted.refused_latches == 1
