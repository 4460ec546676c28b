"""BingX's side of the one signed REST path: its wire, and its budgets (`BingxCharges`).

Every request counts against the account's group budget and, where the API has them, its
per-UID and per-IP per-second budgets; an API one error short of the error-count lock is not
sent to. A 100410 holds its API until the epoch its text names, else for a short jittered
backoff that doubles while the venue keeps refusing. A 418 bans the IP: every account behind
it holds everything until the end its text names, else for the shortest documented ban,
doubling while the IP stays banned (`IpBan`), and nothing is sent meanwhile."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from killswitch.exchanges.base import (
    AllowanceHeld,
    IpBanned,
    RateLimited,
    VenueError,
)
from killswitch.exchanges.bingx.errors import epoch_in, text_wait
from killswitch.exchanges.bingx.parse import rest_answer
from killswitch.exchanges.bingx.venue import (
    BACKOFF_FLAT_REPEATS,
    BACKOFF_INITIAL_S,
    BACKOFF_MAX_S,
    BAN_MAX_S,
    BAN_MIN_S,
    BUDGET_MARGIN_S,
    ENDPOINT_RPS,
    EPOCH_MARGIN_S,
    ERROR_ANSWER_PATHS,
    ERROR_LOCK_COUNT,
    ERROR_LOCK_WINDOW_S,
    GROUP_LIMITS,
    IP_BACKGROUND_ONLY,
    IP_GROUP1_LIMIT,
    IP_GROUP1_PATHS,
    IP_GROUP1_WINDOW_S,
    IP_RPS,
    UNANSWERED_HOLD_S,
)
from killswitch.exchanges.budget import ErrorCounter, Priority, RateBudget, shared_item
from killswitch.exchanges.clock import ServerClock
from killswitch.exchanges.dialect import BINGX, header_wait
from killswitch.exchanges.limits_file import WallClock, note_limits, persisted
from killswitch.exchanges.rest import Answer, Headers, Params, SignedRest, Wire
from killswitch.exchanges.signing import bingx_query, bingx_signed_query
from killswitch.exchanges.sliding_budget import SlidingBudget, acquire_all, shared_budget

WIRE = Wire(
    BINGX,
    key_header="X-BX-APIKEY",
    query=bingx_query,
    decode=rest_answer,
    wait_in_text=text_wait,
    # An answer we gave up on still counts toward the error lock: read it as long as the venue
    # may still take the request (its recvWindow), for the error counts (review 83).
    late_answer_s=UNANSWERED_HOLD_S,
)


class Host(Protocol):
    """What every BingX function outside the class reads of the connector (`BingxExchange`)."""

    venue: str
    account: str


class RestHost(Host, Protocol):
    """What the functions that send requests read of the connector."""

    clock: ServerClock
    rest: SignedRest


def signer(secret: str) -> Callable[[Params], str]:
    """Sign params sorted by name, as the current docs sign them."""
    return lambda params: bingx_signed_query(secret, sorted(params))


@dataclass(slots=True)
class IpBan:
    """A 418 on our IP, shared by every account behind it: until when (budget clock), and how
    many bans in a row named no end (each doubles the next guess; a success starts again)."""

    until: float = 0.0
    guesses: int = 0
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    def remaining(self, now: float) -> float:
        return max(0.0, self.until - now)

    def limits_state(self, wall: WallClock) -> dict[str, Any] | None:
        """The ban while in force (`limits_file.Persistent`): a restart never sends into it."""
        if self.until <= self.clock():
            return None
        return {"until": wall.out(self.until, self.clock), "guesses": self.guesses}

    def seed_limits(self, state: Mapping[str, Any], wall: WallClock) -> None:
        self.until = max(self.until, wall.ends(float(state["until"]), self.clock))
        self.guesses = max(self.guesses, int(state.get("guesses", 0)))


class BingxCharges:
    """The budgets of one BingX account around each request (the module docstring)."""

    def __init__(
        self,
        account: str,
        venue_clock: ServerClock,
        ip_scope: str,
        *,
        budget_clock: Callable[[], float] | None,
        budget_sleep: Callable[[float], Awaitable[None]] | None,
        rng: random.Random,
    ) -> None:
        self.account = account
        self.clock = venue_clock
        # Fixed 10 s windows follow the venue's clock; the per-second budgets slide, so their
        # alignment to any clock does not matter.
        group_clock = budget_clock or (lambda: venue_clock.now_ms() / 1000.0)
        clock = budget_clock or time.monotonic
        sleep = budget_sleep or asyncio.sleep
        # What the venue holds against this account (per UID) outlives a restart, as what it
        # holds against our IP does (`limits_file.persist_to`), keyed by the IP's scope.
        self.group_budget = persisted(
            ip_scope,
            f"account {account} group",
            RateBudget(GROUP_LIMITS, clock=group_clock, sleep=sleep),
        )
        self.budgets: dict[str, SlidingBudget] = {
            path: persisted(
                ip_scope,
                f"account {account} uid {path}",
                SlidingBudget(
                    rps, margin_s=BUDGET_MARGIN_S, name=f"uid {path}", clock=clock, sleep=sleep
                ),
            )
            for path, rps in ENDPOINT_RPS.items()
        }
        # The per-IP budgets are shared by every connector to the same host in the process
        # (the connector holds the scope: `VenueConnector.ip_scope`).
        self.ip_budgets: dict[str, SlidingBudget] = {
            path: shared_budget(
                ip_scope,
                f"ip {path}",
                rps,
                margin_s=BUDGET_MARGIN_S,
                background_share=1.0 if path in IP_BACKGROUND_ONLY else 0.5,
                clock=clock,
                sleep=sleep,
            )
            for path, rps in IP_RPS.items()
        }
        market = shared_budget(
            ip_scope,
            "ip group 1",
            IP_GROUP1_LIMIT,
            IP_GROUP1_WINDOW_S,
            margin_s=BUDGET_MARGIN_S,
            # Nearly all of it is background (clock syncs, checks); a kill's resync keeps room.
            background_share=0.9,
            clock=clock,
            sleep=sleep,
        )
        # The market group counts its paths together; a path with its own per-IP figure
        # (`common/symbols`: 1/s) counts in both.
        self.market = market
        for path in IP_GROUP1_PATHS:
            self.ip_budgets.setdefault(path, market)
        # The error lock's count may be the account's or the IP's (§3.5 names both dimensions
        # for 100410): each error counts in both, and the larger holds.
        ip_errors = shared_item(
            ip_scope,
            "bingx errors",
            lambda: ErrorCounter(ERROR_LOCK_COUNT, ERROR_LOCK_WINDOW_S, clock=clock),
        )
        self.errors = persisted(
            ip_scope,
            f"account {account} errors",
            ErrorCounter(ERROR_LOCK_COUNT, ERROR_LOCK_WINDOW_S, clock=clock, shared=ip_errors),
        )
        self.rng = rng
        self.backoffs: dict[str, int] = {}  # path -> 100410s without an epoch in a row
        self.budget_clock = clock
        self.ban: IpBan = shared_item(ip_scope, "bingx ip ban", lambda: IpBan(clock=clock))

    def path_budgets(self, path: str) -> list[SlidingBudget]:
        budgets = [b for b in (self.budgets.get(path), self.ip_budgets.get(path)) if b is not None]
        if path in IP_GROUP1_PATHS and self.market not in budgets:
            budgets.append(self.market)
        return budgets

    def banned_for(self) -> float:
        """Seconds our IP is still banned (0 when it is not)."""
        return self.ban.remaining(self.budget_clock())

    async def acquire(self, method: str, path: str, weight: int, priority: Priority) -> None:
        endpoint = f"{method} {path}"
        while True:
            banned_s = self.banned_for()
            if banned_s > 0:
                # "Stop requests and wait": nothing goes to a banned IP, from any account.
                raise self._held(IpBanned, "IP banned: holding every request", banned_s, endpoint)
            hold_s = self.errors.hold_s(path, priority)
            if hold_s <= 0:
                break
            if not self.errors.held_by_pending(path, priority):
                # One more error would lock this API for minutes (or, for a background
                # request, spend what kills need): do not send what may earn it.
                msg = "error-count lock ahead: holding this API"
                raise self._held(AllowanceHeld, msg, hold_s, endpoint)
            # Only requests on their way hold it: wait for one to land and ask again (review
            # 80: a capped read's 30 per-symbol reads, successes all, failed held).
            await self.errors.one_ends()
        # On its way from here: it counts as the error it may earn until it lands (review 78:
        # a wave's requests all passed the check above before any was answered).
        self._begin(path)
        try:
            await self.group_budget.acquire(1, priority, in_flight=True)
        except BaseException:
            self._end(path)  # never sent
            raise
        budgets = self.path_budgets(path)
        if budgets:
            try:
                await acquire_all(budgets, priority, self.account)
            except BaseException:
                self.group_budget.landed(1)  # never sent
                self._end(path)
                raise

    def _held(self, kind: type[RateLimited], msg: str, wait_s: float, endpoint: str) -> RateLimited:
        """A request we hold ourselves (nothing sent), as the error its caller waits out."""
        return kind(
            msg,
            retry_after_s=wait_s,
            venue=WIRE.dialect.venue,
            account=self.account,
            endpoint=endpoint,
        )

    def _begin(self, path: str) -> None:
        if path in ERROR_ANSWER_PATHS:
            self.errors.begin(path)

    def _end(self, path: str) -> None:
        if path in ERROR_ANSWER_PATHS:
            self.errors.end(path)

    def observe(self, headers: Headers) -> None:
        """No header is read: the sliding budgets keep their own count."""

    def landed(self, method: str, path: str, weight: int, *, answered: bool) -> None:
        """The per-second budgets count the request until a span after its answer; one
        that got none, as if it arrived `UNANSWERED_HOLD_S` later."""
        self.group_budget.landed(1)
        if answered:
            # Its error, if any, is recorded by `settle` before the loop runs anything else.
            self._end(path)
        elif path in ERROR_ANSWER_PATHS:
            # Given up without an answer, it may still reach the venue and earn an error there
            # (review 80): it counts as on its way while it may arrive. Never as an error: a
            # network blip would then hold kills for minutes (review 81).
            asyncio.get_running_loop().call_later(UNANSWERED_HOLD_S, self._end, path)
        late_s = 0.0 if answered else UNANSWERED_HOLD_S
        for budget in self.path_budgets(path):
            budget.landed(late_s)

    def settle(
        self, path: str, answer: Answer, error: VenueError | None, headers: Headers | None
    ) -> None:
        if error is None:
            self.backoffs.pop(path, None)
            self.ban.guesses = 0  # the IP is served: a later ban is guessed afresh
        elif isinstance(error, IpBanned):
            self.banned(error, answer.msg, headers)
        elif isinstance(error, RateLimited):
            self.throttled(error, path, answer.msg, header_wait(headers))
        elif answer.code not in (None, 0):
            # Every error code, "No data" on an empty read too: the venue's lock names codes
            # ("over 20 error code:... requests"), and none is documented as exempt.
            self.errors.record(path)

    def banned(self, error: IpBanned, msg: str, headers: Headers | None) -> None:
        """A 418: the IP is banned, for every account behind it. Until the end its text names;
        else for `BAN_MIN_S`, doubled for each ban in a row that named none (the venue's
        bans last minutes to tens of minutes), up to `BAN_MAX_S`."""
        now = self.budget_clock()
        if epoch_in(msg) is None and header_wait(headers) is None:
            if now >= self.ban.until:
                self.ban.guesses += 1  # banned again after the last guess ran out
            self.ban.guesses = max(1, self.ban.guesses)
            doublings = min(30, self.ban.guesses - 1)
            error.retry_after_s = min(BAN_MAX_S, BAN_MIN_S * 2**doublings)
        elif header_wait(headers) is None:
            error.retry_after_s += self.epoch_margin_s()
        self.ban.until = max(self.ban.until, now + error.retry_after_s)
        note_limits(urgent=True)
        self.group_budget.block(error.retry_after_s, banned=True)
        for budget in {*self.budgets.values(), *self.ip_budgets.values()}:
            budget.block(error.retry_after_s)

    def epoch_margin_s(self) -> float:
        """How long after an epoch the venue named to wait: our clock's error is up to its
        round trip, never less than none (review 87: a wall step gave a negative one)."""
        return EPOCH_MARGIN_S + max(0.0, self.clock.last_rtt_ms) / 1000.0

    def throttled(self, error: RateLimited, path: str, msg: str, header: float | None) -> None:
        """A 100410 (or 429/403): hold this API, on our UID budget and the shared IP one,
        until the epoch its text names, else for a short jittered backoff that doubles while
        the venue keeps refusing. Which dimension refused is not said, so both wait."""
        if epoch_in(msg) is None and header is None:
            repeats = self.backoffs.get(path, 0)
            self.backoffs[path] = repeats + 1
            doublings = max(0, repeats - BACKOFF_FLAT_REPEATS + 1)
            base = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2**doublings)
            error.retry_after_s = base * (1.0 + 0.25 * self.rng.random())
        elif header is None:
            # An epoch read on our estimate of the venue's clock: leave room for its error.
            error.retry_after_s += self.epoch_margin_s()
        budgets = self.path_budgets(path)
        for budget in budgets:
            budget.block(error.retry_after_s)
        if not budgets:
            self.group_budget.block(error.retry_after_s)
