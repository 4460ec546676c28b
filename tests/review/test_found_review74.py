"""Review 74's findings in the fixes of review 67.

A failed kill was resolved (dropped from `status`'s UNRESOLVED and `killswitch_failed_kills`) by
any later `kill_done` flat over a containing scope, though that kill could have proved the
account flat before the failed one left orders open there. Now only a kill launched after the
failed one ended resolves it.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from killswitch.app import build_services
from killswitch.daemon import CriticalTasks
from killswitch.exchanges.base import Fatal
from killswitch.journal import Journal
from killswitch.kill.config import Account
from killswitch.kill.engine import Engine
from killswitch.kill.record import AccountState, KillState
from killswitch.model import AccountRef, Mode, Scope, Trigger
from tests.conftest import eventually
from tests.fakes import FakeExchange
from tests.fixtures.binance import binance_venue
from tests.fixtures.kafka import KafkaBroker, kafka_broker, read_topic
from tests.integration.test_kafka_replica_restart import end_offset, engine_of, new_topics, running
from tests.review.test_found_review67_latch_auth import (
    keyed_settings,
    kill,
    publish_latch_records,
    replicator_of,
)
from tests.unit.test_engine import QUICK

__all__ = ["kafka_broker"]

A = AccountRef("binance", "a")


async def test_a_flat_proved_before_a_failure_does_not_resolve_it(tmp_path: Path) -> None:
    a = FakeExchange(account="a")
    b = FakeExchange(account="b")
    a.place("BTCUSDT", "x-", n=3)
    b.place("BTCUSDT", "y-", n=3)
    held = asyncio.Event()
    b.hold("snapshot", held)  # the cancel over everything stays running on b
    engine = Engine(
        [
            Account(A, a, symbols=("BTCUSDT",)),
            Account(AccountRef("binance", "b"), b, symbols=("BTCUSDT",)),
        ],
        Journal(tmp_path / "journal.jsonl"),
        QUICK,
        rng=random.Random(7),
    )
    await engine.start()
    try:
        await engine.submit(Trigger("C", "op", Mode.CANCEL, "all", Scope()))
        everything = engine.kill_for("C")
        assert everything is not None
        await eventually(lambda: everything.accounts[A].state is AccountState.FLAT)
        left = a.place("BTCUSDT", "z-", n=2)  # after C's look at a; a now refuses cancels
        for method in ("cancel_all", "cancel_order", "cancel_orders"):
            a.fail(method, Fatal("refused", venue="binance"), times=1000)
        await engine.submit(Trigger("F", "op", Mode.CANCEL, "a only", Scope.of(accounts=["a"])))
        failed = engine.kill_for("F")
        assert failed is not None
        await failed.finished.wait()
        assert failed.state is KillState.FAILED
        held.set()
        await everything.finished.wait()
        assert everything.state is KillState.FLAT
        assert set(left) <= a.open_ids()
        assert [k["kill_id"] for k in engine.status()["failed_kills"]] == ["F"]  # type: ignore[index, union-attr]
        # A cancel launched after F ended, over a scope containing F's, does resolve it.
        a.faults.clear()
        await engine.submit(Trigger("G", "op", Mode.CANCEL, "again", Scope()))
        again = engine.kill_for("G")
        assert again is not None
        await again.finished.wait()
        assert again.state is KillState.FLAT
        assert engine.status()["failed_kills"] == []
    finally:
        await engine.stop()


def test_a_failed_kill_pushed_out_of_the_list_is_still_counted(tmp_path: Path) -> None:
    """Review 74: the 21st unresolved failed kill pushed the oldest out, with no word of it."""
    from killswitch.journal.state import FAILED_KEPT

    journal = Journal(tmp_path / "journal.jsonl")
    journal.open()
    for n in range(FAILED_KEPT + 1):
        summary = {"kill_id": f"f{n}", "kind": "trigger", "scope": Scope().to_json()}
        journal.append("kill_done", trigger_id=f"f{n}", state="failed", summary=summary)
    assert len(journal.state.failed) == FAILED_KEPT
    assert journal.state.failed_dropped == 1
    journal.close()


async def test_a_replayed_signed_latch_record_fires_nothing_on_a_new_replica(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    """Review 74: the signature covers the value only, so a genuine signed latch record copied
    onto the topic again verified, and a replica that had never seen it (a new one, or one with
    an empty journal) fired the kill the operator had reset. A trigger id a reset on the topic
    released is never latched again from it."""
    bootstrap = kafka_broker.bootstrap
    topics = await new_topics(bootstrap)
    async with binance_venue() as venue:
        a_services = build_services(
            keyed_settings(tmp_path / "a", venue, bootstrap, topics, "a"), CriticalTasks()
        )
        async with running(a_services):
            a = engine_of(a_services)
            await a.submit(kill("k1"))
            await a.wait_idle()
            assert await a.reset(actor="ops", reason="all clear")
            await eventually(lambda: replicator_of(a_services).published >= 3, timeout_s=30)
        end = await end_offset(bootstrap, topics["latch_topic"])
        records = await read_topic(bootstrap, topics["latch_topic"], count=end)
        (genuine,) = [r for r in records if r.key == b"latch/k1" and r.value is not None]
        await publish_latch_records(  # the same signed record, written again
            bootstrap,
            topics["latch_topic"],
            [(genuine.key, genuine.value)],
            headers=[list(genuine.headers)],
        )
        await venue.place("acct0", "BTCUSDT")  # trading again after the reset
        book = venue.sim.book(venue.sim.accounts["acct0"])
        c_services = build_services(
            keyed_settings(tmp_path / "c", venue, bootstrap, topics, "c"), CriticalTasks()
        )
        async with running(c_services):
            c = engine_of(c_services)
            await c.wait_idle()
            assert "k1" not in c.latches()
            assert len(book.orders) == 1
            assert replicator_of(c_services).log.stale == 1
