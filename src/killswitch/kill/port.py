"""The engine as its inputs see it: one typed port for handlers, Kafka and replicas."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from killswitch.events import FanOut
from killswitch.kill.record import SubmitResult
from killswitch.model import Scope, Trigger


class EnginePort(Protocol):
    """What a source of triggers and resets may ask of the engine."""

    events: FanOut

    async def submit(self, trigger: Trigger) -> SubmitResult:
        """Journal the trigger, latch it (mode kill) and start its kill."""
        ...

    async def reset(
        self,
        *,
        actor: str,
        reason: str,
        origin: str = "local",
        only: Iterable[str] | None = None,
        latched_before_ms: int | None = None,
        reset_id: str | None = None,
    ) -> bool:
        """Release every latch, or exactly those named, and of those only the ones received
        at or before `latched_before_ms`; audited. A `reset_id` already journaled is a no-op."""
        ...

    def latches(self) -> dict[str, Scope]:
        """The latches held, by trigger id."""
        ...

    def trigger(self, trigger_id: str) -> Trigger | None:
        """The trigger of a latch held (or a kill still known)."""
        ...

    def accepted(self, trigger_id: str) -> bool:
        """Whether a trigger of this id was journaled (this life or an earlier one, as far
        back as the journal keeps ids)."""
        ...

    def reset_applied(self, reset_id: str) -> bool:
        """Whether a reset of this id was journaled (ids of resets are apart from triggers')."""
        ...

    def released_by_reset(self, trigger_id: str) -> bool:
        """Whether a journaled reset released this trigger's latch, and nothing latched it
        since (a seen id the journal shows neither latched nor released was lost to damage)."""
        ...

    def status(self) -> dict[str, object]:
        """What `killswitch status` shows."""
        ...


def latest_latch_ms(engine: EnginePort, among: Iterable[str] | None = None) -> int | None:
    """When the newest latch still held (of the trigger ids `among`, if given) was received
    (our clock), if any."""
    ids = engine.latches() if among is None else among
    times = [
        t.received_ms for t in (engine.trigger(i) for i in ids) if t is not None and t.received_ms
    ]
    return max(times, default=None)
