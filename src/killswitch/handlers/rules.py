"""Local risk rules on each account's user-data stream; a rule that trips fires a trigger.

- `fill_notional`: quote notional filled (TRADE events: last_qty x last_price) within a rolling
  `window_s` above `limit`.
- `order_rate`: new orders per second, averaged over a rolling `window_s`, above `limit`.
- `stream_down`: the stream not live for `limit` seconds (down, reconnecting, resyncing), or,
  with `silent_s`, live but without a single event for `silent_s` seconds.

Each rule fires once per episode and re-arms when its condition clears (the window drops back
under the limit, the stream is live again, an event arrives). Windows run on the daemon's
monotonic clock at arrival, so a venue clock that jumps cannot hide a burst.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence

from killswitch.events import EventRecord, EventType, make_event
from killswitch.handlers.heartbeat import Submit, TriggerLoop
from killswitch.model import AccountRef, ExecType, ListEvent, Mode, OrderEvent, Scope, Trigger
from killswitch.settings import RuleSettings
from killswitch.streams.supervisor import StreamState

log = logging.getLogger(__name__)


class Rule:
    """One configured rule for one account: observes events and states, says when it trips."""

    def __init__(self, settings: RuleSettings, now: float) -> None:
        self.settings = settings
        self.ref = AccountRef(settings.venue, settings.account)
        self.armed = True
        self.fired = 0

    @property
    def label(self) -> str:
        return f"{self.settings.kind}:{self.ref}"

    def observe(self, event: OrderEvent | ListEvent, now: float) -> str | None:
        """Take one stream event; return why the rule trips, if it does now."""
        return None

    def on_state(self, state: str, now: float) -> None:
        """Take a stream state change."""

    def check(self, now: float) -> str | None:
        """Evaluate time-based conditions; return why the rule trips, if it does now."""
        return None

    def _trip(self, over: bool, reason: str) -> str | None:
        if not over:
            self.armed = True
            return None
        if not self.armed:
            return None
        self.armed = False
        self.fired += 1
        return reason


class _Window:
    """A rolling sum over `window_s` seconds of monotonic time."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.items: deque[tuple[float, float]] = deque()
        self.total = 0.0

    def add(self, now: float, value: float) -> None:
        self.items.append((now, value))
        self.total += value
        self.expire(now)

    def expire(self, now: float) -> None:
        horizon = now - self.window_s
        while self.items and self.items[0][0] <= horizon:
            self.total -= self.items.popleft()[1]
        if not self.items:
            self.total = 0.0  # no float drift left over once the window is empty


class _WindowRule(Rule):
    """A rule on a rolling sum: `observe` adds to the window, `_evaluate` compares it."""

    def __init__(self, settings: RuleSettings, now: float) -> None:
        super().__init__(settings, now)
        self.window = _Window(settings.window_s)

    def check(self, now: float) -> str | None:
        self.window.expire(now)
        return self._evaluate()

    def _evaluate(self) -> str | None:
        raise NotImplementedError


class FillNotionalRule(_WindowRule):
    """Quote notional filled within the window above the limit."""

    def observe(self, event: OrderEvent | ListEvent, now: float) -> str | None:
        if not isinstance(event, OrderEvent) or event.exec_type is not ExecType.TRADE:
            return None
        try:
            notional = float(event.last_qty) * float(event.last_price)
        except ValueError:
            log.warning("fill without a readable qty/price account=%s", self.ref)
            return None
        if not math.isfinite(notional) or notional <= 0:
            return None
        self.window.add(now, notional)
        return self._evaluate()

    def _evaluate(self) -> str | None:
        s = self.settings
        total = self.window.total
        return self._trip(
            total > s.limit,
            f"filled notional {total:.2f} in {s.window_s:g}s > limit {s.limit:g} on {self.ref}",
        )


class OrderRateRule(_WindowRule):
    """New orders per second, averaged over the window, above the limit."""

    def observe(self, event: OrderEvent | ListEvent, now: float) -> str | None:
        if not isinstance(event, OrderEvent) or event.exec_type is not ExecType.NEW:
            return None
        self.window.add(now, 1.0)
        return self._evaluate()

    def _evaluate(self) -> str | None:
        s = self.settings
        rate = self.window.total / s.window_s
        return self._trip(
            rate > s.limit,
            f"{self.window.total:.0f} new orders in {s.window_s:g}s "
            f"({rate:.2f}/s > limit {s.limit:g}/s) on {self.ref}",
        )


