"""Rate limits as the venues enforce them: weight windows, 429 with Retry-After, 418 bans.

A `WeightWindow` is a fixed window (Binance counts weight per calendar minute, MEXC per 10 s,
BingX per second): `spend` adds a request's weight and says whether it fits. A `BanTracker`
escalates: a client that sends again while told to wait (after a 429) collects strikes, and at
`strikes_to_ban` gets a 418 ban that doubles each time, as Binance documents (2 min to 3 days).
With `grace_s` > 0, requests served that soon after the 429 was issued are refused without a
strike: they were in flight when it left ("failing to back off after receiving 429s" is what
Binance bans for). A venue's tracker adds its simulated latency to it (`SimVenue.ban_tracker`);
0 here counts every request served inside the wait.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(slots=True)
class Verdict:
    ok: bool
    used: int
    retry_after_s: int = 0
    banned: bool = False


@dataclass(slots=True)
class WeightWindow:
    limit: int
    window_s: float
    used: int = 0
    window_start: float = 0.0

    def _roll(self, now: float) -> None:
        start = math.floor(now / self.window_s) * self.window_s
        if start != self.window_start:
            self.window_start = start
            self.used = 0

    def spend(self, weight: int, now: float) -> Verdict:
        self._roll(now)
        if self.used + weight > self.limit:
            retry = max(1, math.ceil(self.window_start + self.window_s - now))
            return Verdict(ok=False, used=self.used, retry_after_s=retry)
        self.used += weight
        return Verdict(ok=True, used=self.used)

    def peek(self, now: float) -> int:
        self._roll(now)
        return self.used

    def remaining(self, now: float) -> int:
        return max(0, self.limit - self.peek(now))

    def reset_in_s(self, now: float) -> float:
        self._roll(now)
        return self.window_start + self.window_s - now


@dataclass(slots=True)
class BanTracker:
    """Per-client escalation from 429 to 418."""

    strikes_to_ban: int = 3
    first_ban_s: float = 120.0
    max_ban_s: float = 3 * 24 * 3600.0
    grace_s: float = 0.0  # after a 429, requests this soon are in flight: refused, no strike
    blocked_until: float = 0.0  # after a 429: the client should stay away until then
    strikes: int = 0
    banned_until: float = 0.0
    bans: int = 0
    last_limited: float = float("-inf")  # when the last 429 was issued

    def check(self, now: float) -> Verdict | None:
        """Before serving a request: a 418 if banned, a strike if it ignored a Retry-After."""
        if now < self.banned_until:
            return Verdict(
                ok=False, used=0, retry_after_s=math.ceil(self.banned_until - now), banned=True
            )
        if now < self.blocked_until:
            if now - self.last_limited < self.grace_s:
                return Verdict(
                    ok=False, used=0, retry_after_s=max(1, math.ceil(self.blocked_until - now))
                )
            self.strikes += 1
            if self.strikes >= self.strikes_to_ban:
                ban_s = min(self.max_ban_s, self.first_ban_s * (2**self.bans))
                self.bans += 1
                self.strikes = 0
                self.banned_until = now + ban_s
                return Verdict(ok=False, used=0, retry_after_s=math.ceil(ban_s), banned=True)
            return Verdict(
                ok=False, used=0, retry_after_s=max(1, math.ceil(self.blocked_until - now))
            )
        return None

    def limited(self, now: float, retry_after_s: int) -> None:
        """Record that a 429 told the client to wait `retry_after_s`."""
        self.blocked_until = max(self.blocked_until, now + retry_after_s)
        self.last_limited = now

    def clear(self) -> None:
        """Forget everything, escalation history included (admin `reset-limits`)."""
        self.blocked_until = 0.0
        self.strikes = 0
        self.banned_until = 0.0
        self.bans = 0
        self.last_limited = float("-inf")
