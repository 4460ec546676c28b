"""Consume risk alerts from Kafka, hand them to the engine, dead-letter what cannot be acted upon.

Delivery is at-least-once and the offset is the promise: a partition's offset is committed
only past records that are done, meaning the trigger was journaled (`engine.submit` returned),
the heartbeat or reset was applied, or the rejected record is confirmed in the dead-letter
topic. A crash anywhere before the commit replays the record; the engine answers a replayed
trigger with DUPLICATE, so a replay is a no-op; an id reused for another scope or mode (not a
replay: another alert) is dead-lettered as `id_conflict` and logged at warning. A record acted
on before is a duplicate before the age and freshness rules are asked (no dead letter says "not
acted on" of what was): a kill or cancel whose id the engine journaled (`accepted`; compared
with the trigger where the engine still holds it), a reset whose id it journaled
(`reset_applied`), in this life or an earlier one. What a record becomes, and the rules of a
reset the engine has no id of, are in `kafka.alert_intake`.

With replicas sharing the latch, a kill or cancel the engine has no record of is asked of the
cluster too (`cluster.released_in_cluster`): one a reset on another replica released (it was
latched and reset there while this replica was down) is a duplicate, never killed again here
(orders placed since that reset are not the kill's). Until the latch topic has been read the
cluster cannot say: the kill is acted on (fail-safe) with an alarm (`latch_unread_at_kill`),
and the replicator releases it once it reads the reset.

Each daemon is its own consumer group and assigns itself every partition of the alerts topic
(no group membership): every replica sees every alert, start-up needs no rebalance, and the
committed offsets still live in Kafka. Kafka expires such a group's offsets
`offsets.retention.minutes` (7 days by default) after its last commit, and alerts may not come
for weeks: each connect commits every partition's position again, and so does the loop every
`offset_refresh_s` (an hour) with no alert in between. Both re-commit only offsets committed
before (or decided at the connect): never past a record not done.

Where each partition starts, decided at every connect (`_start`), and logged at warning with
the offsets whenever it is not simply the committed offset:

- the broker's committed offset;
- else, in this process's life, the position it committed last (the broker expired or lost the
  group's offsets while the daemon ran): never the beginning (history), never the end (skips);
- else, a start without offsets (a new group, or the offsets expired while the daemon was down
  longer than the retention: Kafka does not tell the two apart): the alerts at most
  `kafka.start_max_age_ms` (ten minutes) older than the consumer's first connect attempt are
  read, older ones are history and are not replayed into kills. An alert published while the
  daemon was starting or down, or while the broker or the topic was not there yet, is inside
  the bound and acted on; the week-old drill is not. The start comes from the broker's time
  index (`offsets_for_times`); as brokers differ there (Tansu indexes append time, not the
  record's stamp) and a record's stamp is its send, not its alert's `ts`, the records already
  in the log at the decision that are stamped, or whose authenticated alert is dated, before
  the bound are passed over as they are read (`history_skipped`, no dead letter). Every record
  appended after the decision is read whatever its dates. Such a start is committed only once
  nothing before it is left to pass over: a crash before that decides again, never from a
  commit of history;
- a position below the log start (records deleted by retention before they were read): the log
  start, the oldest unread alerts; past the log end (the log was truncated or recreated): as a
  start without offsets.

A fetch out of range (`auto_offset_reset="none"`) is a reconnect, decided by these rules: the
consumer never jumps to either end of the log by itself.

The broker going away never stops the daemon: the loop keeps probing, reports `disconnected`
in `status()`, reconnects with backoff and resumes from the committed offsets.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from killswitch.backoff import Backoff
from killswitch.events import EventType, make_event
from killswitch.handlers.alerts import (
    AlertRejected,
)
from killswitch.kafka.acted_on import ActedOn, ClusterLatch
from killswitch.kafka.alert_intake import AlertIntake, HeartbeatListener, OlderThanStart
from killswitch.kafka.alert_start import History, start_of
from killswitch.kafka.client import BROKER_ERRORS, EngineFeed, client_options, new_producer
from killswitch.kafka.dead_letters import DeadLetters, Record
from killswitch.kill.port import EnginePort
from killswitch.lane import lane
from killswitch.model import AccountRef, Trigger

if TYPE_CHECKING:
    from killswitch.settings import KafkaSettings

log = logging.getLogger(__name__)


AlertEngine = EnginePort  # what the consumer needs of the engine


@dataclass
class ConsumerStats:
    """Counters for `status()` and metrics."""

    consumed: int = 0
    triggers: int = 0
    duplicates: int = 0
    heartbeats: int = 0
    resets: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    dead_lettered: int = 0
    dead_letter_failures: int = 0
    dead_letter_lost: int = 0
    commits: int = 0
    commit_failures: int = 0
    history_skipped: int = 0  # records older than a start without offsets, not replayed
    connects: int = 0
    disconnects: int = 0
    engine_failures: int = 0

    def to_json(self) -> dict[str, object]:
        data = {k: v for k, v in vars(self).items() if k != "rejected"}
        data["rejected"] = dict(self.rejected)
        return data


class _RateGate:
    """Allow `per_s` events per second, counting what it holds back (rejection floods)."""

    def __init__(self, per_s: float, clock: Callable[[], float]) -> None:
        self.per_s = per_s
        self.clock = clock
        self.tokens = per_s
        self.last = clock()
        self.suppressed = 0

    def allow(self) -> bool:
        now = self.clock()
        self.tokens = min(self.per_s, self.tokens + (now - self.last) * self.per_s)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.suppressed += 1
        return False


class KafkaAlertConsumer(EngineFeed):
    """The alerts input: a daemon `Service` that turns alert records into engine calls."""

    name = "kafka-alerts"

    def __init__(
        self,
        settings: KafkaSettings,
        engine: AlertEngine,
        *,
        accounts: Iterable[AccountRef] | None = None,
        heartbeats: HeartbeatListener | None = None,
        cluster: ClusterLatch | None = None,
        start_timeout_s: float = 10.0,
        probe_interval_s: float = 2.0,
        poll_timeout_ms: int = 200,
        max_records: int = 500,
        fetch_max_wait_ms: int = 25,
        backoff: Backoff | None = None,
        dead_letter_pending_limit: int = 2_000,
        io_timeout_s: float = 10.0,
        stop_wait_s: float = 5.0,
        offset_refresh_s: float = 3600.0,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(settings, engine, backoff=backoff, clock=clock, wall_ms=wall_ms)
        self.what = "kafka alerts"
        self.reconnect_errors = RECONNECT_ERRORS
        self.cluster = cluster  # the latch shared with other replicas, if any
        self.start_timeout_s = start_timeout_s
        self.probe_interval_s = probe_interval_s
        self.poll_timeout_ms = poll_timeout_ms
        self.max_records = max_records
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.io_timeout_s = io_timeout_s
        self.stop_wait_s = stop_wait_s  # on stop, for dead letters in flight
        self.offset_refresh_s = offset_refresh_s  # keeps the group's offsets from expiring
        self.stats = ConsumerStats()
        self.acted_on = ActedOn(engine, cluster, self.stats, self._emit)
        self.intake = AlertIntake(
            settings,
            engine,
            self.acted_on,
            self.stats,
            self._emit,
            self._stopping,
            accounts=accounts,
            heartbeats=heartbeats,
        )
        self._partitions: list[TopicPartition] = []
        self._started_ms = 0  # wall ms of the first connect attempt: a start without offsets
        self._done: dict[TopicPartition, int] = {}  # next offset past the processed records
        self._committed: dict[TopicPartition, int] = {}  # what this process knows is committed
        self._history: dict[TopicPartition, History] = {}  # where history is passed over
        self._refresh_at = 0.0  # clock time of the next commit that keeps the offsets alive
        self.letters = DeadLetters(settings, self.stats, pending_limit=dead_letter_pending_limit)
        self._last_probe = 0.0
        self._event_gate = _RateGate(10.0, clock)
        # Called with the offsets just before records are committed as done (not before the
        # commits that only keep them alive); a test seam for crash tests.
        self.before_commit: Callable[[dict[TopicPartition, int]], Any] | None = None

    # -- Service ----------------------------------------------------------------------------

    async def _step(self) -> None:
        await self._poll_once()

    async def _at_stop(self) -> None:
        await self._last_commit()

    @property
    def stalled(self) -> str:
        """Why the consumer is stuck on one record (an engine call not journaled), if it is."""
        return self.intake.stalled

    def status(self) -> str:
        """Say whether alerts can arrive, and what went wrong if not."""
        if self.stalled:
            return f"stalled: {self.stalled}"
        if self.connected:
            lag = self.lag()
            return f"connected, {self.stats.consumed} consumed, lag {lag}"
        return f"disconnected: {self.last_error or 'connecting'}"

    def lag(self) -> int | None:
        """Records in the alerts topic not processed yet (None if unknown)."""
        consumer = self._consumer
        if consumer is None:
            return None
        total = 0
        for tp in self._partitions:
            high = consumer.highwater(tp)
            if high is None:
                return None
            total += max(0, high - self._done.get(tp, high))
        return total

    def snapshot(self) -> dict[str, object]:
        """Everything `killswitch status` shows about the alerts input."""
        return {
            "connected": self.connected,
            "last_error": self.last_error,
            "stalled": self.stalled,
            "lag": self.lag(),
            "committed": {f"{tp.topic}:{tp.partition}": o for tp, o in self._committed.items()},
            **self.stats.to_json(),
        }

    # -- connection -------------------------------------------------------------------------

    async def _connect(self) -> None:
        if not self._started_ms:
            self._started_ms = self._wall_ms()  # the first attempt: a start without offsets
        settings = self.settings
        producer = new_producer(
            settings, linger_ms=5, request_timeout_ms=int(self.io_timeout_s * 1000)
        )
        self._producer = producer
        await producer.start()
        self.letters.start(producer)
        consumer = AIOKafkaConsumer(
            **client_options(settings),
            group_id=settings.group_id,
            client_id=f"killswitch-{settings.group_id}",
            enable_auto_commit=False,
            # never jump to an end of the log by itself: an out-of-range fetch is a broker
            # error, and the reconnect decides where to go (`_start`)
            auto_offset_reset="none",
            max_poll_records=self.max_records,
            # a broker that does not answer a waiting fetch when data arrives (Tansu) adds up
            # to this much latency to every alert; Kafka answers at once either way
            fetch_max_wait_ms=self.fetch_max_wait_ms,
        )
        self._consumer = consumer
        await consumer.start()
        partitions = consumer.partitions_for_topic(settings.alerts_topic)
        if not partitions:
            raise _TopicMissing(f"topic {settings.alerts_topic} does not exist")
        tps = [TopicPartition(settings.alerts_topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        # The ends are read before the lookups by time: a record appended in between is past
        # its partition's end, and read (taking the end after the lookup skipped one: a flaky
        # test of the topic an alert creates showed it under load).
        ends = await consumer.end_offsets(tps)
        begins = await consumer.beginning_offsets(tps)
        positions: dict[TopicPartition, int] = {}
        history: dict[TopicPartition, History] = {}
        for tp in tps:
            known = self._committed.get(tp)
            floor_ms = self._started_ms - self.settings.start_max_age_ms
            start, window = await start_of(consumer, tp, known, begins[tp], ends[tp], floor_ms)
            consumer.seek(tp, start)
            if window is None:
                positions[tp] = start
            else:
                history[tp] = window
        if positions:
            # Committed again at every connect, unchanged or not: it keeps them from expiring.
            await consumer.commit(positions)
        self._committed = positions
        self._history = history
        self._refresh_at = self._clock() + self.offset_refresh_s
        self._partitions = tps
        self._done = {}
        self._last_probe = self._clock()

    def _on_connected(self) -> None:
        self.stats.connects += 1
        log.info(
            "kafka alerts connected topic=%s partitions=%d group=%s",
            self.settings.alerts_topic,
            len(self._partitions),
            self.settings.group_id,
        )
        self._emit(
            EventType.KAFKA_CONNECTED,
            topic=self.settings.alerts_topic,
            partitions=len(self._partitions),
        )

    def _on_disconnected(self, was_connected: bool) -> None:
        self.stats.disconnects += 1
        if was_connected:
            log.warning("kafka alerts disconnected error=%s", self.last_error)
            self._emit(EventType.KAFKA_DISCONNECTED, error=self.last_error)
        else:
            log.info("kafka alerts connect failed error=%s", self.last_error)

    async def _last_commit(self) -> None:
        """On stop: give dead letters in flight a bounded wait, commit what is done."""
        if self._consumer is None:
            return
        try:
            await self.letters.settle(wait_s=self.stop_wait_s)
            await self._commit()
        except asyncio.CancelledError:
            raise
        except RECONNECT_ERRORS as exc:
            log.warning("last commit failed error=%s", exc)

    async def _drop_in_flight(self) -> None:
        await self.letters.drop()

    async def _probe(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        async with asyncio.timeout(max(1.0, self.probe_interval_s * 2)):
            await consumer.topics()
        parts = consumer.partitions_for_topic(self.settings.alerts_topic) or set()
        if {tp.partition for tp in self._partitions} != parts:
            raise _TopicMissing(f"partitions of {self.settings.alerts_topic} changed: {parts}")

    # -- the loop ---------------------------------------------------------------------------

    async def _poll_once(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        batch = await consumer.getmany(
            timeout_ms=self.poll_timeout_ms, max_records=self.max_records
        )
        for tp, records in batch.items():
            for record in records:
                window = self._window(tp, record.offset) if self._history else None
                if window is not None and 0 <= record.timestamp < window.floor_ms:
                    self._pass_over(window, tp, record.offset)  # not even parsed
                else:
                    await self._process(tp, record, history=window)
                self._done[tp] = record.offset + 1
                if self._stopping.is_set():
                    break
            if self._stopping.is_set():
                break
        if self._history and not self._stopping.is_set():
            await self._close_history(consumer)
        await self.letters.settle()
        await self._commit()
        if self._clock() >= self._refresh_at:
            await self._refresh()
        if self._clock() - self._last_probe >= self.probe_interval_s:
            self._last_probe = self._clock()
            await self._probe()

    def _window(self, tp: TopicPartition, offset: int) -> History | None:
        """The history window of a start without offsets that holds this record, if any."""
        window = self._history.get(tp)
        return window if window is not None and offset < window.end else None

    def _pass_over(self, window: History, tp: TopicPartition, offset: int) -> None:
        """Count a record of a history window older than its floor: it is not replayed."""
        window.skipped += 1
        self.stats.history_skipped += 1
        log.debug(
            "alert record older than the start not replayed partition=%d offset=%d",
            tp.partition,
            offset,
        )

    async def _close_history(self, consumer: AIOKafkaConsumer) -> None:
        """End the history windows read to their end: from there on, the partition commits."""
        for tp, window in list(self._history.items()):
            # the position, not the last record: the log may end in records never returned
            # (transaction markers, compacted away)
            if await consumer.position(tp) >= window.end:
                del self._history[tp]
                log.info(
                    "kafka alerts history passed over partition=%d skipped=%d log_end=%d",
                    tp.partition,
                    window.skipped,
                    window.end,
                )

    async def _process(
        self, tp: TopicPartition, record: Record, *, history: History | None = None
    ) -> None:
        """Act on one record; a record that cannot be handled is dead-lettered, never fatal.

        Everything up to the engine call is guarded: a rejection, and equally an error of ours
        on a record nobody foresaw, dead-letters the record with its error and the consumer
        goes on (DESIGN "Alerts"). The engine call itself is retried until journaled
        (`AlertIntake.engine_call`): a kill is never skipped for a full disk. In a `history`
        window, an alert dated before its floor is passed over, like a record stamped before it.
        """
        self.stats.consumed += 1
        now_ms = self._wall_ms()
        try:
            work = self.intake.accept(record, now_ms, history=history)
        except OlderThanStart:
            assert history is not None
            self._pass_over(history, tp, record.offset)
            return
        except AlertRejected as exc:
            await self._reject(tp, record, exc)
            return
        except Exception as exc:  # one record must never stop the consumer
            log.exception(
                "alert record could not be handled partition=%d offset=%d",
                record.partition,
                record.offset,
            )
            # The error's type only: its text may quote the record, and a dead letter's
            # error never echoes the input (the log line above has the traceback).
            error = AlertRejected(f"cannot handle record: {type(exc).__name__}", kind="unhandled")
            await self._reject(tp, record, error)
            return
        if isinstance(work, Trigger):
            conflict = await self.intake.submit(work)
            if conflict is not None:
                await self._reject(tp, record, conflict)
        elif work is not None:
            await self.intake.reset(work, now_ms)

    # -- dead letters -----------------------------------------------------------------------

    async def _reject(self, tp: TopicPartition, record: Record, exc: AlertRejected) -> None:
        self.stats.rejected[exc.kind] += 1
        log.info(
            "alert rejected kind=%s partition=%d offset=%d error=%s",
            exc.kind,
            record.partition,
            record.offset,
            exc.msg,
        )
        if self._event_gate.allow():
            self._emit(
                EventType.ALERT_REJECTED,
                kind=exc.kind,
                error=exc.msg,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                suppressed=self._event_gate.suppressed,
            )
        self.letters.post(tp, record, exc)

    # -- commits ----------------------------------------------------------------------------

    def commit_offsets(self) -> dict[TopicPartition, int]:
        """Offsets safe to commit now: past processed records, before the first pending letter."""
        offsets: dict[TopicPartition, int] = {}
        for tp, done in self._done.items():
            if tp in self._history:
                continue  # a start without offsets is committed once its history is read
            pending = self.letters.first_pending(tp)
            offset = done if pending is None else min(done, pending)
            if offset > self._committed.get(tp, -1):
                offsets[tp] = offset
        return offsets

    async def _commit(self) -> None:
        consumer = self._consumer
        offsets = self.commit_offsets()
        if consumer is None or not offsets:
            return
        # The records are journaled: their commit goes after the kill's own next steps (the
        # first cancels of the kill they started, see `killswitch.lane`).
        await lane().turn()
        if self.before_commit is not None:
            hook = self.before_commit(offsets)
            if asyncio.iscoroutine(hook):
                await hook
        if not await self._send_commit(consumer, offsets, "commit"):
            return  # cumulative: the next commit covers these offsets too
        self.stats.commits += 1
        self._committed.update(offsets)

    async def _send_commit(
        self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int], what: str
    ) -> bool:
        """Commit `offsets`, within `io_timeout_s`; False (counted, logged) if it failed."""
        try:
            async with asyncio.timeout(self.io_timeout_s):
                await consumer.commit(offsets)
        except asyncio.CancelledError:
            raise
        except BROKER_ERRORS as exc:
            self.stats.commit_failures += 1
            log.warning("%s failed offsets=%s error=%s", what, _fmt(offsets), exc)
            return False
        return True

    async def _refresh(self) -> None:
        """Commit the committed offsets again: Kafka expires a group's offsets a retention
        period after its last commit, and a quiet week must not look like a new group."""
        self._refresh_at = self._clock() + self.offset_refresh_s
        consumer = self._consumer
        offsets = dict(self._committed)
        if consumer is None or not offsets:
            return
        if not await self._send_commit(consumer, offsets, "offsets refresh"):
            self._refresh_at = self._clock() + min(self.offset_refresh_s, _REFRESH_RETRY_S)
            return
        log.debug("offsets refreshed offsets=%s", _fmt(offsets))

    def _emit(self, event_type: EventType, **fields: object) -> None:
        self.engine.events.emit(make_event(event_type, input="kafka", **fields))


_REFRESH_RETRY_S = 60.0  # after a failed refresh: the retention is days, not minutes


class _TopicMissing(Exception):
    """The alerts topic does not exist (yet) or its partitions changed."""


RECONNECT_ERRORS: tuple[type[BaseException], ...] = (*BROKER_ERRORS, _TopicMissing)


def _fmt(offsets: dict[TopicPartition, int]) -> str:
    return ",".join(f"{tp.partition}:{o}" for tp, o in sorted(offsets.items()))
