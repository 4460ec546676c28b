"""The retry policy of a kill's requests and reads, per the taxonomy in `exchanges/base.py`:
`AlreadyGone` and `Fatal` are never retried; `ClockSkew` retries at once (the connector
resyncs), `clock_skew_retries` times in a row; `RateLimited` waits its `retry_after_s`;
the rest back off with full jitter. Nothing is retried past the kill's deadline, nor into an
IP ban that outlasts it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from killswitch.exchanges.base import ClockSkew, IpBanned, RateLimited, VenueError
from killswitch.kill.config import EngineConfig, Runtime
from killswitch.kill.record import Kill

T = TypeVar("T")


async def retrying(
    kill: Kill, config: EngineConfig, run: Runtime, fn: Callable[[], Awaitable[T]]
) -> T:
    """Call `fn` until it succeeds, per the taxonomy, within the kill's deadline (read at each
    step: a held sweep moves it)."""
    skew_streak = 0

    def wait(state: RetryCallState) -> float:
        nonlocal skew_streak
        assert state.outcome is not None
        exc = state.outcome.exception()
        remaining = max(0.0, kill.deadline - run.clock())
        if isinstance(exc, ClockSkew) and skew_streak < config.clock_skew_retries:
            skew_streak += 1
            return 0.0
        if isinstance(exc, RateLimited):
            # The connector's budget blocks for the same period; sleeping it here as well
            # costs nothing (the two waits overlap) and holds even for a connector that
            # did not block.
            return min(exc.retry_after_s, remaining)
        cap = min(
            config.retry_max_s,
            config.retry_initial_s * 2 ** (state.attempt_number - 1),
        )
        return min(run.rng.uniform(0.0, cap), remaining)

    def stop(state: RetryCallState) -> bool:
        assert state.outcome is not None
        exc = state.outcome.exception()
        remaining = kill.deadline - run.clock()
        if remaining <= 0:
            return True
        return isinstance(exc, IpBanned) and exc.retry_after_s >= remaining

    policy = AsyncRetrying(
        sleep=run.sleep,
        stop=stop,
        wait=wait,
        retry=retry_if_exception(_retriable),
        reraise=True,
    )
    async for attempt in policy:
        with attempt:
            return await fn()
    raise AssertionError("unreachable: tenacity reraises the last error")


def _retriable(exc: BaseException) -> bool:
    return isinstance(exc, VenueError) and exc.retriable
