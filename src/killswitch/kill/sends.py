"""One planned request of a kill, sent with its retries per the taxonomy, and its outcome
(the `outcome` event): what `Waves` sends each request of a wave through."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from killswitch.events import EventType
from killswitch.exchanges.base import (
    AlreadyGone,
    CancelAck,
    IpBanned,
    OutcomeUnknown,
    RateLimited,
    VenueError,
)
from killswitch.kill.calls import BatchPartial, send_request
from killswitch.kill.config import Account, EngineConfig, Runtime
from killswitch.kill.gate import Gate
from killswitch.kill.planner import CancelRequest
from killswitch.kill.record import AccountResult, Kill
from killswitch.kill.retries import retrying
from killswitch.model import AccountRef

log = logging.getLogger("killswitch.kill.waves")

T = TypeVar("T")

# After an unknown outcome: re-read the venue; what of the request is still to send (None:
# nothing), and how many orders it was meant to cancel are gone now.
Narrow = Callable[
    [Kill, Account, AccountResult, CancelRequest], Awaitable[tuple[CancelRequest | None, int]]
]


@dataclass(slots=True)
class Outcome:
    """How one planned request ended, after its retries."""

    result: str  # ok | gone | verified | <error kind>
    cancelled: int = 0
    attempts: int = 0
    error: VenueError | None = None
    sent_symbols: tuple[str, ...] = ()  # an error's: the symbols of the request it answered


class Sends:
    """Send planned requests, each with its retries, through its account's gate."""

    def __init__(
        self, config: EngineConfig, run: Runtime, gate: Callable[[Account], Gate], narrow: Narrow
    ) -> None:
        self.config = config
        self._run = run
        self._gate = gate
        self._narrow = narrow

    async def send(
        self,
        kill: Kill,
        account: Account,
        result: AccountResult,
        request: CancelRequest,
        on_first: Callable[[bool], None] | None = None,
    ) -> Outcome:
        """Send one planned request with retries; return its outcome (never raises VenueError).
        `on_first` is told how its first try ended (answered OK, or not)."""
        started = self._run.clock()
        attempts = 0
        current: CancelRequest | None = request
        reread = False
        cancelled = 0
        limited = 0
        verified = False

        async def once() -> CancelAck | None:
            nonlocal attempts, current, reread, cancelled, verified, limited
            attempts += 1
            if attempts > 1:
                result.retries += 1
            if reread:
                assert current is not None
                current, gone = await self._narrow(kill, account, result, current)
                cancelled += gone
                reread = False
                if current is None:
                    verified = True
                    return None
            assert current is not None
            result.requests += 1
            try:
                request_now = current
                ack = await self._gate(account).run(
                    lambda: send_request(account.exchange, request_now)
                )
            except OutcomeUnknown:
                reread = True
                raise
            except RateLimited as exc:
                result.rate_limited += 1
                limited += 1
                if isinstance(exc, IpBanned):
                    self.alarm(kill, account.ref, exc)
                raise
            except BatchPartial as partial:
                cancelled += self.count(result, partial.ack)
                current = partial.rest
                raise partial.error from None
            cancelled += self.count(result, ack)
            return ack

        async def tried() -> CancelAck | None:
            nonlocal on_first
            told, on_first = on_first, None
            if told is None:
                return await once()
            try:
                ack = await once()
            except AlreadyGone:
                told(True)  # done: nothing to retry
                raise
            except BaseException:
                told(False)
                raise
            told(True)
            return ack

        outcome: Outcome
        try:
            await self.retrying(kill, tried)
            outcome = Outcome("verified" if verified else "ok", cancelled, attempts)
        except AlreadyGone:
            outcome = Outcome("gone", cancelled, attempts)
        except VenueError as exc:
            # What was refused is what was sent: a re-read may have narrowed the request.
            sent = current.symbols if current is not None else request.symbols
            outcome = Outcome(exc.kind, cancelled, attempts, exc, sent)
        if outcome.result in ("ok", "gone", "verified") and kill.first_cancel_ms is None:
            kill.first_cancel_ms = (self._run.clock() - kill.started) * 1000
        if outcome.result in ("ok", "gone", "verified") and result.first_cancel_ms is None:
            result.first_cancel_ms = (self._run.clock() - kill.started) * 1000
        self._run.emit(
            EventType.OUTCOME,
            kill_id=kill.id,
            account=str(account.ref),
            venue=account.ref.venue,
            request=request.kind.value,
            symbols=list(request.symbols),
            ids=len(request.order_ids),
            result=outcome.result,
            cancelled=outcome.cancelled,
            attempts=outcome.attempts,
            rate_limited=limited,
            duration_ms=round((self._run.clock() - started) * 1000, 3),
            error=outcome.error.to_json() if outcome.error is not None else None,
        )
        return outcome

    def count(self, result: AccountResult, ack: CancelAck) -> int:
        fresh = [i for i in ack.cancelled if i not in result.cancelled]
        result.cancelled.update(ack.cancelled)
        result.lists_cancelled.update(ack.lists_cancelled)
        return len(fresh)

    async def retrying(self, kill: Kill, fn: Callable[[], Awaitable[T]]) -> T:
        return await retrying(kill, self.config, self._run, fn)

    def alarm(self, kill: Kill, ref: AccountRef, error: VenueError) -> None:
        log.error("kill account stopped kill_id=%s account=%s error=%s", kill.id, ref, error)
        self._run.emit(EventType.ALARM, kill_id=kill.id, account=str(ref), error=error.to_json())
