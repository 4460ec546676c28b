"""A replica restarting latched reads the latch topic before its journal's kills resume.

Replica b was down while an operator reset k1 on replica a, and the desk traded again. b's
journal still says k1 is latched; the topic says it was reset. The daemon as `app` builds it
(the services started in order, as the daemon starts them) must release k1 before the resume,
never kill it again: that would cancel orders placed after the cluster-wide reset.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest

from killswitch.app import EngineService, build_services
from killswitch.daemon import CriticalTasks, Service
from killswitch.journal import Journal
from killswitch.kill.engine import Engine
from killswitch.model import Mode, Scope, Trigger
from killswitch.settings import Settings
from killswitch.sinks.audit import read_audit
from tests.fixtures.binance import BinanceVenue, binance_venue
from tests.fixtures.kafka import KafkaBroker, create_topics, kafka_broker, producer, unique_name

__all__ = ["kafka_broker"]

pytestmark = pytest.mark.kafka

K1 = Trigger(
    "k1", "control", Mode.KILL, "drawdown", Scope.of(["binance"]), created_ms=1, received_ms=1
)


def settings_of(
    tmp_path: Path, venue: BinanceVenue, bootstrap: str, topics: dict[str, str]
) -> Settings:
    account = venue.accounts["acct0"]
    return Settings(
        state_dir=tmp_path / "state",
        accounts=[
            {
                "venue": "binance",
                "name": "acct0",
                "api_key": account.api_key,
                "api_secret": account.api_secret,
                "rest_url": venue.sim.base_url,
                "ws_url": venue.sim.ws_api_url,
            }
        ],
        kafka={"bootstrap_servers": bootstrap, "group_id": "b", "replica_id": "b", **topics},
        engine={"deadline_s": 30.0, "quiet_window_s": 0.05, "sweep_interval_s": 3600.0},
        control={"socket_path": tmp_path / "control.sock"},
    )


def latched_in_the_last_life(state_dir: Path, trigger: Trigger) -> None:
    """Write b's journal as its last life left it: `trigger` journaled and latched."""
    state_dir.mkdir(parents=True, exist_ok=True)
    journal = Journal(state_dir / "journal.jsonl")
    journal.open()
    journal.append_many(
        [
            ("trigger", {"trigger": trigger.to_json()}),
            ("latch", {"trigger_id": trigger.id, "scope": trigger.scope.to_json()}),
        ]
    )
    journal.close()


async def publish_latch_records(
    bootstrap: str, topic: str, records: Sequence[tuple[bytes, bytes | None]]
) -> None:
    async with producer(bootstrap) as prod:
        for key, value in records:
            await prod.send_and_wait(topic, value, key=key, partition=0)


@asynccontextmanager
async def started(services: list[Service]) -> AsyncIterator[list[Service]]:
    """Start the services in order as the daemon does (all before READY), stop in reverse."""
    done: list[Service] = []
    try:
        for service in services:
            done.append(service)
            await service.start()
        yield services
    finally:
        for service in reversed(done):
            await service.stop()


def engine_of(services: list[Service]) -> Engine:
    (service,) = [s for s in services if isinstance(s, EngineService)]
    return service.engine


async def test_a_restart_releases_a_latch_reset_on_a_peer_before_it_resumes(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    topics = {
        "alerts_topic": unique_name("alerts"),
        "events_topic": unique_name("events"),
        "dead_letter_topic": unique_name("dlq"),
        "latch_topic": unique_name("latch"),
    }
    bootstrap = kafka_broker.bootstrap
    await create_topics(
        bootstrap, topics["alerts_topic"], topics["events_topic"], topics["dead_letter_topic"]
    )
    await create_topics(bootstrap, topics["latch_topic"], compact=True)
    async with binance_venue() as venue:
        settings = settings_of(tmp_path, venue, bootstrap, topics)
        latched_in_the_last_life(settings.state_dir, K1)
        # meanwhile on replica a: k1 (published by b before it went down) is reset
        latch = {"type": "latch", "origin": "b", "trigger": K1.to_json()}
        reset = {
            "type": "reset",
            "origin": "a",
            "released": ["k1"],
            "actor": "ops",
            "reason": "clear",
        }
        await publish_latch_records(
            bootstrap,
            topics["latch_topic"],
            [
                (b"latch/k1", orjson.dumps(latch)),
                (b"reset/a/1", orjson.dumps(reset)),
                (b"latch/k1", None),
            ],
        )
        for _ in range(3):  # the desk trades again
            await venue.place("acct0", "BTCUSDT")
        book = venue.sim.book(venue.sim.accounts["acct0"])
        assert len(book.orders) == 3

        services = build_services(settings, CriticalTasks())
        async with started(services):  # READY would be sent now
            engine = engine_of(services)
            assert engine.latches() == {}
            await engine.wait_idle()
            assert len(book.orders) == 3, "b killed again a latch the cluster had reset"
        audit = read_audit(settings.state_dir / "audit.jsonl")
    assert not [e for e in audit if e["type"] in ("resumed", "outcome", "flat")]
    (reset_event,) = [e for e in audit if e["type"] == "reset"]
    assert reset_event["origin"] == "replica:a"
    assert reset_event["released"] == [{"trigger_id": "k1", "scope": K1.scope.to_json()}]
