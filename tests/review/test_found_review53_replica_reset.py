"""Review 53, finding 2: a replica whose journal the disk damaged announced a reset nobody made.

A compacted journal starts with a `seen` record naming every trigger id. The disk lost the lines
holding kill k1's `trigger` and `latch` records, not that one: replica b opened latched on
everything (fail-safe), with k1 seen and not held. Its latch replicator read replica a's live
`latch/k1`, the engine answered DUPLICATE without holding it, and after `reset_settle_s` b
published `reset/b/...` releasing k1 ("reset on this replica before it could announce it"):
replica a dropped a latch nobody reset ("Replicas release exactly what a peer's reset named",
"Resets are exact"). Seen and not held is not proof of a reset: a replica now announces a late
reset only for an id a reset record in its journal released (`JournalState.released`, carried
through compaction by the `seen` record); any other is never announced, and an alarm
(`latch_not_held`) says this replica does not hold it.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from killswitch.app import build_services
from killswitch.daemon import CriticalTasks, Service
from killswitch.journal import Journal
from killswitch.kafka.replicas import LatchReplicator
from killswitch.model import Mode, Scope, Trigger
from killswitch.settings import KafkaSettings, Settings
from tests.conftest import eventually
from tests.fakes import FakeExchange
from tests.fixtures.binance import BinanceVenue, binance_venue
from tests.fixtures.kafka import KafkaBroker, kafka_broker, read_topic
from tests.fixtures.kafka_engine import EventList
from tests.integration.test_kafka_replica_restart import (
    end_offset,
    engine_of,
    latched_in_the_last_life,
    new_topics,
    publish_latch_records,
    running,
    settings_of,
)
from tests.unit.test_engine import kill_trigger, make_rig

__all__ = ["kafka_broker"]

pytestmark = pytest.mark.kafka

K1 = Trigger(
    "k1", "control", Mode.KILL, "drawdown", Scope.of(["binance"]), created_ms=1, received_ms=1
)
LATCH_K1 = orjson.dumps({"type": "latch", "origin": "a", "trigger": K1.to_json()})


def replica_settings(
    workdir: Path, venue: BinanceVenue, bootstrap: str, topics: dict[str, str], name: str
) -> Settings:
    base = settings_of(workdir, venue, bootstrap, topics)
    kafka = base.kafka.model_copy(update={"group_id": name, "replica_id": name})
    return base.model_copy(update={"kafka": kafka})


def damaged_journal_that_lost_k1s_latch(state_dir: Path) -> None:
    """k1 latched, killed and compacted (`seen` names k1), then the disk zeroes the lines of
    k1's `trigger` and `latch` records, with a whole record after them (damage, not a crash)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "journal.jsonl"
    journal = Journal(path)
    journal.open()
    journal.append_many(
        [
            ("trigger", {"trigger": K1.to_json()}),
            ("latch", {"trigger_id": "k1", "scope": K1.scope.to_json()}),
        ]
    )
    journal.append("kill_done", trigger_id="k1", state="confirmed", summary={})
    journal.compact()
    journal.close()
    lines = [
        b"\0" * len(line) if line.startswith((b'{"kind":"trigger"', b'{"kind":"latch"')) else line
        for line in path.read_bytes().split(b"\n")
    ]
    assert lines[0].startswith(b'{"kind":"seen"')
    assert b"k1" in lines[0]
    tail = orjson.dumps({"kind": "seen", "ts_ms": 1, "ids": []}) + b"\n"
    path.write_bytes(b"\n".join(lines) + tail)


def replicator_of(services: list[Service]) -> LatchReplicator:
    (replicator,) = [s for s in services if isinstance(s, LatchReplicator)]
    return replicator


def not_held_alarms(events: EventList) -> list[dict[str, object]]:
    return [dict(e) for e in events.of_type("alarm") if e.get("kind") == "latch_not_held"]


async def test_a_damaged_journal_never_announces_a_reset_of_a_peers_latch(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    bootstrap = kafka_broker.bootstrap
    topics = await new_topics(bootstrap)
    # replica a latched k1 and published it; nobody ever reset it
    await publish_latch_records(bootstrap, topics["latch_topic"], [(b"latch/k1", LATCH_K1)])
    async with binance_venue() as venue:
        a_settings = replica_settings(tmp_path / "a", venue, bootstrap, topics, "a")
        latched_in_the_last_life(a_settings.state_dir, K1)
        b_settings = replica_settings(tmp_path / "b", venue, bootstrap, topics, "b")
        damaged_journal_that_lost_k1s_latch(b_settings.state_dir)
        a_services = build_services(a_settings, CriticalTasks())
        b_services = build_services(b_settings, CriticalTasks())
        b_events = EventList()
        engine_of(b_services).events.add(b_events)
        async with running(a_services):
            a_engine = engine_of(a_services)
            assert "k1" in a_engine.latches()
            async with running(b_services):
                b_engine = engine_of(b_services)
                b_replicator = replicator_of(b_services)
                state = b_engine.journal.state
                assert state.unreadable  # fail-safe: latched on everything here
                assert "k1" in state.seen
                assert "k1" not in state.latches
                # The moment b used to announce the reset (after reset_settle_s, 2 s).
                await eventually(
                    lambda: not_held_alarms(b_events) or b_replicator.announced_resets,
                    timeout_s=30,
                )
                assert b_replicator.announced_resets == 0, "b announced a reset nobody made"
                assert "k1" in a_engine.latches(), "a released a latch nobody reset"
                assert b_engine.latches().keys() == set(state.failsafe_latches)
        end = await end_offset(bootstrap, topics["latch_topic"])
        records = await read_topic(bootstrap, topics["latch_topic"], count=end)
    assert [(r.key, r.value) for r in records] == [(b"latch/k1", LATCH_K1)]
    (alarm,) = not_held_alarms(b_events)
    assert alarm["account"] == "latch_topic"
    assert alarm["trigger_ids"] == ["k1"]


async def test_a_reset_journaled_here_is_still_announced_after_a_compaction(
    tmp_path: Path,
) -> None:
    # The fix must not stop the real announcements. With the real engine (the announce tests
    # in test_kafka_replicas.py use a fake): a reset made here and never published, its record
    # then compacted away, is still announced: the `seen` record carries the ids it released.
    first = await make_rig(tmp_path, {"binance": FakeExchange("binance", "mm-1")})
    await first.engine.submit(kill_trigger("k1", venues=["binance"]))
    await first.engine.wait_idle()
    assert await first.engine.reset(actor="ops", reason="all clear")
    first.engine.journal.compact()
    await first.engine.stop()
    rig = await make_rig(tmp_path, first.venues)
    try:
        assert "k1" not in rig.engine.latches()
        now = [0.0]
        rep = LatchReplicator(
            KafkaSettings(bootstrap_servers="127.0.0.1:9"),
            rig.engine,
            replica_id="b",
            clock=lambda: now[0],
        )
        rig.engine.events.add(rep)
        rep.log.apply(b"latch/k1", LATCH_K1)
        await rep._reconcile()  # DUPLICATE, not held: released here by that reset
        now[0] += 60.0
        await rep._step_resets()
        key, value = rep._outbox[0]
        assert key.startswith(b"reset/b/")
        assert value is not None
        assert orjson.loads(value)["released"] == ["k1"]
        assert rep.announced_resets == 1
        assert not rig.log.of("alarm")
    finally:
        await rig.engine.stop()
