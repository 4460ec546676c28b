"""Review: a Kafka reset alert releases a kill latched after the reset was issued.

`KafkaAlertConsumer._process` checks the reset is not older than the newest latch
(`_check_reset_is_fresh`), then `_reset` calls `engine.reset(...)` with no `only`: release
everything held *when the engine takes its latch lock*. A kill submitted meanwhile (here from
the control socket, its journal write in flight when the reset arrives) is latched after the
check and before the reset runs, and is released, though it was received after the reset's
`ts` (the very case the freshness check exists for; DESIGN "Resets are exact").
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
from aiokafka import TopicPartition

from killswitch.kafka.alerts import KafkaAlertConsumer
from killswitch.settings import KafkaSettings
from tests.unit.test_engine import finished, kill_trigger, make_rig


async def test_a_kafka_reset_never_releases_a_kill_received_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = await make_rig(tmp_path)
    try:
        now_ms = int(time.time() * 1000)
        k1 = replace(kill_trigger("k1", venues=["binance"]), received_ms=now_ms - 5000)
        await rig.engine.submit(k1)  # latched five seconds ago
        await finished(rig, "k1")

        settings = KafkaSettings(bootstrap_servers="127.0.0.1:9", allow_reset=True)
        consumer = KafkaAlertConsumer(settings, rig.engine)
        issued_ms = now_ms - 1000  # the reset was produced a second ago: it may release k1
        value = orjson.dumps(
            {"id": "r-1", "ts": issued_ms, "source": "risk-desk", "action": "reset"}
        )
        record = SimpleNamespace(
            topic="risk.alerts", partition=0, offset=0, key=None, value=value, headers=()
        )

        journal = rig.engine.journal
        original = journal.append_many_async
        slow = asyncio.Event()

        async def held(records: list[tuple[str, dict[str, object]]]) -> list[dict[str, object]]:
            await slow.wait()
            return await original(records)

        monkeypatch.setattr(journal, "append_many_async", held)
        # An operator's kill, received now (after the reset's ts), being journaled.
        submit = asyncio.create_task(rig.engine.submit(kill_trigger("k2", venues=["mexc"])))
        for _ in range(5):
            await asyncio.sleep(0)
        process = asyncio.create_task(consumer._process(TopicPartition("risk.alerts", 0), record))  # type: ignore[arg-type]
        for _ in range(5):
            await asyncio.sleep(0)
        monkeypatch.setattr(journal, "append_many_async", original)
        slow.set()
        await submit
        await process

        k2 = rig.engine.trigger("k2")
        assert k2 is not None
        assert k2.received_ms > issued_ms
        assert "k1" not in rig.engine.latches()  # the reset did run
        assert "k2" in rig.engine.latches(), "a reset issued before k2 was received released it"
    finally:
        await rig.engine.stop()
