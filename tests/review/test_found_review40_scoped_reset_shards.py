"""Review 40: a scoped reset alert was judged against each replica's configured accounts, so two
replicas (shards on a shared latch topic, as replicas.py documents) disagreed about what it
released, and the replicator carried the wider release to the replica that refused it: a reset
naming mexc lifted an unscoped latch over Binance ("Resets are exact"). What a scoped reset
releases is now decided from the scopes alone (`Scope.within`), the same on every replica."""

from __future__ import annotations

import time
from pathlib import Path

import orjson

from killswitch.kafka.alerts import KafkaAlertConsumer
from killswitch.kafka.replicas import LatchReplicator
from killswitch.model import AccountRef
from killswitch.settings import KafkaSettings
from tests.unit.test_engine import make_rig, three_venues
from tests.unit.test_kafka_alert_records import TP, Letters, record


def value(alert_id: str, action: str, ts: int, **scope: object) -> bytes:
    body: dict[str, object] = {"id": alert_id, "ts": ts, "source": "risk", "action": action}
    if scope:
        body["scope"] = scope
    return orjson.dumps(body)


async def test_a_reset_scoped_to_mexc_releases_the_same_latches_on_every_shard(
    tmp_path: Path,
) -> None:
    now = int(time.time() * 1000)
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:9", allow_reset=True)
    all3 = three_venues()
    a_rig = await make_rig(tmp_path / "a", {"mexc": all3["mexc"]})  # shard A: mexc only
    b_rig = await make_rig(tmp_path / "b", {"binance": all3["binance"], "mexc": all3["mexc"]})
    try:
        reps = {}
        consumers = {}
        for name, rig in (("a", a_rig), ("b", b_rig)):
            refs = [AccountRef(v.venue, v.account) for v in rig.venues.values()]
            rep = LatchReplicator(settings, rig.engine, replica_id=name, accounts=refs)
            rig.engine.events.add(rep)
            reps[name] = rep
            c = KafkaAlertConsumer(settings, rig.engine, accounts=refs, wall_ms=lambda: now)
            c.letters.send = Letters()  # type: ignore[method-assign]
            consumers[name] = c
        # One kill over every venue: both shards latch it (it covers accounts of each).
        for name, rig in (("a", a_rig), ("b", b_rig)):
            await consumers[name]._process(TP, record(0, value("k-all", "kill", now - 10)))
            await rig.engine.wait_idle()
            assert "k-all" in rig.engine.latches()
        # The desk resets mexc only.
        reset = value("r-mexc", "reset", now, venues=["mexc"])
        for name in ("a", "b"):
            await consumers[name]._process(TP, record(1, reset))
        on_a = "k-all" in a_rig.engine.latches()
        on_b_after_alert = "k-all" in b_rig.engine.latches()
        # Shard A publishes what it released; shard B's replicator reads it from the topic.
        for key, val in list(reps["a"]._outbox):
            if val is None:
                continue
            decoded = reps["b"].log.apply(key, val)
            if decoded is not None and decoded.get("origin") != "b":
                await reps["b"]._apply(decoded)
        on_b_after_topic = "k-all" in b_rig.engine.latches()
        assert on_a  # an unscoped latch is wider than "mexc" on every shard
        # The binance half of k-all is outside a reset naming mexc: B must keep it latched.
        assert on_b_after_alert
        assert on_b_after_topic, "a reset scoped to mexc released a latch over binance on shard B"
    finally:
        await a_rig.engine.stop()
        await b_rig.engine.stop()
