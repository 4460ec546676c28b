"""What one alert record becomes: authenticated, checked against the policy and the duplicate
rules, then handed to the engine (a kill or cancel journaled, a reset applied), retried until
journaled.

A reset the engine has no id of releases only latches received before it was issued (the
earlier of its `ts` and its receipt; a `ts` more than a second ahead of our clock is refused by
the policy), and is refused as stale when a latch held now was received after that. An id
reused for another scope or mode (not a replay: another alert) is refused as `id_conflict`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Protocol, TypeVar

import orjson

from killswitch.backoff import until_journaled
from killswitch.events import EventType
from killswitch.handlers.alerts import (
    Alert,
    AlertAction,
    AlertRejected,
    RefusedAlert,
    check_policy,
    parse_alert,
)
from killswitch.kafka.acted_on import ActedOn, same_alert
from killswitch.kafka.alert_start import History
from killswitch.kafka.dead_letters import Record
from killswitch.kill.port import EnginePort, latest_latch_ms
from killswitch.model import AccountRef, Trigger

if TYPE_CHECKING:
    from killswitch.settings import KafkaSettings

# The consumer's decisions: logged under its name, as before they had a module of their own.
log = logging.getLogger("killswitch.kafka.alerts")

T = TypeVar("T")


class HeartbeatListener(Protocol):
    """Where heartbeat alerts go (`handlers.heartbeat.HeartbeatWatch`)."""

    def beat(self, source: str, ts_ms: int) -> bool: ...


class _Counts(Protocol):
    heartbeats: int
    triggers: int
    duplicates: int
    resets: int
    engine_failures: int


class OlderThanStart(Exception):
    """An alert of a start without offsets older than its floor: history, not replayed."""


class AlertIntake:
    """Turn alert records into engine calls, for the Kafka alert consumer."""

    def __init__(
        self,
        settings: KafkaSettings,
        engine: EnginePort,
        acted_on: ActedOn,
        stats: _Counts,
        emit: Callable[..., None],
        stopping: asyncio.Event,
        *,
        accounts: Iterable[AccountRef] | None = None,
        heartbeats: HeartbeatListener | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.acted_on = acted_on
        self.stats = stats
        self._emit = emit
        self._stopping = stopping  # the consumer's: an engine call is retried until it is set
        self.accounts = list(accounts) if accounts is not None else None
        self.heartbeats = heartbeats
        key = settings.alert_hmac_key
        self._hmac_key = key.get_secret_value().encode() if key is not None else None
        self.stalled = ""  # why the consumer is stuck on one record, if it is

    def accept(
        self, record: Record, now_ms: int, *, history: History | None = None
    ) -> Trigger | Alert | None:
        """Authenticate, validate and apply the policy; return what the engine must see (the
        trigger of a kill or cancel, a reset alert), None when it is done here (a heartbeat).
        Raise `OlderThanStart` for an alert of a `history` window dated before its floor."""
        alert = parse_alert(record.value, record.headers, hmac_key=self._hmac_key)
        if history is not None and alert.ts < history.floor_ms:
            raise OlderThanStart
        if self.acted_on(alert, now_ms):
            return None
        unknown = check_policy(
            alert,
            now_ms=now_ms,
            ttl_ms=self.settings.alert_ttl_ms,
            allow_reset=self.settings.allow_reset,
            accounts=self.accounts,
        )
        if alert.action is AlertAction.RESET:
            self._check_reset_is_fresh(alert, now_ms)
        if unknown:
            log.warning("alert names unknown accounts alert_id=%s accounts=%s", alert.id, unknown)
            self._emit(EventType.ALERT_UNKNOWN_ACCOUNTS, alert_id=alert.id, accounts=unknown)
        if alert.action is AlertAction.HEARTBEAT:
            self.stats.heartbeats += 1
            if self.heartbeats is None or not self.heartbeats.beat(alert.source, alert.ts):
                log.debug("heartbeat from an unwatched source source=%s", alert.source)
            return None
        if alert.action is AlertAction.RESET:
            return alert
        return alert.to_trigger(received_ms=now_ms)

    async def submit(self, trigger: Trigger) -> AlertRejected | None:
        """Hand the trigger to the engine; return the rejection of an id reused for another
        alert (the engine answered DUPLICATE, but for another scope or mode)."""
        self.acted_on.alarm_if_cluster_unknown(trigger)
        result = await self.engine_call(f"alert {trigger.id}", lambda: self.engine.submit(trigger))
        if result != "duplicate":
            self.stats.triggers += 1
            return None
        earlier = self.engine.trigger(trigger.id)
        if earlier is None:
            # the engine no longer holds the trigger this id started: nothing to compare with
            self.stats.duplicates += 1
            log.info("duplicate alert ignored alert_id=%s (earlier one no longer held)", trigger.id)
            return None
        if same_alert(earlier, trigger):
            self.stats.duplicates += 1
            log.info("duplicate alert ignored alert_id=%s", trigger.id)
            return None
        # Same id, other content: acting on it is impossible (the id is taken), and dropping it
        # quietly would hide a scope nobody killed. Dead-lettered, named, at warning.
        log.warning(
            "alert id already used for another alert, not acted on alert_id=%s "
            "mode=%s scope=%s earlier_mode=%s earlier_scope=%s",
            trigger.id,
            trigger.mode.value,
            trigger.scope.to_json(),
            earlier.mode.value,
            earlier.scope.to_json(),
        )
        return RefusedAlert(
            f"id {trigger.id} was already used for another alert "
            f"({earlier.mode.value} of {_scope_text(earlier)}, from {earlier.source}); "
            f"this {trigger.mode.value} of {_scope_text(trigger)} was not acted on: "
            "send it again with a new id",
            kind="id_conflict",
        )

    async def engine_call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run an engine call until it succeeds: an alert is never skipped for a journal error.
        When the daemon stops first, the record stays uncommitted and comes back."""

        def failed(exc: BaseException) -> None:
            self.stats.engine_failures += 1
            self.stalled = f"{what} not journaled: {type(exc).__name__}: {exc}"[:300]

        result = await until_journaled(what, call, self._stopping, on_failure=failed)
        self.stalled = ""
        return result

    def _check_reset_is_fresh(self, alert: Alert, now_ms: int) -> None:
        # A reset the engine has no id of (a re-read past the journal's ids, or one held up in
        # the topic) must not release a kill latched after it was issued.
        issued = _issued_ms(alert, now_ms)
        newest = latest_latch_ms(self.engine, self._releasable(alert))
        if newest is not None and issued < newest:
            raise RefusedAlert(
                f"reset issued at {issued} is older than a latch received at {newest}",
                kind="stale_reset",
            )

    def _releasable(self, alert: Alert) -> list[str] | None:
        """The latches a reset may release: with a scope, those wholly inside it (a latch wider
        than it, over every account say, is not its to lift); without, all (None). Decided from
        the scopes alone, never from this daemon's accounts: replicas or shards configured with
        other accounts must release the same latches (review 40: a shard holding only MEXC
        accounts took an unscoped latch for one "inside" a reset naming mexc, and its release
        record lifted that latch over Binance on its peer)."""
        scope = alert.scope.to_scope()
        if scope.is_everything:
            return None
        return [t for t, s in self.engine.latches().items() if s.within(scope)]

    async def reset(self, alert: Alert, now_ms: int) -> None:
        self.stats.resets += 1
        only = self._releasable(alert)
        released = await self.engine_call(
            f"reset {alert.id}",
            # Only latches received before the reset was issued: a kill latched while this
            # record waited is not the reset's to release. Issued is the earlier of its `ts`
            # and now: a `ts` ahead of our clock (skew, within the tolerance `check_policy`
            # allows) would, on a re-read of the record, release kills latched after it.
            lambda: self.engine.reset(
                actor=f"kafka:{alert.source}",
                reason=alert.reason or alert.id,
                origin="kafka",
                only=only,
                latched_before_ms=_issued_ms(alert, now_ms),
                reset_id=alert.id,
            ),
        )
        log.warning("reset from kafka alert_id=%s released=%s", alert.id, released)


def _scope_text(trigger: Trigger) -> str:
    return orjson.dumps(trigger.scope.to_json()).decode()


def _issued_ms(alert: Alert, now_ms: int) -> int:
    """When a reset was issued, as far as we can vouch: not after its `ts`, nor after now."""
    return min(alert.ts, now_ms)
