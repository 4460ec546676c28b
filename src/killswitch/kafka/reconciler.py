"""What the latch topic's records do to this replica's engine (`LatchReconciler`): the cluster's
latch as the topic tells it (`kafka.latch_log.LatchLog`) made this engine's, for the replicator
(`kafka.replicas`), which reads and writes the topic.

A peer's latch is submitted as the same trigger (same id: the engine answers DUPLICATE if it has
it already); a reset releases only the latches it named that this replica holds; a latch held
here that the topic has never seen is queued for publishing. An engine call is retried until it
is journaled: a peer's latch is never dropped.

A cluster latch this replica's engine answers DUPLICATE to and does not hold, and that a reset
record in its journal released (`JournalState.released`), was released here by a reset the
topic lacks (made before a stop or a crash); once that stays so for `reset_settle_s` (an input
may be journaling the same trigger id right now: seen before it is held), a reset naming exactly
those ids is published. Never one it had not seen: a newer kill has a new id. Never one no
journaled reset released: a journal the disk damaged can keep a trigger id (its compacted `seen`
record) and lose the records that latched it; that kill was not reset, so nothing is announced
(the peers keep it latched), and an alarm (`latch_not_held`) says this replica does not hold it.

A peer's latch whose scope covers no account configured here (another shard's accounts, on a
shared latch topic) is not submitted: logged at info and counted in `refused_latches`. One
that covers some configured account is applied whole, as an alert would be.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol, TypeVar

from killswitch.backoff import until_journaled
from killswitch.events import EventType, make_event
from killswitch.journal import UNREADABLE_PREFIX
from killswitch.kafka.latch_log import LatchLog, remember
from killswitch.kill.port import EnginePort
from killswitch.kill.record import SubmitResult
from killswitch.model import AccountRef, Trigger

log = logging.getLogger("killswitch.kafka.replicas")  # logged under its name, as before

T = TypeVar("T")

REPLICA_ORIGIN = "replica:"  # the origin of a reset applied from a peer's record


def held_latches(engine: EnginePort) -> list[str]:
    """Return the trigger ids whose latches the engine holds."""
    return list(engine.latches())


class _Counts(Protocol):
    applied_latches: int
    applied_resets: int
    announced_resets: int  # resets made here that the topic lacked, published late
    refused_latches: int  # peer latches over no account configured here, by id


class LatchReconciler:
    """Apply the latch topic's records to the engine; announce late the resets made here."""

    def __init__(
        self,
        engine: EnginePort,
        log: LatchLog,
        counts: _Counts,
        stopping: asyncio.Event,
        *,
        replica_id: str,
        queue_latch: Callable[[dict[str, Any]], None],
        queue_reset: Callable[..., None],
        accounts: Iterable[AccountRef] | None,
        reset_settle_s: float,
        clock: Callable[[], float],
    ) -> None:
        self.engine = engine
        self.log = log
        self.counts = counts
        self._stopping = stopping  # the replicator's: an engine call is retried until it is set
        self.replica_id = replica_id
        self._queue_latch = queue_latch  # the replicator's outbox
        self._queue_reset = queue_reset
        # The accounts configured here (`app` gives them); None: no check (tests of other parts).
        self._accounts: list[AccountRef] | None = list(accounts) if accounts is not None else None
        self._refused: OrderedDict[str, None] = OrderedDict()
        self.reset_settle_s = reset_settle_s
        self._clock = clock
        self.applied: OrderedDict[str, None] = OrderedDict()  # ids submitted from the topic
        # Cluster latches released here (DUPLICATE, not held) that the topic still shows
        # latched: id -> when first noticed. Announced as a reset once settled.
        self.unannounced: dict[str, float] = {}
        # Cluster latches seen here, not held, and released by no reset journaled here (a
        # damaged journal): never announced as reset; alarmed once each.
        self._not_held: OrderedDict[str, None] = OrderedDict()

    async def apply(self, record: dict[str, Any]) -> None:
        """Apply a peer's record read from the topic (the log has folded it in already)."""
        if record["type"] == "latch":
            trigger = Trigger.from_json(record["trigger"])
            if not self._in_scope(trigger, record.get("origin")):
                return
            result = await self._submit_peer_latch(trigger)
            log.warning(
                "latch from replica applied origin=%s trigger_id=%s result=%s",
                record.get("origin"),
                trigger.id,
                result,
            )
        else:
            await self.reconcile(reset_record=record)

    async def reconcile(self, reset_record: dict[str, Any] | None = None) -> None:
        """Submit the cluster latches the engine lacks, queue the latches held here that the
        log has never seen, and release those a reset on the topic named (in the name of
        `reset_record`, else of the log's last reset)."""
        decision = self.log.decide(held_latches(self.engine))
        for trigger_json in decision.submit:
            trigger = Trigger.from_json(trigger_json)
            if self._in_scope(trigger, self.log.origins.get(trigger.id)):
                await self._submit_peer_latch(trigger)
        for trigger_id in decision.publish:
            if trigger_id.startswith(UNREADABLE_PREFIX):
                continue  # this replica's own disk trouble: its fail-safe latch stays local
            known = self._known_trigger(trigger_id)
            if known is not None:
                self._queue_latch(known)
        if decision.release:
            await self._engine_call("reset", self.reset_from_log(decision.release, reset_record))
            self.counts.applied_resets += 1

    def reset_from_log(
        self, release: list[str], reset_record: dict[str, Any] | None = None
    ) -> Callable[[], Awaitable[bool]]:
        """The engine call releasing exactly the latches the topic released: never one a
        reconcile just applied, nor one the resetting replica had not heard of."""
        record = reset_record or self.log.last_reset or {}
        origin = record.get("origin", "log")
        return functools.partial(
            self.engine.reset,
            actor=str(record.get("actor") or f"replica {origin}"),
            reason=str(record.get("reason") or "reset on another replica"),
            origin=f"{REPLICA_ORIGIN}{origin}",
            only=release,
        )

    def _in_scope(self, trigger: Trigger, origin: object) -> bool:
        """Whether a peer's latch covers an account configured here. A scope that names none
        is refused wherever it comes from (it would latch nothing here, fail its kill with
        `no_account_in_scope` and hold until reset): not submitted, logged once, counted."""
        accounts = self._accounts
        if accounts is None or any(trigger.scope.covers_account(a) for a in accounts):
            return True
        if trigger.id not in self._refused:
            remember(self._refused, trigger.id)
            self.counts.refused_latches += 1
            log.info(
                "latch from replica not applied: its scope covers no account configured here "
                "origin=%s trigger_id=%s scope=%s",
                origin,
                trigger.id,
                trigger.scope.to_json(),
            )
        return False

    async def _submit_peer_latch(self, trigger: Trigger) -> SubmitResult:
        """Submit a cluster latch to the engine as the same trigger."""
        remember(self.applied, trigger.id)
        result = await self._engine_call(trigger.id, functools.partial(self.engine.submit, trigger))
        self.counts.applied_latches += 1
        if result is SubmitResult.DUPLICATE and trigger.id not in self.engine.latches():
            # Seen here and not held: released by a reset here that the topic lacks (made
            # before a stop or a crash), or being journaled by another input right now.
            self.unannounced.setdefault(trigger.id, self._clock())
        return result

    async def announce_resets(self) -> None:
        """Announce the resets made here that the topic lacks, once settled: exactly the
        cluster latches still latched on the topic that the engine has seen and does not hold."""
        now = self._clock()
        due = [t for t, since in self.unannounced.items() if now - since >= self.reset_settle_s]
        released: list[str] = []
        for trigger_id in due:
            del self.unannounced[trigger_id]
            trigger_json = self.log.latched.get(trigger_id)
            if trigger_json is None or trigger_id in self.engine.latches():
                continue  # the topic shows it released by now, or it is latched here
            trigger = Trigger.from_json(trigger_json)
            # Ask again: a journal write that failed meanwhile forgot the id (ACCEPTED now).
            remember(self.applied, trigger_id)
            result = await self._engine_call(
                trigger_id, functools.partial(self.engine.submit, trigger)
            )
            if result is not SubmitResult.DUPLICATE or trigger_id in self.engine.latches():
                continue
            if self.engine.released_by_reset(trigger_id):
                released.append(trigger_id)
            else:
                self._unreleased_not_held(trigger_id)
        if not released:
            return
        log.warning(
            "reset made here announced late (it had not reached the latch topic) released=%s",
            released,
        )
        self._queue_reset(
            released,
            actor=f"replica {self.replica_id}",
            reason="reset on this replica before it could announce it (from its journal)",
            origin="journal",
        )
        self.counts.announced_resets += 1

    def _unreleased_not_held(self, trigger_id: str) -> None:
        """A cluster latch this replica has seen and does not hold, though no reset in its
        journal released it: the journal lost the records that latched it (damage). Nobody
        reset it, so no reset is announced (the peers keep it); the engine answers DUPLICATE
        to its id, so it is not latched here again either: an alarm says so, once per id."""
        if trigger_id in self._not_held:
            return
        remember(self._not_held, trigger_id)
        log.error(
            "cluster latch not held here and not announced as reset: no reset in this "
            "replica's journal released it (a damaged journal lost its records?) trigger_id=%s",
            trigger_id,
        )
        self.engine.events.emit(
            make_event(
                EventType.ALARM,
                account="latch_topic",
                kind="latch_not_held",
                error="a cluster latch seen here is not held and no reset journaled here "
                "released it: not announced as reset",
                trigger_ids=[trigger_id],
            )
        )

    async def _engine_call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Retry an engine call until it is journaled; a peer's latch is never dropped."""
        return await until_journaled(f"latch from the topic {what}", call, self._stopping)

    def _known_trigger(self, trigger_id: str) -> dict[str, Any] | None:
        trigger = self.engine.trigger(trigger_id)
        return trigger.to_json() if trigger is not None else None
