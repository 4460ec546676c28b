"""Where the alert consumer starts reading a partition (`kafka.alerts`): its committed
offset; else the position this process committed last; else a start without offsets, which
reads the records up to `kafka.start_max_age_ms` old and passes over older ones as history.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import UnsupportedVersionError

log = logging.getLogger("killswitch.kafka.alerts")  # logged under its name, as before


@dataclass(slots=True)
class History:
    """A start without offsets: records before `end` stamped or dated (an alert's `ts`)
    before `floor_ms` are history."""

    end: int
    floor_ms: int
    skipped: int = 0


async def start_of(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    known: int | None,
    begin: int,
    end: int,
    floor_ms: int,
) -> tuple[int, History | None]:
    """Where a partition starts: its committed offset; else the position this process
    committed last; else a start without offsets (`start_without_offsets`). A position
    below the log start moves up to it; one past the log end starts without offsets."""
    committed = await consumer.committed(tp)
    position = committed
    if committed is None and known is not None:
        log.warning(
            "kafka alerts committed offset missing, resuming at this process's position "
            "partition=%d offset=%d log_start=%d log_end=%d",
            tp.partition,
            known,
            begin,
            end,
        )
        position = known
    if position is None:
        return await start_without_offsets(consumer, tp, begin, end, floor_ms)
    if position < begin:
        log.warning(
            "kafka alerts records deleted before they were read, starting at the log start "
            "partition=%d position=%d log_start=%d log_end=%d",
            tp.partition,
            position,
            begin,
            end,
        )
        return begin, None
    if position > end:
        log.warning(
            "kafka alerts position past the log end (log truncated or recreated) "
            "partition=%d position=%d log_start=%d log_end=%d",
            tp.partition,
            position,
            begin,
            end,
        )
        return await start_without_offsets(consumer, tp, begin, end, floor_ms)
    return position, None


async def start_without_offsets(
    consumer: AIOKafkaConsumer, tp: TopicPartition, begin: int, end: int, floor_ms: int
) -> tuple[int, History | None]:
    """Start at the first record stamped at most `start_max_age_ms` before the consumer
    first tried to connect; records already in the log (before `end`) stamped earlier are
    passed over as history (`History`), whatever the broker's time index said."""
    try:
        found = await consumer.offsets_for_times({tp: floor_ms})
    except UnsupportedVersionError as exc:
        # No time index: read the log from its start and pass over the old records.
        log.warning("kafka alerts offsets by time failed partition=%s error=%r", tp, exc)
        start = begin
    else:
        hit = found.get(tp)
        # Nothing stamped since the floor: the end. (Tansu answers a time past its last
        # record with offset 0 and timestamp -1 rather than none.)
        start = end if hit is None or hit.timestamp < 0 else max(begin, min(int(hit.offset), end))
    log.warning(
        "kafka alerts no committed offset, start decided partition=%d start=%d "
        "log_start=%d log_end=%d floor_ms=%d (records before the log "
        "end stamped or dated before floor_ms are history, not replayed; all others are read)",
        tp.partition,
        start,
        begin,
        end,
        floor_ms,
    )
    return start, History(end=end, floor_ms=floor_ms) if start < end else None
