"""The one signed REST request path every venue connector sends through.

One request, the same steps on every venue::

    request(method, path, params, signed, weight, priority)
     |  charge    `Charges.acquire`: the venue's budgets (weight, per endpoint, per IP, locks)
     |  sign      params + recvWindow + timestamp (the server clock), by the venue's signer
     |  send      `RestTransport`: never sent -> Transient; sent, no answer -> OutcomeUnknown
     |  landed    `Charges.landed`: the answer is back (or none will come), whatever it is
     |  observe   `Charges.observe`: the used-weight headers the venue sends back
     |  decode    `Wire.decode`: the venue's envelope -> payload, code, message
     |  classify  `dialect.classify`, the one map from an answer to the error taxonomy
     |  settle    `Charges.settle`: block on RateLimited, count errors, reset backoffs
     +- a signed request answered `ClockSkew`: resync the clock once and send it again

What differs per venue is data and small functions: its `Wire` (dialect, key header, query
encoding, envelope, a wait its error text names), its signer, and its `Charges`. A success
whose body we cannot read is `OutcomeUnknown` on every venue: it may have been applied.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

import orjson
from websockets.exceptions import InvalidStatus

from killswitch.exchanges.base import (
    ClockSkew,
    IpBanned,
    OutcomeUnknown,
    RateLimited,
    RateLimits,
    Transient,
    VenueError,
)
from killswitch.exchanges.budget import Priority, RateBudget
from killswitch.exchanges.clock import ServerClock
from killswitch.exchanges.dialect import MAX_WAIT_S, Dialect, classify, header_wait
from killswitch.exchanges.http import RawResponse, RestTransport
from killswitch.exchanges.limits_file import WallClock, note_limits

log = logging.getLogger(__name__)

T = TypeVar("T")
Params = Sequence[tuple[str, str]]
Headers = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Answer:
    """A venue's answer with its envelope opened: the payload, or an error's code and message."""

    status: int | None
    data: Any = None
    code: int | str | None = None
    msg: str = ""
    readable: bool = True  # False: a body came that we cannot read


def load_json(body: bytes) -> Any:
    """The JSON in `body`; None for no body, or for one that is not JSON."""
    if not body:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def no_wait_in_text(msg: str, now_ms: float) -> float | None:
    """For a venue whose error texts name no wait."""
    return None


@dataclass(frozen=True, slots=True)
class Wire:
    """What one venue's requests and answers look like: data and pure functions, no state."""

    dialect: Dialect
    key_header: str
    query: Callable[[Params], str]  # the query string of an unsigned request
    decode: Callable[[int, bytes], Answer]  # (http status, body) -> the envelope opened
    # Seconds to wait that an error's text names, read on the venue's clock (BingX's epoch).
    wait_in_text: Callable[[str, float], float | None] = no_wait_in_text
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # How much longer than the caller waits an answer is still read, for the budgets alone
    # (`SignedRest.send`): where an answer the caller gave up on still counts at the venue
    # (BingX's error lock, review 83). 0: none is.
    late_answer_s: float = 0.0


class Charges(Protocol):
    """What a venue's budgets do around one request."""

    async def acquire(self, method: str, path: str, weight: int, priority: Priority) -> None:
        """Wait until the request fits every budget it counts against, and spend it."""

    def observe(self, headers: Headers) -> None:
        """Take in what the venue's headers say is used."""

    def landed(self, method: str, path: str, weight: int, *, answered: bool) -> None:
        """A request `acquire` paid for is answered, failed or given up (once per request);
        not `answered`: it was sent and no answer came, so it may still reach the venue."""

    def settle(
        self, path: str, answer: Answer, error: VenueError | None, headers: Headers | None
    ) -> None:
        """Take in how it ended: block on a throttle, count errors, reset backoffs."""


class FixedWindowCharges:
    """Weight budgets in fixed windows (Binance, MEXC; `RateBudget`): a request counts in
    every window it is in flight in; a throttle blocks them for its wait, a 418 as a ban."""

    def settle(
        self, path: str, answer: Answer, error: VenueError | None, headers: Headers | None
    ) -> None:
        if isinstance(error, RateLimited):
            # Block, so the next request waits; never sleep here as well.
            self.block(error.retry_after_s, banned=isinstance(error, IpBanned))

    def block(self, seconds: float, *, banned: bool) -> None:
        raise NotImplementedError


