"""Is each account ready to be killed on? The checks `killswitch preflight` prints and the daemon
repeats at start and every few minutes (`readiness.service`).

Per account, online, every account in parallel:

    key     a signed read is accepted (the venue's account read where the connector has one,
            `account_permissions()`, else a signed open-orders read)
    trade   the key may trade and cancel (Binance `canTrade` and permissions, MEXC `canTrade`,
            BingX's API-key permission read); "-" where the connector cannot read it
    clock   the server-time offset is inside `recv_window_ms`
    stream  the user-data stream subscribes (preflight); in the daemon: the supervised stream is
            live, or has been down for less than `stream_grace_s`
    rate    the rate-limit headroom now; not ready while the venue has us throttled or banned
    dms     BingX with `dead_mans_switch_s`: the dead-man's switch answers (preflight only)

The reason an account is not ready is the first failing check, in the venue's own words
("key rejected: 700002 Signature for this request is not valid.", "IP banned until 12:03:04Z",
"clock skew 1.4 s > recvWindow 1.0 s", "stream down 3 min: ..."). Secrets never appear in a
reason: venues do not echo them, and `redact` masks any configured secret value anyway.

An account that is not ready stays configured: the engine still acts on it (a kill tries every
account in scope), its stream keeps reconnecting, and the next round checks it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from killswitch.exchanges.base import (
    ClockSkew,
    DeadMansSwitchState,
    Exchange,
    Fatal,
    IpBanned,
    RateLimited,
    VenueError,
)
from killswitch.exchanges.sliding_budget import SlidingBudget
from killswitch.model import AccountRef, StreamSubscribed

if TYPE_CHECKING:
    from killswitch.settings import AccountSettings

CHECKS = ("key", "trade", "clock", "stream", "rate", "dms")
DEFAULT_TIMEOUT_S = 15.0  # one account's whole round
SLOW_TIME_READ_MS = 1000.0  # a server-time read slower than this cannot judge the clock


@dataclass(frozen=True, slots=True)
class Check:
    """One check's answer: `ok` None when it did not apply or could not run."""

    name: str
    ok: bool | None
    detail: str

    def cell(self) -> str:
        if self.ok is None:
            return "-"
        return "ok" if self.ok else "FAIL"

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass(slots=True)
class AccountReadiness:
    """Every check of one account, in `CHECKS` order."""

    venue: str
    account: str
    checks: list[Check] = field(default_factory=list)
    checked_ms: int = 0

    @property
    def label(self) -> str:
        return f"{self.venue}/{self.account}"

    @property
    def ready(self) -> bool:
        return bool(self.checks) and all(c.ok is not False for c in self.checks)

    @property
    def reason(self) -> str | None:
        """The first failing check's detail; None when ready."""
        for check in self.checks:
            if check.ok is False:
                return check.detail
        return None if self.checks else "not checked yet"

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def to_json(self) -> dict[str, object]:
        return {
            "venue": self.venue,
            "account": self.account,
            "ready": self.ready,
            "reason": self.reason or "",
            "checked_ms": self.checked_ms,
            "checks": [c.to_json() for c in self.checks],
        }


# -- reasons --------------------------------------------------------------------------------------


def utc_clock(epoch_s: float) -> str:
    """`12:03:04Z`: when a ban ends, as an operator reads it next to `date -u`."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%H:%M:%SZ")


def duration(seconds: float) -> str:
    """`45 s`, `3 min`, `2 h 5 min`."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


def _venue_words(exc: VenueError) -> str:
    code = "" if exc.code is None else f"{exc.code} "
    return f"{code}{exc.msg}".strip() or exc.kind


def reason_for(exc: BaseException, *, now_s: float | None = None) -> str:
    """What an exception from a check says about the account, in the venue's own words."""
    now = time.time() if now_s is None else now_s
    if isinstance(exc, IpBanned):
        return f"IP banned until {utc_clock(now + exc.retry_after_s)}"
    if isinstance(exc, RateLimited):
        return f"rate limited for {exc.retry_after_s:.0f} s: {_venue_words(exc)}"
    if isinstance(exc, Fatal):
        return f"key rejected: {_venue_words(exc)}"
    if isinstance(exc, ClockSkew):
        return f"clock skew: {_venue_words(exc)}"
    if isinstance(exc, VenueError):
        return f"venue not answering: {exc.kind}: {_venue_words(exc)}"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return f"check failed: {type(exc).__name__}: {exc}"[:300]


