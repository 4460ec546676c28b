"""When a frame on a simulated websocket may leave: a push travels as its answer does."""

from __future__ import annotations

import asyncio
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

# When what a request's handler pushes may reach its client (monotonic): the venue acts on a
# request half a round trip after it came, and a push travels the other half back, as the
# answer does (review 90: sent at once, pushes came half a round trip before any real one can).
PUSH_DUE: ContextVar[float] = ContextVar("killswitch_sim_push_due", default=0.0)


@dataclass(frozen=True, slots=True)
class Due(Generic[T]):
    """A frame on a websocket's queue that leaves at `at` (monotonic), not before."""

    item: T
    at: float


def pushed(item: T) -> T | Due[T]:
    """`item` for a websocket's queue, held until the push due now (`PUSH_DUE`) if any."""
    at = PUSH_DUE.get()
    return Due(item, at) if at > time.monotonic() else item


async def when_due(item: T | Due[T]) -> T:
    """The frame of a queued item, once it may leave: the queue's order is the wire's, so a
    frame behind a held one waits for it, as on one TCP connection."""
    if not isinstance(item, Due):
        return item
    left = item.at - time.monotonic()
    if left > 0:
        await asyncio.sleep(left)
    return item.item


async def next_frame(queue: asyncio.Queue[T | Due[T] | None]) -> T | None:
    """The next frame of a websocket's queue, once it may leave; None where the queue ends."""
    queued = await queue.get()
    if queued is None:
        return None
    return await when_due(queued)
