"""Turn a Kafka alert record into a validated `Alert`: decode, authenticate, check, convert.

Rejections, by what the dead-letter header `x-dlq-error-kind` says::

    AlertRejected                 never retried: the record is dead-lettered and counted
     +-- MalformedAlert           "malformed": not JSON, not an object, fails the schema
     +-- Unauthenticated          "unsigned" / "bad_signature": HMAC missing or wrong
     +-- ExpiredAlert             "expired": older than the opt-in TTL policy allows
     +-- RefusedAlert             "refused": valid, but not allowed here (reset, unknown account)
    (AlertRejected itself)        "unhandled": an error of ours on this record (`kafka.alerts`
                                  dead-letters it with the error rather than stop on it)

The schema is strict (`extra="forbid"`): a misspelt `scope` field must not widen a kill to
"everything", so an unknown field rejects the alert instead.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Iterable, Sequence
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from killswitch.model import AccountRef, Mode, Trigger, json_object, unmatched
from killswitch.settings import ScopeSettings

SIGNATURE_HEADER = "x-signature"
MAX_ALERT_BYTES = 64 * 1024
# How far ahead of our clock a reset's `ts` may be (producer clock skew less network delay).
# A reset dated further ahead is refused: its time bounds the latches it may release, and on a
# re-read it would release kills latched after it was first applied.
RESET_FUTURE_TOLERANCE_MS = 1_000

Headers = Sequence[tuple[str, bytes | None]]  # Kafka header values are nullable


class AlertRejected(Exception):
    """An alert record that must not be acted upon; `kind` names why, for headers and counts."""

    kind: ClassVar[str] = "rejected"

    def __init__(self, msg: str, *, kind: str | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        if kind is not None:
            self.kind = kind  # type: ignore[misc]  # a finer kind for this instance


class MalformedAlert(AlertRejected):
    """The record is not a valid alert: not JSON, not an object, or fails the schema."""

    kind = "malformed"


class Unauthenticated(AlertRejected):
    """A key is configured and the record is unsigned or its signature does not match."""

    kind = "bad_signature"


class ExpiredAlert(AlertRejected):
    """The alert is older than the configured TTL policy allows."""

    kind = "expired"


class RefusedAlert(AlertRejected):
    """The alert is valid but not allowed here (a reset without `allow_reset`, ...)."""

    kind = "refused"


class AlertAction(enum.StrEnum):
    """What an alert asks for."""

    KILL = "kill"
    CANCEL = "cancel"
    HEARTBEAT = "heartbeat"
    RESET = "reset"


_STRICT = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


# An alert's scope is checked as a configured one is: known venues, no empty names.
AlertScope = ScopeSettings


class Alert(BaseModel):
    """A risk alert as published on the alerts topic (DESIGN.md "Alerts")."""

    model_config = _STRICT

    id: str = Field(min_length=1, max_length=200)
    ts: int = Field(ge=0, description="producer wall clock, ms since the epoch")
    source: str = Field(min_length=1, max_length=200)
    action: AlertAction
    severity: Literal["info", "warning", "critical"] = "critical"
    reason: str = Field(default="", max_length=2000)
    scope: AlertScope = AlertScope()
    ttl_ms: int | None = Field(default=None, gt=0)

    def to_trigger(self, *, received_ms: int) -> Trigger:
        """Return the trigger a kill or cancel alert asks for."""
        if self.action not in (AlertAction.KILL, AlertAction.CANCEL):
            raise ValueError(f"a {self.action} alert is not a trigger")
        return Trigger(
            id=self.id,
            source="kafka",
            mode=Mode(self.action.value),
            reason=self.reason or f"{self.severity} alert from {self.source}",
            scope=self.scope.to_scope(),
            created_ms=self.ts,
            received_ms=received_ms,
            actor=self.source,
        )


def signature(key: bytes, value: bytes) -> str:
    """Return the hex HMAC-SHA256 of `value` a producer puts in the `x-signature` header."""
    return hmac.new(key, value, hashlib.sha256).hexdigest()


def verify_signature(value: bytes, headers: Headers, key: bytes) -> None:
    """Raise `Unauthenticated` unless the last `x-signature` header signs `value` with `key`.

    A header value may be null (Kafka header values are nullable; aiokafka gives None) or, from
    a careless caller, not bytes at all: either is a bad signature, never an error of ours.
    """
    sent = [v for k, v in headers if isinstance(k, str) and k.lower() == SIGNATURE_HEADER]
    if not sent:
        raise Unauthenticated("unsigned alert: a key is configured", kind="unsigned")
    last = sent[-1]
    if not isinstance(last, bytes):
        what = "null" if last is None else f"a {type(last).__name__}, not bytes"
        raise Unauthenticated(f"signature header value is {what}")
    try:
        given = bytes.fromhex(last.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise Unauthenticated("signature header is not hex") from None
    expected = hmac.new(key, value, hashlib.sha256).digest()
    if not hmac.compare_digest(given, expected):
        raise Unauthenticated("signature does not match the alert")


def parse_alert(value: bytes | None, headers: Headers = (), *, hmac_key: bytes | None) -> Alert:
    """Authenticate (when a key is given), decode and validate one record's value."""
    if value is None:
        raise MalformedAlert("record has no value")
    if not isinstance(value, bytes):
        raise MalformedAlert(f"record value is a {type(value).__name__}, not bytes")
    if len(value) > MAX_ALERT_BYTES:
        raise MalformedAlert(f"record of {len(value)} bytes exceeds {MAX_ALERT_BYTES}")
    # Authenticate first: an unauthenticated producer learns nothing from our parser.
    if hmac_key is not None:
        verify_signature(value, headers, hmac_key)
    data = json_object(value, MalformedAlert)
    try:
        return Alert.model_validate(data)
    except ValidationError as exc:
        raise MalformedAlert(describe_errors(exc)) from None