class StreamDownRule(Rule):
    """The stream not live for `limit` seconds, or live and silent for `silent_s`."""

    def __init__(self, settings: RuleSettings, now: float) -> None:
        super().__init__(settings, now)
        self.state = StreamState.DOWN.value
        self.down_since: float | None = now  # a stream starts down until it goes live
        self.live_since: float | None = None
        self.last_event: float | None = None
        self.silence_armed = True

    def on_state(self, state: str, now: float) -> None:
        self.state = state
        if state == StreamState.LIVE:
            self.down_since = None
            self.live_since = now
            self.armed = True
        elif self.down_since is None:
            self.down_since = now
            self.live_since = None

    def observe(self, event: OrderEvent | ListEvent, now: float) -> str | None:
        self.last_event = now
        self.silence_armed = True
        return None

    def check(self, now: float) -> str | None:
        s = self.settings
        if self.down_since is not None:
            down = now - self.down_since
            return self._trip(
                down > s.limit,
                f"user stream of {self.ref} not live for {down:.1f}s "
                f"(state {self.state}, limit {s.limit:g}s)",
            )
        if s.silent_s is None or self.live_since is None:
            return None
        since = max(self.last_event or 0.0, self.live_since)
        silent = now - since
        if silent <= s.silent_s or not self.silence_armed:
            return None
        self.silence_armed = False
        self.fired += 1
        return (
            f"user stream of {self.ref} live but silent for {silent:.1f}s (limit {s.silent_s:g}s)"
        )


_KINDS: dict[str, type[Rule]] = {
    "fill_notional": FillNotionalRule,
    "order_rate": OrderRateRule,
    "stream_down": StreamDownRule,
}


class RiskRules(TriggerLoop):
    """Every configured rule, as a daemon `Service` fed by the stream supervisors' callbacks."""

    name = "rules"

    def __init__(
        self,
        rules: Sequence[RuleSettings],
        submit: Submit,
        *,
        emit: Callable[[EventRecord], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        check_interval_s: float = 0.25,
    ) -> None:
        super().__init__(submit, clock=clock, flush_timeout_s=5.0, task="rule submits")
        self._wall_ms = wall_ms
        self.rules = [_KINDS[r.kind](r, self._last_tick) for r in rules]
        self._by_account: dict[AccountRef, list[Rule]] = {}
        for rule in self.rules:
            self._by_account.setdefault(rule.ref, []).append(rule)
        self._emit = emit
        self.check_interval_s = check_interval_s

    # -- inputs (synchronous, from the stream supervisors) ----------------------------------

    def on_event(self, ref: AccountRef, event: OrderEvent | ListEvent) -> None:
        """Feed one stream event to the account's rules (cheap: called per event)."""
        rules = self._by_account.get(ref)
        if not rules:
            return
        now = self._clock()
        for rule in rules:
            reason = rule.observe(event, now)
            if reason is not None:
                self._fire(rule, reason)

    def on_state(self, ref: AccountRef, state: object, reason: str = "") -> None:
        """Feed a stream state change (the supervisors' `on_state`)."""
        now = self._clock()
        for rule in self._by_account.get(ref, ()):
            rule.on_state(str(state), now)

    def check(self) -> list[Trigger]:
        """Evaluate the time-based conditions now; queue and return what fires."""
        now = self._clock()
        fired = []
        for rule in self.rules:
            reason = rule.check(now)
            if reason is not None:
                fired.append(self._fire(rule, reason))
        return fired

    def _fire(self, rule: Rule, reason: str) -> Trigger:
        s = rule.settings
        wall = self._wall_ms()
        scope = s.scope.to_scope() if s.scope is not None else Scope.of([s.venue], [s.account])
        trigger = Trigger(
            id=f"rule-{s.kind}-{s.venue}-{s.account}-{wall}-{rule.fired}",
            source="rule",
            mode=Mode(s.mode),
            reason=reason,
            scope=scope,
            created_ms=wall,
            received_ms=wall,
            actor=f"rule:{rule.label}",
        )
        log.warning(
            "risk rule fired rule=%s trigger_id=%s reason=%r", rule.label, trigger.id, reason
        )
        if self._emit is not None:
            self._emit(
                make_event(
                    EventType.RULE_FIRED, rule=rule.label, trigger_id=trigger.id, reason=reason
                )
            )
        self.submitter.put(trigger)
        return trigger

    # -- Service -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Nothing to connect; the rules start observing at construction."""

    def _tick(self) -> None:
        self.check()  # what fires is queued by `_fire`

    def _wait_s(self) -> float:
        return self.check_interval_s

    def status(self) -> str:
        tripped = [r.label for r in self.rules if not r.armed]
        return f"{len(self.rules)} rules, tripped: {','.join(tripped) or 'none'}"