def redact(text: str, secrets: Iterable[str]) -> str:
    """Mask every secret value in `text` (a belt to the venues' braces)."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


# -- the checks ------------------------------------------------------------------------------------


async def check_key(exchange: Exchange, symbols: Sequence[str]) -> tuple[Check, Check]:
    """The key check (a signed read) and the trade check (permissions, where readable)."""
    reader = getattr(exchange, "account_permissions", None)
    try:
        if reader is None:
            await exchange.snapshot(list(symbols[:1]) or None)
            return (
                Check("key", True, "signed read accepted"),
                Check("trade", None, "the connector cannot read the key's permissions"),
            )
        perms: dict[str, Any] = await reader()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure is a reason, reported
        return Check("key", False, reason_for(exc)), Check("trade", None, "not checked")
    return Check("key", True, "signed account read accepted"), _trade_check(perms)


def _trade_check(perms: dict[str, Any]) -> Check:
    listed = ", ".join(str(p) for p in perms.get("permissions") or ()) or "-"
    if perms.get("can_trade") is False:
        why = str(perms.get("detail") or "canTrade=false")
        return Check("trade", False, f"key may not trade: {why} (permissions: {listed})")
    if perms.get("can_trade") is None:
        return Check("trade", None, f"the venue did not say (permissions: {listed})")
    return Check("trade", True, f"may trade and cancel (permissions: {listed})")


async def check_clock(exchange: Exchange, recv_window_ms: int) -> Check:
    """Server time against ours, measured once: |offset| must stay inside recvWindow."""
    try:
        sent = time.time()
        server_ms = await exchange.server_time_ms()
        back = time.time()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001
        return Check("clock", False, reason_for(exc))
    rtt_ms = (back - sent) * 1000
    offset_ms = server_ms - (sent + back) / 2 * 1000
    skew_ms = abs(offset_ms) + rtt_ms / 2
    window = f"recvWindow {recv_window_ms / 1000:.1f} s"
    if rtt_ms > SLOW_TIME_READ_MS and abs(offset_ms) - rtt_ms / 2 <= recv_window_ms:
        # The read waited (a rate budget shared by many accounts, a slow network): the offset
        # is known only to within half that wait, so the check says unknown, not skewed.
        took = f"the server-time read took {rtt_ms:.0f} ms"
        return Check("clock", None, f"not measured: {took} (offset {offset_ms:+.0f} ms)")
    if skew_ms > recv_window_ms:
        return Check("clock", False, f"clock skew {skew_ms / 1000:.1f} s > {window}")
    return Check("clock", True, f"offset {offset_ms:+.0f} ms, rtt {rtt_ms:.0f} ms, {window}")


async def check_stream(exchange: Exchange, timeout_s: float) -> Check:
    """Open one user-data stream, wait for the venue's subscription, close it."""
    stream = exchange.user_stream()
    try:
        async with asyncio.timeout(timeout_s):
            first = await anext(stream)
    except asyncio.CancelledError:
        raise
    except StopAsyncIteration:
        return Check("stream", False, "stream down: ended before it subscribed")
    except Exception as exc:  # noqa: BLE001
        return Check("stream", False, f"stream down: {reason_for(exc)}")
    finally:
        await _close(stream)
    if isinstance(first, StreamSubscribed):
        return Check("stream", True, "subscribed")
    return Check("stream", False, f"stream down: first message was {type(first).__name__}")


async def _close(stream: AsyncIterator[Any]) -> None:
    closer = getattr(stream, "aclose", None)
    if closer is not None:
        with contextlib.suppress(Exception):
            await closer()


def headroom(exchange: Exchange) -> tuple[float | None, float, bool]:
    """(headroom 0..1 or None if unknown, seconds the venue has us blocked, banned)."""
    reader = getattr(exchange, "rate_headroom", None)
    if reader is not None:
        info: dict[str, Any] = reader()
        return (
            info.get("headroom"),
            float(info.get("blocked_s") or 0.0),
            bool(info.get("banned")),
        )
    sliding = [
        b
        for name in ("budgets", "ip_budgets")
        for b in (getattr(exchange, name, None) or {}).values()
        if isinstance(b, SlidingBudget)
    ]
    if sliding:  # per-second venue caps (BingX): the busiest one, and any lock it is under
        now = sliding[0].clock()
        blocked = max(0.0, *(b.blocked_until - now for b in sliding))
        used = max(b.in_window() / b.limit for b in sliding)
        return max(0.0, 1.0 - used), blocked, False
    budget = getattr(exchange, "budget", None)
    limits = getattr(budget, "limits", None)
    if budget is None or limits is None:
        return None, 0.0, False
    now = budget.clock()
    blocked = max(0.0, float(budget.blocked_until) - now)
    left = 1.0 - float(budget.used) / float(limits.weight_per_window)
    return max(0.0, left), blocked, bool(budget.banned) and blocked > 0


