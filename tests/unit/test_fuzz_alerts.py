"""Fuzzed alert records: decoding and policy end in an `Alert` or one `AlertRejected`.

Whatever bytes and headers a producer (or an attacker) puts on the alerts topic, `parse_alert`
returns a valid `Alert` or raises one `AlertRejected` subclass (which the consumer dead-letters
and counts once), and an accepted kill or cancel converts to a `Trigger` and passes or fails
`check_policy` the same typed way. With an HMAC key configured, nothing unsigned or wrongly
signed is ever parsed, and a correct signature changes nothing about the verdict.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import event, example, given
from hypothesis import strategies as st

from killswitch.handlers.alerts import (
    MAX_ALERT_BYTES,
    SIGNATURE_HEADER,
    Alert,
    AlertAction,
    AlertRejected,
    MalformedAlert,
    Unauthenticated,
    check_policy,
    parse_alert,
    signature,
)
from killswitch.model import AccountRef, Trigger
from tests.fixtures.fuzz import FUZZ, JSON_VALUES, dumps, hostile_bytes, mutated

KEY = b"alert-hmac-key"
ACCOUNTS = [AccountRef("binance", "mm-1"), AccountRef("mexc", "mm-1"), AccountRef("bingx", "mm-2")]
SCOPE: dict[str, Any] = {
    "venues": ["binance"],
    "accounts": ["mm-1"],
    "symbols": ["BTCUSDT"],
    "client_order_id_prefix": "strat7-",
}
ALERT: dict[str, Any] = {
    "id": "a-20261120-0001",
    "ts": 1763676000123,
    "source": "pnl-monitor",
    "action": "kill",
    "severity": "critical",
    "reason": "drawdown 5.2% > 5%",
    "scope": SCOPE,
    "ttl_ms": 60000,
}

PLAUSIBLE = st.one_of(
    mutated(ALERT).map(dumps),
    st.builds(lambda a, s: dumps({**a, "scope": s}), mutated(ALERT), mutated(SCOPE)),
    st.builds(
        lambda action, scope: dumps({**ALERT, "action": action, "scope": scope}),
        st.sampled_from(["kill", "cancel", "heartbeat", "reset", "KILL", "", "nuke"]),
        st.one_of(mutated(SCOPE), JSON_VALUES),
    ),
    st.builds(
        lambda n: dumps({**ALERT, "scope": {"accounts": [f"a{i}" for i in range(n)]}}),
        st.integers(990, 1010),
    ),
)
RECORDS = hostile_bytes(dumps(ALERT), plausible=PLAUSIBLE)
HEADERS = st.lists(
    st.tuples(st.sampled_from([SIGNATURE_HEADER, "X-Signature", "other"]), st.binary(max_size=80)),
    max_size=3,
)


def verdict(value: bytes | None, headers: list[tuple[str, bytes]], key: bytes | None) -> Any:
    """What the alert path makes of a record: a Trigger, an Alert (not a trigger), or a kind."""
    try:
        alert = parse_alert(value, headers, hmac_key=key)
    except AlertRejected as exc:
        return ("rejected", exc.kind)
    assert isinstance(alert, Alert)
    try:
        unknown = check_policy(
            alert, now_ms=1763676000500, ttl_ms=None, allow_reset=False, accounts=ACCOUNTS
        )
    except AlertRejected as exc:
        return ("refused", exc.kind)
    assert isinstance(unknown, list)
    if alert.action in (AlertAction.KILL, AlertAction.CANCEL):
        trigger = alert.to_trigger(received_ms=1763676000500)
        assert isinstance(trigger, Trigger)
        assert Trigger.from_json(orjson.loads(orjson.dumps(trigger.to_json()))) == trigger
        return ("trigger", trigger.id, trigger.mode, trigger.scope)
    return ("alert", alert.action)


@FUZZ
@given(value=RECORDS, headers=HEADERS)
@example(value=None, headers=[])
@example(value=b"x" * (MAX_ALERT_BYTES + 1), headers=[])
@example(value=b"[" * 100_000, headers=[])
@example(value=dumps({**ALERT, "scope": {"venue": ["binance"]}}), headers=[])  # a typo
def test_any_record_is_a_trigger_an_alert_or_one_typed_rejection(
    value: bytes | None, headers: list[tuple[str, bytes]]
) -> None:
    result = verdict(value, headers, None)
    assert result[1], "a rejection names its kind for the dead-letter header"
    event(str(result[:2]))


def test_a_misspelt_scope_field_rejects_the_alert_instead_of_widening_the_kill() -> None:
    assert verdict(dumps({**ALERT, "scope": {"venue": ["binance"]}}), [], None) == (
        "rejected",
        MalformedAlert.kind,
    )


@FUZZ
@given(value=RECORDS, headers=HEADERS)
def test_with_a_key_an_unsigned_or_wrongly_signed_record_is_never_parsed(
    value: bytes, headers: list[tuple[str, bytes]]
) -> None:
    good = signature(KEY, value).encode()
    signed = [h for h in headers if h[0].lower() == SIGNATURE_HEADER]
    expect_auth_failure = not signed or signed[-1][1].strip().lower() != good
    result = verdict(value, headers, KEY)
    if len(value) > MAX_ALERT_BYTES:
        assert result == ("rejected", MalformedAlert.kind)
    elif expect_auth_failure:
        assert result[0] == "rejected"
        assert result[1] in ("unsigned", Unauthenticated.kind)


@FUZZ
@given(value=RECORDS)
def test_a_correct_signature_changes_nothing_about_the_verdict(value: bytes) -> None:
    headers = [(SIGNATURE_HEADER, signature(KEY, value).encode())]
    assert verdict(value, headers, KEY) == verdict(value, [], None)