def describe_errors(exc: ValidationError) -> str:
    """Summarise a validation error by field and message, without echoing the input."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "alert"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def check_policy(
    alert: Alert,
    *,
    now_ms: int,
    ttl_ms: int | None,
    allow_reset: bool,
    accounts: Iterable[AccountRef] | None = None,
) -> list[str]:
    """Raise unless this daemon may act on `alert`; return scope account names it does not know.

    `ttl_ms` is the opt-in age policy: None (the default) never drops an alert for its age;
    when set, an alert older than its own `ttl_ms` (or else this one) is expired; one dated
    ahead of `now_ms` is not old (a kill is acted on: refusing it is the unsafe side). A reset
    dated more than `RESET_FUTURE_TOLERANCE_MS` ahead is refused (`future_reset`), whatever
    the TTL policy: nothing could tell which latches it was issued after. A kill or
    cancel whose scope covers none of `accounts` (unknown accounts, a venue with no account
    here, a venue/account pair that matches nothing) is refused, naming what matched nothing:
    it would cancel nothing and look done. One that also covers configured accounts acts on
    them (the others may be another shard's) and returns the account names that matched none.
    """
    if ttl_ms is not None:
        limit = alert.ttl_ms or ttl_ms
        age = now_ms - alert.ts
        if age > limit:
            raise ExpiredAlert(f"alert is {age} ms old, ttl {limit} ms")
    if alert.action is AlertAction.RESET and not allow_reset:
        raise RefusedAlert("reset over Kafka is not allowed (kafka.allow_reset = false)")
    ahead = alert.ts - now_ms
    if alert.action is AlertAction.RESET and ahead > RESET_FUTURE_TOLERANCE_MS:
        raise RefusedAlert(
            f"reset dated {ahead} ms ahead of this daemon's clock (tolerance "
            f"{RESET_FUTURE_TOLERANCE_MS} ms): which latches it was issued after cannot be "
            "told, so it releases nothing; check the producer's clock and send a new reset",
            kind="future_reset",
        )
    if accounts is None or alert.action not in (AlertAction.KILL, AlertAction.CANCEL):
        return []
    known = list(accounts)
    scope = alert.scope.to_scope()
    missing = unmatched(scope, known)
    if not any(scope.covers_account(ref) for ref in known):
        detail = "; ".join(f"{m.field}: {m.message}" for m in missing) or "no account configured"
        raise RefusedAlert(f"scope covers no configured account ({detail})", kind="no_account")
    return [m.name for m in missing if m.field == "accounts"]