def check_rate(exchange: Exchange) -> Check:
    """Not ready while the venue has us throttled or banned; else report the headroom."""
    left, blocked_s, banned = headroom(exchange)
    if blocked_s > 0:
        if banned:
            return Check("rate", False, f"IP banned until {utc_clock(time.time() + blocked_s)}")
        return Check("rate", False, f"rate limited for {blocked_s:.0f} s")
    if left is None:
        return Check("rate", None, "headroom unknown")
    return Check("rate", True, f"headroom {left:.0%}")


async def check_dms(exchange: Exchange, timeout_s: int) -> Check:
    """BingX: arm the cancel-all-after timer for `timeout_s`, then close it again.

    Only preflight runs this, and only where no daemon answers on the control socket (the
    daemon keeps its own timer armed; closing it would leave the account unprotected)."""
    armed: DeadMansSwitchState | None = None
    refused: Exception | None = None
    try:
        armed = await exchange.arm_dead_mans_switch(timeout_s)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001
        refused = exc
    # Closed again whatever the arm answered: an answer we could not read may have armed it
    # (review 43: BingX's 2026 answer has no status), and closing a closed timer costs nothing.
    try:
        await exchange.disarm_dead_mans_switch()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001
        return Check(
            "dms",
            False,
            f"dead-man's switch {'armed' if refused is None else 'may be armed'} but not closed "
            f"again ({reason_for(exc)}): the venue cancels every order in {timeout_s} s unless "
            "the daemon pushes it out",
        )
    if armed is None:
        assert refused is not None
        return Check("dms", False, f"dead-man's switch: {reason_for(refused)}")
    if not armed.active:
        return Check("dms", False, "dead-man's switch: the venue did not arm it")
    return Check("dms", True, f"answers (armed for {timeout_s} s, then closed)")


@dataclass(frozen=True, slots=True)
class Target:
    """One account to check: its connector and the settings the checks need."""

    ref: AccountRef
    exchange: Exchange
    recv_window_ms: int = 5000
    symbols: tuple[str, ...] = ()
    dead_mans_switch_s: int = 0

    @classmethod
    def of(cls, account: AccountSettings, exchange: Exchange) -> Target:
        """The target of a configured account, checked through `exchange`."""
        return cls(
            AccountRef(account.venue, account.name),
            exchange,
            recv_window_ms=account.recv_window_ms,
            symbols=tuple(account.symbols),
            dead_mans_switch_s=account.dead_mans_switch_s,
        )


async def check_account(
    target: Target,
    *,
    stream: bool = True,
    dms: bool = True,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> AccountReadiness:
    """Run every check on one (started) account; never raises but on cancellation."""
    ex = target.exchange
    result = AccountReadiness(target.ref.venue, target.ref.account)
    try:
        async with asyncio.timeout(timeout_s):
            (key, trade), clock = await asyncio.gather(
                check_key(ex, target.symbols), check_clock(ex, target.recv_window_ms)
            )
            result.checks += [key, trade, clock]
            if not stream:
                pass
            elif key.ok:
                result.checks.append(await check_stream(ex, timeout_s))
            else:
                result.checks.append(Check("stream", None, "not checked: the key was refused"))
            result.checks.append(check_rate(ex))
            wants_dms = dms and target.dead_mans_switch_s and ex.capabilities.dead_mans_switch
            if wants_dms and key.ok:
                result.checks.append(await check_dms(ex, target.dead_mans_switch_s))
    except TimeoutError:
        done = {c.name for c in result.checks}
        missing = [n for n in CHECKS if n not in done][:1] or ["checks"]
        result.checks.append(Check(missing[0], False, f"no answer within {timeout_s:.0f} s"))
    result.checked_ms = int(time.time() * 1000)
    return result
