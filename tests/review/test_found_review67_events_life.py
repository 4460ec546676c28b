"""Review 67: `seq` restarted at 1 in every process, yet readers were told to order and
de-duplicate one daemon's records (one Kafka key) by it: two lives of a daemon gave different
records the same (key, seq). A record is now named by (life, seq).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.fixtures.kafka import KafkaBroker, kafka_broker, read_topic
from tests.fixtures.kafka_daemon import kafka_drill

__all__ = ["kafka_broker"]

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


async def test_two_lives_of_a_daemon_name_their_records_by_life_and_seq(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    async with kafka_drill(tmp_path, kafka_broker.bootstrap) as d:
        config = d.config("a")
        for trigger_id in ("k-life1", "k-life2"):
            async with d.daemon("a", config) as daemon:
                await daemon.ready()
                await d.wait_live(daemon)
                answer = await daemon.ask(
                    {
                        "op": "fire",
                        "reason": "r67",
                        "id": trigger_id,
                        "cancel_only": True,
                        "wait": "done",
                    }
                )
                assert answer["outcome"] == "flat"
        audit = daemon.audit()  # both lives: one state directory
        records = await read_until_flat(d.bootstrap, d.topics["events_topic"], "k-life2")
    lives = {r["life"] for r in audit}
    assert len(lives) == 2
    by_name: dict[tuple[bytes | None, str, int], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        event = orjson.loads(record.value)
        by_name[(record.key, event["life"], event["seq"])].append(event)
    assert {life for (_, life, _) in by_name} == lives
    for (_, life, seq), events in by_name.items():
        assert all(e == events[0] for e in events)  # a repeat, never another record
        [written] = [r for r in audit if (r["life"], r["seq"]) == (life, seq)]
        assert events[0]["type"] == written["type"]


async def read_until_flat(bootstrap: str, topic: str, trigger_id: str) -> list[Any]:
    """Read the topic from its start up to the `flat` event of `trigger_id`."""
    count = 1
    while True:
        records = await read_topic(bootstrap, topic, count=count)
        for record in records:
            event = orjson.loads(record.value)
            if event["type"] == "flat" and trigger_id in event["trigger_ids"]:
                return records
        count = len(records) + 1