@dataclass(slots=True)
class WeightCharges(FixedWindowCharges):
    """One weight budget for the account (Binance): the venue's used-weight header corrects
    our count upwards."""

    budget: RateBudget
    used_header: str = ""

    async def acquire(self, method: str, path: str, weight: int, priority: Priority) -> None:
        await self.budget.acquire(weight, priority, in_flight=True)

    def landed(self, method: str, path: str, weight: int, *, answered: bool) -> None:
        self.budget.landed(weight)

    def observe(self, headers: Headers) -> None:
        used = headers.get(self.used_header) if self.used_header else None
        if used is not None and used.isdigit():
            self.budget.observe_used(int(used))

    def block(self, seconds: float, *, banned: bool) -> None:
        self.budget.block(seconds, banned=banned)


class EndpointCharges(FixedWindowCharges):
    """A weight budget per endpoint (MEXC: 500 per 10 s each [MX-DOC "LIMITS"]). A throttle on
    one blocks them all, those created later too: MEXC bans the IP of a client that keeps
    sending after a 429, whichever endpoint it sends to.

    A throttle that names no wait (MEXC's Retry-After is unconfirmed) waits the dialect's
    default the first time, and twice as long each time the venue refuses that endpoint again
    after a wait has run out, up to `throttle_max_s` (MEXC's FAQ: access returns about 10 min
    after the rate drops) or, for a 418, `MAX_WAIT_S`. Answers of requests that were already
    on their way during a wait are not repeats. A success on that endpoint starts it again
    from the default (one elsewhere, a clock read, says nothing of its limit)."""

    def __init__(
        self,
        limits: RateLimits,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        throttle_max_s: float = 600.0,
    ) -> None:
        self.limits = limits
        self.clock = clock
        self.sleep = sleep
        self.throttle_max_s = throttle_max_s
        self.budgets: dict[str, RateBudget] = {}  # "METHOD path" -> its budget
        self.blocked_until = 0.0  # `clock` time
        self.banned = False
        self.repeats: dict[str, int] = {}  # path -> throttles naming no wait since a success

    def settle(
        self, path: str, answer: Answer, error: VenueError | None, headers: Headers | None
    ) -> None:
        if error is None:
            self.repeats.pop(path, None)
            return
        if not isinstance(error, RateLimited):
            return
        if header_wait(headers) is None:
            repeats = self.repeats.get(path, 0)
            if repeats == 0 or self.clock() >= self.blocked_until:
                repeats += 1  # refused again after the last wait ran out
            self.repeats[path] = repeats
            banned = isinstance(error, IpBanned)
            cap = MAX_WAIT_S if banned else max(self.throttle_max_s, error.retry_after_s)
            error.retry_after_s = min(cap, error.retry_after_s * 2 ** min(30, repeats - 1))
        self.block(error.retry_after_s, banned=isinstance(error, IpBanned))

    def budget(self, endpoint: str) -> RateBudget:
        budget = self.budgets.get(endpoint)
        if budget is None:
            budget = self.budgets[endpoint] = RateBudget(
                self.limits, clock=self.clock, sleep=self.sleep
            )
            remaining = self.blocked_until - self.clock()
            if remaining > 0:
                budget.block(remaining, banned=self.banned)
        return budget

    async def acquire(self, method: str, path: str, weight: int, priority: Priority) -> None:
        await self.budget(f"{method} {path}").acquire(weight, priority, in_flight=True)

    def landed(self, method: str, path: str, weight: int, *, answered: bool) -> None:
        # one that got no answer may still reach the venue, until its recvWindow is past
        late_s = 0.0 if answered else UNANSWERED_LATE_S
        self.budget(f"{method} {path}").landed(weight, late_s=late_s)

    def observe(self, headers: Headers) -> None:
        pass  # MEXC sends no used-weight header

    def block(self, seconds: float, *, banned: bool) -> None:
        """Send nothing to any endpoint for `seconds`."""
        self.blocked_until = max(self.blocked_until, self.clock() + seconds)
        self.banned = self.banned or banned
        for budget in self.budgets.values():
            budget.block(seconds, banned=banned)
        note_limits(urgent=True)

    def limits_state(self, wall: WallClock) -> dict[str, Any] | None:
        """What MEXC still holds against our IP (`limits_file.Persistent`): each endpoint's charges
        still inside its window, the block or ban with its end, and the throttles in a row
        (a wait naming no end doubles while they go on)."""
        now = self.clock()
        state: dict[str, Any] = {}
        until = 0.0
        endpoints = {}
        for endpoint, budget in self.budgets.items():
            held = budget.limits_state(wall)
            if held is not None:
                endpoints[endpoint] = held
                until = max(until, float(held["until"]))
        if endpoints:
            state["endpoints"] = endpoints
        if self.blocked_until > now:
            until = max(until, wall.out(self.blocked_until, self.clock))
            state["blocked_until"] = wall.out(self.blocked_until, self.clock)
            state["banned"] = self.banned
        repeats_until = wall.out(self.blocked_until + self.throttle_max_s, self.clock)
        if self.repeats and repeats_until > wall.now:
            state["repeats"] = dict(self.repeats)
            until = max(until, repeats_until)
        if not state:
            return None
        state["until"] = until
        return state

    def seed_limits(self, state: Mapping[str, Any], wall: WallClock) -> None:
        """Take in a `limits_state` of the last life: a ban still in force holds every
        endpoint, those made later too."""
        blocked = state.get("blocked_until")
        if blocked is not None:
            ends = wall.ends(float(blocked), self.clock)
            if ends > self.clock():
                self.blocked_until = max(self.blocked_until, ends)
                self.banned = self.banned or bool(state.get("banned"))
        for endpoint, held in dict(state.get("endpoints", {})).items():
            self.budget(str(endpoint)).seed_limits(held, wall)
        for path, repeats in dict(state.get("repeats", {})).items():
            self.repeats[str(path)] = max(self.repeats.get(str(path), 0), int(repeats))

    def headroom(self) -> dict[str, object]:
        """The least headroom among the endpoints used so far (0..1), and how long every
        endpoint is blocked after a 429/418."""
        blocked = max(0.0, self.blocked_until - self.clock())
        shares = [b.used / b.limits.weight_per_window for b in self.budgets.values()]
        return {
            "headroom": max(0.0, 1.0 - max(shares, default=0.0)),
            "blocked_s": blocked,
            "banned": self.banned,
        }


