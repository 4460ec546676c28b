"""Waiting between tries: exponential backoff with full jitter, and a wait a stop cuts short."""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Exponential backoff with full jitter (a delay drawn from [0, cap]) that resets."""

    initial_s: float = 0.2
    max_s: float = 10.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        cap = min(self.max_s, self.initial_s * (2**self.attempt))
        self.attempt += 1
        return self.rng.uniform(0.0, cap)

    def reset(self) -> None:
        self.attempt = 0


async def wait_or_stop(stopping: asyncio.Event, delay_s: float) -> None:
    """Sleep `delay_s`, or less if `stopping` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay_s):
            await stopping.wait()
