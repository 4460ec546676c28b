"""A reset: which latches it releases, its journal record, and the kills it ends or narrows.

Decided and journaled under the latch lock (a kill journaled meanwhile is never among the
released), applied in memory, then announced: the journal record, the log line and the event
name the same set. Once begun it runs to its end even if its caller is cancelled, and the
engine's stop waits for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from killswitch.events import EventRecord, EventType
from killswitch.journal import Journal, remember_newest
from killswitch.kill.latched import StreamCancels
from killswitch.kill.record import Kill, KillKind
from killswitch.model import Mode, Scope, Trigger

log = logging.getLogger(__name__)


class Resets:
    """Applies resets to the engine's latches (shared dicts, updated in place, never replaced)."""

    def __init__(
        self,
        journal: Journal,
        lock: asyncio.Lock,
        latches: dict[str, Scope],
        latched_triggers: dict[str, Trigger],
        running: set[Kill],
        streams: StreamCancels,
        *,
        relaunch: Callable[[list[Trigger]], None],
        emit: Callable[..., EventRecord],
    ) -> None:
        self._journal = journal
        self._lock = lock
        self._latches = latches
        self._latched_triggers = latched_triggers
        self._running = running
        self._streams = streams
        self._relaunch = relaunch
        self._emit = emit
        # Ids of resets applied (Kafka's), oldest first: apart from trigger ids.
        self.applied: OrderedDict[str, None] = OrderedDict()
        self.in_flight: set[asyncio.Future[bool]] = set()

    async def shielded(self, reset: Coroutine[Any, Any, bool]) -> bool:
        """Run `reset` (an `apply`) to its end whatever happens to the caller; stop waits."""
        task = asyncio.ensure_future(reset)
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)
        return await asyncio.shield(task)

    async def apply(
        self,
        actor: str,
        reason: str,
        origin: str,
        only: Iterable[str] | None,
        latched_before_ms: int | None,
        reset_id: str | None,
    ) -> bool:
        """See `Engine.reset`."""
        async with self._lock:
            if reset_id is not None and reset_id in self.applied:
                log.info("reset already applied reset_id=%s", reset_id)
                return False
            wanted = set(self._latches) if only is None else set(only) & set(self._latches)
            if latched_before_ms is not None:
                wanted = {t for t in wanted if self._received_ms(t) <= latched_before_ms}
            names = [t for t in self._latches if t in wanted]
            released = [{"trigger_id": t, "scope": self._latches[t].to_json()} for t in names]
            by_id = {} if reset_id is None else {"id": reset_id}
            await self._journal.append_async(
                "reset", actor=actor, reason=reason, origin=origin, released=released, **by_id
            )
            if reset_id is not None:
                remember_newest(self.applied, reset_id, self._journal.seen_limit)
            for trigger_id in names:
                del self._latches[trigger_id]
                self._latched_triggers.pop(trigger_id, None)
        self._end_released(wanted)
        if names:
            self._streams.released()
        log.warning("reset actor=%s origin=%s reason=%r released=%s", actor, origin, reason, names)
        self._emit(
            EventType.RESET, actor=actor, reason=reason, origin=origin, released=released, **by_id
        )
        return bool(names)

    def _end_released(self, wanted: set[str]) -> None:
        """End the kills whose every trigger was released (and sweeps no latch covers now);
        a joined kill that lost some of its triggers ends, and the rest go on at their own,
        narrower scopes."""
        for kill in list(self._running):
            if kill.mode is not Mode.KILL or kill.task is None:
                continue
            if kill.kind is KillKind.SWEEP:
                stale = not any(s.contains(kill.scope) for s in self._latches.values())
            else:
                ids = {t.id for t in kill.triggers}
                stale = bool(ids) and ids <= wanted
                if ids & wanted and not stale:
                    kill.narrowed = True
                    kill.task.cancel()
                    self._relaunch([t for t in kill.triggers if t.id not in wanted])
                    continue
            if stale:
                kill.released = True
                kill.task.cancel()

    def _received_ms(self, trigger_id: str) -> int:
        trigger = self._latched_triggers.get(trigger_id)
        return trigger.received_ms if trigger is not None else 0