# A request sent and never answered may still reach the venue: as late as its recvWindow lets
# the venue take it (5 s by default), counted as if it arrived then (review 50).
UNANSWERED_LATE_S = 5.0


class SignedRest:
    """One account's REST requests, by the steps of the module docstring."""

    def __init__(
        self,
        wire: Wire,
        transport: RestTransport,
        charges: Charges,
        *,
        account: str,
        api_key: str,
        sign: Callable[[Params], str],
        clock: ServerClock,
        recv_window_ms: int,
        resync: Callable[[], Awaitable[None]],
    ) -> None:
        self.wire = wire
        self.venue = wire.dialect.venue
        self.transport = transport
        self.charges = charges
        self.account = account
        self.clock = clock
        self.recv_window_ms = recv_window_ms
        self._sign = sign  # stamped params -> the query to send, signature included
        self._resync = resync
        # Told when a late answer says the clock was off (with the clock's sync count when the
        # request was signed): the connector resyncs in the background (`_late`).
        self.on_late_skew: Callable[[int], None] | None = None
        self._headers = {wire.key_header: api_key, **wire.headers}

    def __repr__(self) -> str:
        return f"SignedRest(venue={self.venue!r}, account={self.account!r})"

    async def request(
        self,
        method: str,
        path: str,
        params: Params = (),
        *,
        signed: bool = True,
        weight: int = 1,
        priority: Priority = Priority.KILL,
    ) -> Any:
        """Charge, sign, send and read one request; its payload, or its error raised.

        A signed request answered `ClockSkew` resyncs the clock once and goes again, paid for
        again. An unsigned one carries no timestamp to be skewed (and the clock's own
        server-time read is one)."""

        async def attempt() -> Any:
            await self.charges.acquire(method, path, weight, priority)
            return await self.send(method, path, params, signed=signed, weight=weight)

        return await self.resyncing(attempt) if signed else await attempt()

    async def resyncing(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run `attempt`; on `ClockSkew`, resync the clock once and run it again."""
        try:
            return await attempt()
        except ClockSkew as exc:
            log.warning(
                "clock skew venue=%s account=%s error=%s: resyncing", self.venue, self.account, exc
            )
            await self._resync()
            return await attempt()

    async def send(
        self, method: str, path: str, params: Params = (), *, signed: bool = True, weight: int = 1
    ) -> Any:
        """Sign and send one request its budgets have paid for (`weight`), and read the
        answer; the budgets hear when it has landed, whatever the outcome."""
        answered = True  # or never sent: nothing is on its way
        late = _Late()  # set when the caller gave up and the answer is still read (`_late`)
        try:
            if signed:
                stamp = [
                    ("recvWindow", str(self.recv_window_ms)),
                    ("timestamp", str(self.clock.now_ms())),
                ]
                query = self._sign([*params, *stamp])
            else:
                query = self.wire.query(params)
            answered = False
            if self.wire.late_answer_s > 0:
                raw = await self._read_late(method, path, weight, query, late)
            else:
                raw = await self._read(method, path, query)
            answered = True
        except Transient:
            answered = True
            raise
        finally:
            if not late.reading:
                self.charges.landed(method, path, weight, answered=answered)
        self.charges.observe(raw.headers)
        answer = self.wire.decode(raw.status, raw.body)
        return self.read(answer, f"{method} {path}", path, raw.headers)

    async def _read(self, method: str, path: str, query: str) -> RawResponse:
        """The answer, within the transport's timeout."""
        try:
            return await self.transport.request(method, path, query=query, headers=self._headers)
        except asyncio.CancelledError as exc:
            if _cancelling():
                raise
            raise self._pool_closed(method, path) from exc

    async def _read_late(
        self, method: str, path: str, weight: int, query: str, late: _Late
    ) -> RawResponse:
        """The answer, within the transport's timeout; past it (or when the caller is
        cancelled) the caller gets `OutcomeUnknown` and the answer is still read for up to
        `late_answer_s` more, and told to the budgets when it comes (`_late`): the venue may
        have taken the request and counted an error we would otherwise never see (review 83:
        answers 0.5 s later than our timeout earned BingX's error lock)."""
        total = self.transport.timeout.total or 5.0
        reading = asyncio.ensure_future(
            self.transport.request(
                method,
                path,
                query=query,
                headers=self._headers,
                timeout_s=total + self.wire.late_answer_s,
            )
        )
        syncs = self.clock.syncs  # as signed: a sync after it answers a late ClockSkew
        # `asyncio.wait`, not `wait_for`: 3.11's wait_for loses a cancel that comes with the
        # answer, and a keeper loop cancelled at stop then ran on (a stop that hung).
        try:
            done, _ = await asyncio.wait({reading}, timeout=total)
        except asyncio.CancelledError:
            late.reading = True
            reading.add_done_callback(lambda ended: self._late(method, path, weight, ended, syncs))
            raise
        if done:
            if reading.cancelled() and not _cancelling():
                raise self._pool_closed(method, path)
            return reading.result()
        late.reading = True
        reading.add_done_callback(lambda ended: self._late(method, path, weight, ended, syncs))
        raise OutcomeUnknown(
            "no answer: TimeoutError",
            venue=self.venue,
            account=self.account,
            endpoint=f"{method} {path}",
        )

    def _pool_closed(self, method: str, path: str) -> Transient:
        """A request whose wait for a connection the closing pool cancelled, though nobody
        cancelled its caller: it was never sent, and the caller hears a failure, not a
        cancel of its own (review 87)."""
        return Transient(
            "never sent: the connection pool closed",
            venue=self.venue,
            account=self.account,
            endpoint=f"{method} {path}",
        )

    def _late(
        self,
        method: str,
        path: str,
        weight: int,
        reading: asyncio.Future[RawResponse],
        syncs: int,
    ) -> None:
        """An answer the caller gave up on, or its failure: the budgets hear it as any other
        (its error, if any, counted); nothing else does. Either way it has landed: past the
        late read the venue takes the request no more, and a closed connection carries
        nothing later (review 85: held as unanswered on top, it counted for 15 s)."""
        raw = None if reading.cancelled() or reading.exception() is not None else reading.result()
        self.charges.landed(method, path, weight, answered=True)
        if raw is None:
            return
        self.charges.observe(raw.headers)
        try:
            self.read(self.wire.decode(raw.status, raw.body), f"{method} {path}", path, raw.headers)
        except VenueError as exc:
            log.info(
                "late answer counted venue=%s account=%s endpoint=%s %s error=%s",
                self.venue,
                self.account,
                method,
                path,
                exc,
            )
            if isinstance(exc, ClockSkew) and self.on_late_skew is not None:
                # as a caller would have: the next request must not earn another (review 84)
                self.on_late_skew(syncs)
        except Exception:  # a late answer must never end the daemon
            log.exception("late answer could not be read endpoint=%s %s", method, path)

    def connect_failed(self, exc: BaseException, endpoint: str) -> VenueError:
        """A websocket connect that failed, as the error to raise. A handshake the venue
        refused with an HTTP answer (a 429 for too many connection attempts, a 418 ban, a
        5xx) is classified like a REST answer, so its wait is told to the budgets shared
        behind the IP and the reconnect waits it out (review 42); anything else (refused,
        reset, timed out) is `Transient`."""
        if isinstance(exc, InvalidStatus):
            response = exc.response
            answer = self.wire.decode(response.status_code, bytes(response.body or b""))
            try:
                # websockets' Headers map names case-insensitively, as Retry-After is read
                self.read(answer, endpoint, _handshake(endpoint), response.headers)
            except VenueError as error:
                return error
        return Transient(
            f"{endpoint} connect failed: {type(exc).__name__}",
            venue=self.venue,
            account=self.account,
            endpoint=endpoint,
        )

    def connected(self, endpoint: str) -> None:
        """A websocket handshake succeeded: its refusals no longer count as repeats (a wait
        naming no end doubles only while the venue keeps refusing; review 47)."""
        self.charges.settle(_handshake(endpoint), Answer(101), None, None)

    def read(
        self,
        answer: Answer,
        endpoint: str,
        path: str = "",
        headers: Headers | None = None,
        *,
        retry_after_s: float | None = None,
    ) -> Any:
        """A success's payload; else its error, classified, told to the budgets and raised.

        `retry_after_s` is a wait the caller read elsewhere (Binance ws-api's `retryAfter`);
        without one, the wait the error's text names, if any."""
        if retry_after_s is None:
            retry_after_s = self.wire.wait_in_text(answer.msg, self.clock.now_ms())
        error = classify(
            self.wire.dialect,
            answer.status,
            answer.code,
            answer.msg,
            headers,
            retry_after_s=retry_after_s,
            now_ms=self.clock.now_ms(),
        )
        if error is not None:
            error.account = self.account
            error.endpoint = endpoint
        self.charges.settle(path, answer, error, headers)
        if error is None:
            if answer.readable:
                return answer.data
            # A success we cannot read: it may have been applied, so re-read before deciding.
            error = OutcomeUnknown(
                "unreadable answer",
                venue=self.venue,
                account=self.account,
                http_status=answer.status,
                code=answer.code,
                endpoint=endpoint,
            )
        elif isinstance(error, RateLimited):
            level = logging.ERROR if isinstance(error, IpBanned) else logging.WARNING
            log.log(
                level,
                "%s venue=%s account=%s endpoint=%s http=%s retry_after_s=%.1f msg=%r",
                "IP banned" if isinstance(error, IpBanned) else "rate limited",
                self.venue,
                self.account,
                endpoint,
                answer.status,
                error.retry_after_s,
                answer.msg[:120],
            )
        raise error


def _cancelling() -> bool:
    """True while the current task is being cancelled: a cancel meant for it, not one that
    aiohttp's closing pool gave a request waiting for a connection."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


def _handshake(endpoint: str) -> str:
    """The path a websocket's handshakes are counted under, apart from every REST path."""
    return f"handshake {endpoint}"


class _Late:
    """Whether the caller gave up on a request whose answer is still read (`_read_late`)."""

    reading = False
