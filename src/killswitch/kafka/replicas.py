"""Share the latch between daemon replicas through a compacted Kafka topic.

Several daemons (different hosts, each its own consumer group) each see every alert and cancel
independently; cancels are idempotent. What they must agree on is the latch. Each replica
publishes to `kafka.latch_topic` (one partition, `cleanup.policy=compact`, so nothing expires):

    key latch/<trigger id>   {"type": "latch", "origin": <replica>, "trigger": {...}}
    key reset/<origin>/<ms>  {"type": "reset", "origin": <replica>, "released": [ids], ...}
    key latch/<trigger id>   null (a tombstone for each trigger a reset released)

and applies the others' records to its own engine: a latch is submitted as the same trigger
(same id: the engine answers DUPLICATE if it has it already), a reset is applied only when it
released every latch this replica holds. When two replicas race (one latches while the other
resets), the latch wins: a replica never drops a latch the reset did not name, and a replica
that reset before reading a peer's latch latches again when it reads it. Fail-safe, never open.

Echo loops are cut twice: records name their `origin` (our own are not applied again), and
what we applied from the topic (a submitted trigger, a reset with origin `replica:<peer>`) is
not published back. A replica that starts reads the topic from the beginning before READY
(bounded by `sync_timeout_s`, then it keeps trying in the background and says so in status).
One restarting latched reads it first in the engine's start, before the journal's latched
kills resume (`before_resume`): a latch a peer reset while it was down is released, never
killed again. Unread within the same bound, every latch resumes and an alarm says so.

A kill fired on the control socket is answered only once its latch record is on the topic
(`latch_published`: acknowledged by the broker with acks=all), or, after `sync_timeout_s`, with
why it is not: until then only this host holds it, and a replica that died right after
answering "accepted" would take the kill with it. Only the replicator's loop sends the outbox
(a fire wakes it, so the record leaves at once rather than after the poll); a fire only waits.
A send cut short by a fire's deadline would still reach the topic (aiokafka keeps what it
queued) while the outbox kept the record, and the next drain would write it again (review 89).
An acknowledged latch record whose id the topic shows released (a reset read, from any
replica) is not on the topic for this purpose: the replicas ignore it. `latch_status` names
the latches held here that the topic is not known to hold (`killswitch status`).

A reset made here reaches the topic even if this replica stopped or crashed before publishing
it: a graceful stop publishes what waits (for at most `stop_flush_s`), and after a restart the
journal says it (`kafka.reconciler` announces it once settled).

The alert consumer asks `released_in_cluster` before it acts on a kill or cancel its engine
has no record of: an alert whose id a reset on the topic released (latched and reset on a peer
while this replica was down) is not killed again here. Ids are unique per alert: a record of the
same id is the same alert. Until the topic has been read to its end the answer is "unknown",
and the consumer acts on the kill (fail-safe) with an alarm; the sync that follows releases it
here, as it would any latch a reset named, and the latch it queued for the topic meanwhile is
not published (the cluster released it; publishing it would latch the peers again).

With `kafka.alert_hmac_key` configured, every record published here is signed as alerts are
(header `x-signature`), and a record read that the key does not sign (unsigned, badly signed,
or written before the key was configured) is ignored for latching, releasing and firing alike:
counted (`LatchLog.unauthenticated`), logged and raised as an alarm
(`latch_record_unauthenticated`) naming its offset, never its content; the replicator reads on.
A latch this replica holds that the topic shows only unsigned is published again, signed (it
is one the log has never seen); a reset the topic shows only unsigned releases nothing here.

A peer's latch whose scope covers no account configured here (another shard's accounts, on a
shared latch topic) is not submitted (`kafka.reconciler`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from killswitch.backoff import Backoff
from killswitch.events import EventRecord, EventType, make_event
from killswitch.handlers.alerts import SIGNATURE_HEADER, Unauthenticated, signature
from killswitch.kafka.client import (
    BROKER_ERRORS,
    EngineFeed,
    broker_error,
    client_options,
    new_producer,
)
from killswitch.kafka.latch_log import LatchLog, remember
from killswitch.kafka.latch_topic import ensure_compacted_topic, get_many
from killswitch.kafka.reconciler import REPLICA_ORIGIN, LatchReconciler, held_latches
from killswitch.kill.port import EnginePort
from killswitch.model import AccountRef, Mode

if TYPE_CHECKING:
    from killswitch.settings import KafkaSettings

log = logging.getLogger(__name__)

ORIGIN_HEADER = "x-origin"


ReplicaEngine = EnginePort  # what the replicator needs of the engine


class LatchReplicator(EngineFeed):
    """A daemon `Service` and an `EventSink`: publish our latches and resets, apply the others'."""

    name = "replicas"

    def __init__(
        self,
        settings: KafkaSettings,
        engine: ReplicaEngine,
        *,
        replica_id: str | None = None,
        sync_timeout_s: float = 10.0,
        poll_timeout_ms: int = 50,
        reset_settle_s: float = 2.0,
        stop_flush_s: float = 5.0,
        accounts: Iterable[AccountRef] | None = None,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        super().__init__(settings, engine, backoff=backoff, clock=clock, wall_ms=wall_ms)
        self.what = "latch topic"
        self.start_timeout_s = sync_timeout_s
        self.replica_id = replica_id or settings.replica_name()
        self.topic = settings.latch_topic
        self.tp = TopicPartition(self.topic, 0)
        self.sync_timeout_s = sync_timeout_s
        self.poll_timeout_ms = poll_timeout_ms
        key = settings.alert_hmac_key
        self._hmac_key = key.get_secret_value().encode() if key is not None else None
        self.log = LatchLog(hmac_key=self._hmac_key)
        self.synced = False
        self.published = 0
        self.applied_latches = 0
        self.applied_resets = 0
        self.announced_resets = 0  # resets made here that the topic lacked, published late
        self.refused_latches = 0  # peer latches over no account configured here, by id
        self.stop_flush_s = stop_flush_s
        # What the records read do to the engine; it counts in the four counters above.
        self.reconciler = LatchReconciler(
            engine,
            self.log,
            self,
            self._stopping,
            replica_id=self.replica_id,
            queue_latch=self._queue_latch,
            queue_reset=self._queue_reset,
            accounts=accounts,
            reset_settle_s=reset_settle_s,
            clock=clock,
        )
        self._outbox: deque[tuple[bytes, bytes | None]] = deque()
        self._sending = asyncio.Lock()  # one drain of the outbox at a time, in its order
        # A fire waits for its latch record: the loop's poll ends early and the outbox is sent.
        self._publish_soon = asyncio.Event()
        # Latch records the broker acknowledged (until a tombstone for them is), by trigger id,
        # and the fires waiting for theirs: resolved with None once acknowledged, else why not.
        self._acked: OrderedDict[str, None] = OrderedDict()
        self._latch_waits: dict[str, asyncio.Future[str | None]] = {}
        self._stopped = False  # `_at_stop` ran: nothing settles a fire's wait any more
        self._position = 0  # next offset to read
        self._skipped_at_resume = False  # `before_resume` could not read the topic

    # -- what the alert consumer asks ---------------------------------------------------------

    def released_in_cluster(self, trigger_id: str) -> bool | None:
        """Whether a reset on the latch topic released `trigger_id` and no later record latched
        it again; None while the topic has not been read to its end (unknown)."""
        if not self.synced:
            return None
        return self._released(trigger_id)

    def _released(self, trigger_id: str) -> bool:
        return trigger_id in self.log.released and trigger_id not in self.log.latched

    # -- what the control socket asks --------------------------------------------------------

    @property
    def publish_timeout_s(self) -> float:
        """How long a fire waits for its latch record to be on the topic."""
        return self.sync_timeout_s

    async def latch_published(self, trigger_id: str, timeout_s: float) -> str | None:
        """Wait until the latch record of `trigger_id` is on the topic, acknowledged by the
        broker (acks=all), waking the loop to send what waits at once; return None once it is,
        else (after at most `timeout_s`) why it is not. Never sends from the caller's task;
        a `timeout_s` of 0 only looks (it neither waits nor wakes anything)."""
        if self._on_topic(trigger_id):
            return None
        if self._released(trigger_id):
            return "a reset on the latch topic released it"
        if not self._queued(trigger_id):
            return "no latch record of it is on its way to the latch topic"
        settled: str | None = None
        if self._stopped:
            # (review 90: a fire between this stop and the control server's waited its bound)
            settled = "the replicator stopped before publishing it"
        elif timeout_s > 0:
            waiter = self._latch_waits.get(trigger_id)
            if waiter is None or waiter.done():
                waiter = asyncio.get_running_loop().create_future()
                self._latch_waits[trigger_id] = waiter
            self._publish_soon.set()
            try:
                async with asyncio.timeout(timeout_s):
                    # shielded: a caller's deadline or cancel leaves the waiter to the others
                    settled = await asyncio.shield(waiter)
            except TimeoutError:
                pass
        if self._on_topic(trigger_id):  # acknowledged as the time ran out
            return None
        if self._released(trigger_id):
            why = "a reset on the latch topic released it"
        elif settled is not None:
            why = settled
        elif not self.connected:
            why = f"latch topic not connected: {self.last_error or 'connecting'}"
        elif not self.synced:
            why = "the latch topic is not read yet"
        else:
            why = "no acknowledgement"
        return f"not on the latch topic after {timeout_s:g}s ({why})"

    def latch_status(self) -> dict[str, object]:
        """The latches held here that the topic is not known to hold (only this host has
        them), and whether the topic is read and reachable."""
        return {
            "topic": self.topic,
            "connected": self.connected,
            "synced": self.synced,
            "error": self.last_error or None,
            "not_on_topic": self._not_on_topic(),
        }

    def _on_topic(self, trigger_id: str) -> bool:
        # A reset read names it (a peer's or ours): the replicas ignore its latch record since,
        # and this replica's acknowledgement of one no longer says the cluster holds it.
        if self._released(trigger_id):
            return False
        return trigger_id in self._acked or trigger_id in self.log.latched

    def _queued(self, trigger_id: str) -> bool:
        key = f"latch/{trigger_id}".encode()
        return any(k == key and v is not None for k, v in self._outbox)

    def _not_on_topic(self) -> list[str]:
        return [t for t in held_latches(self.engine) if not self._on_topic(t)]

    def _settle_waits(self, trigger_id: str, why: str | None) -> None:
        waiter = self._latch_waits.pop(trigger_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(why)

    # -- EventSink: what our engine did ------------------------------------------------------

    def emit(self, event: EventRecord) -> None:
        """Queue a latch record for a kill triggered here, a reset record for a reset made here."""
        kind = event.get("type")
        if kind == EventType.TRIGGERED:
            trigger = event.get("trigger")
            if not isinstance(trigger, dict) or trigger.get("mode") != Mode.KILL.value:
                return
            trigger_id = str(trigger.get("id"))
            # accepted here: it was being journaled, not released (see `announce_resets`)
            self.reconciler.unannounced.pop(trigger_id, None)
            if trigger_id in self.reconciler.applied or trigger_id in self.log.latched:
                return  # it came from the topic, or a peer published it already
            self._queue_latch(trigger)
        elif kind == EventType.RESET:
            origin = str(event.get("origin", ""))
            if origin.startswith(REPLICA_ORIGIN):
                return  # applied from a peer's record: not ours to announce
            released = event.get("released")
            ids = [
                str(r["trigger_id"])
                for r in (released if isinstance(released, list) else [])
                if isinstance(r, dict) and "trigger_id" in r
            ]
            self._queue_reset(
                ids,
                actor=str(event.get("actor", "")),
                reason=str(event.get("reason", "")),
                origin=origin,
            )

    def _queue_latch(self, trigger: dict[str, Any]) -> None:
        record = {
            "type": "latch",
            "origin": self.replica_id,
            "ts_ms": self._wall_ms(),
            "trigger": trigger,
        }
        self._outbox.append((f"latch/{trigger['id']}".encode(), orjson.dumps(record)))

    def _queue_reset(self, ids: list[str], *, actor: str, reason: str, origin: str) -> None:
        now = self._wall_ms()
        record = {
            "type": "reset",
            "origin": self.replica_id,
            "ts_ms": now,
            "actor": actor,
            "reason": reason,
            "via": origin,
            "released": ids,
        }
        self._outbox.append((f"reset/{self.replica_id}/{now}".encode(), orjson.dumps(record)))
        for trigger_id in ids:  # let compaction drop the released latches
            self._outbox.append((f"latch/{trigger_id}".encode(), None))

    # -- Service -----------------------------------------------------------------------------

    async def before_resume(self) -> None:
        """`Engine.start(before_resume=...)`: read the topic to its end and release the
        latches a peer's reset named, before the journal's latched kills resume. A replica
        that was down while the cluster reset a latch must not kill it again (the desk may be
        trading in that scope by now). Bounded by `sync_timeout_s`; a topic that cannot be
        read leaves every latch to resume (fail-safe, never open), with an alarm. Only
        releases here: a peer's latch this replica lacks is submitted by `start()` (after the
        resume, before READY), and the clients are closed again (`start()` opens its own)."""
        held = held_latches(self.engine)
        if not held:
            return  # nothing resumes that a peer's reset could have released
        try:
            try:
                async with asyncio.timeout(self.sync_timeout_s):
                    await self._open()
                    await self._read_to_end()
            finally:
                await self._teardown()
        except asyncio.CancelledError:
            raise
        except self.reconnect_errors as exc:
            if isinstance(exc, TimeoutError):
                exc = TimeoutError(f"not read within sync_timeout_s={self.sync_timeout_s}")
            await self._disconnect(exc)
            self._skipped_at_resume = True  # run() reconnects, after a backoff
            self._resuming_unsynced(held, self.last_error)
            return
        except Exception as exc:  # noqa: BLE001 - the latched kills resume whatever failed here
            self._resuming_unsynced(held, f"{type(exc).__name__}: {exc}"[:300], exc)
            return
        release = self.log.decide(held).release
        if not release:
            return
        try:
            await self.reconciler.reset_from_log(release)()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - kept latched; start()'s reconcile retries
            self._resuming_unsynced(held, f"{type(exc).__name__}: {exc}"[:300], exc)
            return
        self.applied_resets += 1

    def _resuming_unsynced(self, held: list[str], error: str, exc: Exception | None = None) -> None:
        """Say that the latched kills resume without what the topic says (an alarm)."""
        log.error(
            "latch topic not applied before resuming latched kills, resuming them all (a "
            "reset on another replica meanwhile is applied once it is) trigger_ids=%s error=%s",
            held,
            error,
            exc_info=exc,
        )
        self.engine.events.emit(
            make_event(
                EventType.ALARM,
                account="latch_topic",
                kind="latch_sync_skipped",
                error=error,
                trigger_ids=held,
            )
        )

    def _connect_at_start(self) -> bool:
        # The engine's start tried the topic moments ago, under the same bound: READY is not
        # held up a second `sync_timeout_s`; run() keeps trying.
        return not self._skipped_at_resume

    async def _at_start(self) -> None:
        await self._sync()

    async def _step(self) -> None:
        if not self.synced:
            await self._sync()
        await self._step_resets()
        self._publish_soon.clear()  # what the fires waiting now want is sent next
        await self._publish()
        await self._poll(wake=self._publish_soon)

    async def _at_stop(self) -> None:
        """Publish what waits in the outbox, for at most `stop_flush_s`: a reset or a kill made
        just before a stop is announced now. What is left comes back from the journal at the
        next start (a latch the topic lacks, a reset of a latch the topic still shows)."""
        if self._outbox and self.connected:
            try:
                async with asyncio.timeout(self.stop_flush_s):
                    await self._publish()
            except asyncio.CancelledError:
                raise
            except BROKER_ERRORS as exc:
                self.last_error = broker_error(exc)
        self._stopped = True
        for trigger_id in list(self._latch_waits):
            self._settle_waits(trigger_id, "the replicator stopped before publishing it")
        if not self._outbox:
            return
        log.warning(
            "latch records not published at stop count=%d error=%s "
            "(announced again from the journal at the next start)",
            len(self._outbox),
            self.last_error or "not connected",
        )

    def _on_disconnected(self, was_connected: bool) -> None:
        if was_connected:
            log.warning("latch topic disconnected error=%s", self.last_error)
        elif not self.synced:
            log.error(
                "latch topic not read, continuing from the local journal error=%s",
                self.last_error,
            )

    def status(self) -> str:
        if not self.connected:
            return f"disconnected: {self.last_error or 'connecting'}, synced={self.synced}"
        peers = sorted(o for o in self.log.peers if o and o != self.replica_id)
        refused = (
            f", {self.refused_latches} peer latches over no account here"
            if self.refused_latches
            else ""
        )
        if self.log.unauthenticated:
            refused += f", {self.log.unauthenticated} unsigned or badly signed records ignored"
        local = self._not_on_topic()
        if local:
            refused += f", {len(local)} latches held here NOT on the topic"
        return (
            f"synced={self.synced}, {len(self.log.latched)} cluster latches{refused}, "
            f"peers: {','.join(peers) or 'none seen'}"
        )

    # -- connection --------------------------------------------------------------------------

    async def _connect(self) -> None:
        await ensure_compacted_topic(self.settings, self.topic)
        producer = new_producer(self.settings)
        self._producer = producer
        await producer.start()
        consumer = AIOKafkaConsumer(
            **client_options(self.settings),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=25,
            client_id=f"killswitch-{self.replica_id}-latch",
        )
        self._consumer = consumer
        await consumer.start()
        consumer.assign([self.tp])
        if self._position:
            consumer.seek(self.tp, self._position)
        else:
            await consumer.seek_to_beginning(self.tp)
        log.info("latch topic connected topic=%s replica=%s", self.topic, self.replica_id)

    # -- reading -----------------------------------------------------------------------------

    async def _sync(self) -> None:
        """Read to the end of the topic as it is now, then reconcile the engine with it."""
        await self._read_to_end()
        self.synced = True
        self._drop_released_latches()
        await self._reconcile()
        log.info(
            "latch topic read records=%d cluster_latches=%d",
            self.log.records,
            len(self.log.latched),
        )

    def _drop_released_latches(self) -> None:
        """Forget the latch records queued before the topic was read whose ids a reset there
        released (a kill acted on while the topic was unread, fail-safe): the reconcile that
        follows releases them here, and publishing them would latch the peers again."""
        dropped: list[str] = []
        kept: deque[tuple[bytes, bytes | None]] = deque()
        for key, value in self._outbox:
            name = key.decode(errors="replace")
            if value is not None and name.startswith("latch/"):
                trigger_id = name.removeprefix("latch/")
                if self._released(trigger_id):
                    dropped.append(trigger_id)
                    self._settle_waits(trigger_id, "a reset on the latch topic released it")
                    continue
            kept.append((key, value))
        if not dropped:
            return
        self._outbox = kept
        log.warning(
            "latch not published: a reset on the latch topic released it while the topic was "
            "unread here (released here too) trigger_ids=%s",
            dropped,
        )

    async def _read_to_end(self) -> None:
        """Fold the records up to the topic's end as it is now into the log, applying none."""
        consumer = self._consumer
        assert consumer is not None
        end = (await consumer.end_offsets([self.tp]))[self.tp]
        while self._position < end:
            await self._poll(apply=False)

    async def _poll(self, *, apply: bool = True, wake: asyncio.Event | None = None) -> None:
        consumer = self._consumer
        assert consumer is not None
        batch = await get_many(consumer, self.tp, self.poll_timeout_ms, wake)
        refused: list[tuple[int, str]] = []  # (offset, why) of the records the key does not sign
        try:
            for record in batch.get(self.tp, []):
                self._position = record.offset + 1
                # the headers only matter to a key (they hold its signature)
                headers = record.headers if self._hmac_key is not None else ()
                try:
                    decoded = self.log.apply(record.key, record.value, headers)
                except Unauthenticated as exc:
                    refused.append((record.offset, exc.kind))
                    continue
                if apply and decoded is not None and decoded.get("origin") != self.replica_id:
                    await self._apply(decoded)
        finally:
            if refused:
                self._unauthenticated(refused)

    def _unauthenticated(self, refused: list[tuple[int, str]]) -> None:
        """Say that records the key does not sign were ignored (an alarm, one per batch read):
        by offset and kind only, never their content (an attacker's text)."""
        offsets = [offset for offset, _ in refused]
        kinds = sorted({kind for _, kind in refused})
        log.error(
            "latch records not signed with kafka.alert_hmac_key ignored (forged, or written "
            "before the key was configured) count=%d kinds=%s first_offset=%d last_offset=%d "
            "total=%d",
            len(refused),
            ",".join(kinds),
            offsets[0],
            offsets[-1],
            self.log.unauthenticated,
        )
        self.engine.events.emit(
            make_event(
                EventType.ALARM,
                account="latch_topic",
                kind="latch_record_unauthenticated",
                error=f"{len(refused)} latch topic record(s) not signed with "
                "kafka.alert_hmac_key ignored: nothing latched, released or fired by them",
                reasons=kinds,
                offsets=offsets[:20],
                count=len(refused),
                total=self.log.unauthenticated,
            )
        )

    # -- applying: what the records read do to the engine (kafka/reconciler.py) --------------

    async def _apply(self, record: dict[str, Any]) -> None:
        await self.reconciler.apply(record)

    async def _reconcile(self) -> None:
        await self.reconciler.reconcile()

    async def _step_resets(self) -> None:
        await self.reconciler.announce_resets()

    # -- writing -----------------------------------------------------------------------------

    async def _publish(self) -> None:
        """Send the outbox in order, each record acknowledged before the next (acks=all)."""
        async with self._sending:
            while self._outbox:
                producer = self._producer
                if producer is None:
                    return  # torn down while waiting for the lock: the loop publishes later
                key, value = self._outbox[0]
                headers = [(ORIGIN_HEADER, self.replica_id.encode())]
                if self._hmac_key is not None and value is not None:
                    # signed as alerts are; a tombstone has no value, and no authority
                    headers.append((SIGNATURE_HEADER, signature(self._hmac_key, value).encode()))
                await producer.send_and_wait(
                    self.topic, value, key=key, partition=0, headers=headers
                )
                self._outbox.popleft()
                self.published += 1
                self._acknowledged(key, value)

    def _acknowledged(self, key: bytes, value: bytes | None) -> None:
        name = key.decode(errors="replace")
        if not name.startswith("latch/"):
            return
        trigger_id = name.removeprefix("latch/")
        if value is None:
            self._acked.pop(trigger_id, None)  # released: compaction drops it
            return
        remember(self._acked, trigger_id)
        self._settle_waits(trigger_id, None)
