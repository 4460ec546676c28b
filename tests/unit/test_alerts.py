"""The alert contract: decoding, schema, HMAC authentication, policy, conversion to a trigger."""

from __future__ import annotations

import orjson
import pytest

from killswitch.handlers.alerts import (
    RESET_FUTURE_TOLERANCE_MS,
    Alert,
    AlertAction,
    ExpiredAlert,
    MalformedAlert,
    RefusedAlert,
    Unauthenticated,
    check_policy,
    parse_alert,
    signature,
    verify_signature,
)
from killswitch.model import AccountRef, Mode, Scope

# RFC 4231 test case 2: HMAC-SHA256(key="Jefe", "what do ya want for nothing?")
RFC4231_KEY = b"Jefe"
RFC4231_DATA = b"what do ya want for nothing?"
RFC4231_MAC = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"

DESIGN_EXAMPLE = {
    "id": "a-20261120-0001",
    "ts": 1763676000123,
    "source": "pnl-monitor",
    "action": "kill",
    "severity": "critical",
    "reason": "drawdown 5.2% > 5%",
    "scope": {
        "venues": ["binance"],
        "accounts": ["mm-1"],
        "symbols": ["BTCUSDT"],
        "client_order_id_prefix": "strat7-",
    },
    "ttl_ms": 60000,
}
ACCOUNTS = [AccountRef("binance", "mm-1"), AccountRef("mexc", "mm-2")]


def encode(data: object) -> bytes:
    return orjson.dumps(data)


def test_the_design_example_becomes_a_latched_kill_trigger_with_its_scope() -> None:
    alert = parse_alert(encode(DESIGN_EXAMPLE), hmac_key=None)
    trigger = alert.to_trigger(received_ms=1763676000200)
    assert trigger.id == "a-20261120-0001"
    assert trigger.mode is Mode.KILL
    assert trigger.actor == "pnl-monitor"
    assert trigger.reason == "drawdown 5.2% > 5%"
    assert trigger.created_ms == 1763676000123
    assert trigger.received_ms == 1763676000200
    assert trigger.scope == Scope(
        venues=frozenset({"binance"}),
        accounts=frozenset({"mm-1"}),
        symbols=frozenset({"BTCUSDT"}),
        client_order_id_prefix="strat7-",
    )


def test_a_minimal_alert_has_an_empty_scope_meaning_everything() -> None:
    alert = parse_alert(
        encode({"id": "x", "ts": 1, "source": "s", "action": "cancel"}), hmac_key=None
    )
    trigger = alert.to_trigger(received_ms=2)
    assert trigger.mode is Mode.CANCEL
    assert trigger.scope.is_everything
    assert trigger.reason == "critical alert from s"


@pytest.mark.parametrize("action", ["heartbeat", "reset"])
def test_heartbeat_and_reset_alerts_are_not_triggers(action: str) -> None:
    alert = parse_alert(
        encode({"id": "x", "ts": 1, "source": "s", "action": action}), hmac_key=None
    )
    assert alert.action is AlertAction(action)
    with pytest.raises(ValueError, match="not a trigger"):
        alert.to_trigger(received_ms=2)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (b"", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"{", "not JSON"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'"kill"', "expected a JSON object, got str"),
        (encode({"ts": 1, "source": "s", "action": "kill"}), "id: Field required"),
        (encode({"id": "x", "ts": 1, "source": "s", "action": "nuke"}), "action: Input should be"),
        (encode({"id": "x", "ts": -1, "source": "s", "action": "kill"}), "ts: Input should be"),
        (encode({"id": "", "ts": 1, "source": "s", "action": "kill"}), "id: String should have"),
        (
            encode({"id": "x", "ts": 1, "source": "s", "action": "kill", "scpoe": {}}),
            "scpoe: Extra inputs are not permitted",
        ),
        (
            encode({"id": "x", "ts": 1, "source": "s", "action": "kill", "scope": {"venue": []}}),
            "scope.venue: Extra inputs",
        ),
        (
            encode(
                {"id": "x", "ts": 1, "source": "s", "action": "kill", "scope": {"venues": ["ftx"]}}
            ),
            "unknown venue(s) ['ftx']",
        ),
        (
            encode({"id": "x", "ts": 1, "source": "s", "action": "kill", "severity": "meh"}),
            "severity: Input should be",
        ),
        (
            encode({"id": "x", "ts": 1, "source": "s", "action": "kill", "ttl_ms": 0}),
            "ttl_ms: Input should be greater than 0",
        ),
        (b"{" + b" " * 70_000 + b"}", "exceeds"),
    ],
)
def test_malformed_records_are_rejected_with_a_reason_naming_the_field(
    value: bytes, fragment: str
) -> None:
    with pytest.raises(MalformedAlert) as info:
        parse_alert(value, hmac_key=None)
    assert fragment in info.value.msg
    assert info.value.kind == "malformed"


def test_a_record_without_a_value_is_malformed() -> None:
    with pytest.raises(MalformedAlert, match="no value"):
        parse_alert(None, hmac_key=None)


def test_validation_errors_do_not_echo_the_offending_input() -> None:
    secretish = "do-not-echo-me"
    with pytest.raises(MalformedAlert) as info:
        parse_alert(
            encode({"id": "x", "ts": secretish, "source": "s", "action": "kill"}), hmac_key=None
        )
    assert secretish not in info.value.msg


def test_signature_matches_the_rfc4231_vector() -> None:
    assert signature(RFC4231_KEY, RFC4231_DATA) == RFC4231_MAC
    verify_signature(RFC4231_DATA, [("x-signature", RFC4231_MAC.encode())], RFC4231_KEY)
    verify_signature(RFC4231_DATA, [("X-Signature", RFC4231_MAC.upper().encode())], RFC4231_KEY)


@pytest.mark.parametrize(
    ("headers", "kind"),
    [
        ([], "unsigned"),
        ([("x-other", RFC4231_MAC.encode())], "unsigned"),
        ([("x-signature", RFC4231_MAC[:-2].encode() + b"00")], "bad_signature"),
        ([("x-signature", b"not hex")], "bad_signature"),
        ([("x-signature", b"\xff")], "bad_signature"),
    ],
)
def test_unsigned_or_wrongly_signed_records_are_unauthenticated(
    headers: list[tuple[str, bytes]], kind: str
) -> None:
    with pytest.raises(Unauthenticated) as info:
        verify_signature(RFC4231_DATA, headers, RFC4231_KEY)
    assert info.value.kind == kind


@pytest.mark.parametrize("sent", [None, "5bdc", 42, bytearray(b"00")])
def test_a_signature_header_value_that_is_not_bytes_is_a_bad_signature(sent: object) -> None:
    # Kafka header values are nullable (aiokafka hands over None): a rejection to dead-letter,
    # never an AttributeError that stops the consumer on the record at every restart.
    value = encode(DESIGN_EXAMPLE)
    with pytest.raises(Unauthenticated) as info:
        parse_alert(value, [("x-signature", sent)], hmac_key=b"k")  # type: ignore[list-item]
    assert info.value.kind == "bad_signature"
    assert "signature header value is" in info.value.msg


def test_only_the_last_signature_header_counts_even_when_an_earlier_one_is_null() -> None:
    value = encode(DESIGN_EXAMPLE)
    good = signature(b"k", value).encode()
    assert parse_alert(value, [("x-signature", None), ("x-signature", good)], hmac_key=b"k")
    with pytest.raises(Unauthenticated):
        parse_alert(value, [("x-signature", good), ("x-signature", None)], hmac_key=b"k")


def test_a_record_value_that_is_not_bytes_is_malformed() -> None:
    with pytest.raises(MalformedAlert, match="not bytes"):
        parse_alert(orjson.dumps(DESIGN_EXAMPLE).decode(), hmac_key=None)  # type: ignore[arg-type]


def test_a_signed_alert_parses_only_with_the_matching_key() -> None:
    value = encode(DESIGN_EXAMPLE)
    headers = [("x-signature", signature(b"k1", value).encode())]
    assert parse_alert(value, headers, hmac_key=b"k1").id == "a-20261120-0001"
    with pytest.raises(Unauthenticated):
        parse_alert(value, headers, hmac_key=b"k2")
    with pytest.raises(Unauthenticated):
        parse_alert(value + b" ", headers, hmac_key=b"k1")


def test_without_a_key_the_signature_header_is_ignored() -> None:
    value = encode(DESIGN_EXAMPLE)
    assert parse_alert(value, [("x-signature", b"junk")], hmac_key=None).id == "a-20261120-0001"


def test_an_unsigned_record_is_rejected_before_it_is_parsed() -> None:
    with pytest.raises(Unauthenticated):
        parse_alert(b"not json at all", hmac_key=b"k")


def _alert(**fields: object) -> Alert:
    base: dict[str, object] = {"id": "x", "ts": 1_000_000, "source": "s", "action": "kill"}
    return Alert.model_validate(base | fields)


def test_old_alerts_are_acted_upon_when_no_ttl_policy_is_configured() -> None:
    alert = _alert(ttl_ms=10)
    assert check_policy(alert, now_ms=9_000_000, ttl_ms=None, allow_reset=False) == []


def test_the_ttl_policy_expires_by_the_alert_ttl_then_the_configured_one() -> None:
    check_policy(_alert(ttl_ms=5000), now_ms=1_004_000, ttl_ms=1000, allow_reset=False)
    with pytest.raises(ExpiredAlert, match="6000 ms old, ttl 5000 ms"):
        check_policy(_alert(ttl_ms=5000), now_ms=1_006_000, ttl_ms=1000, allow_reset=False)
    with pytest.raises(ExpiredAlert, match="ttl 1000 ms"):
        check_policy(_alert(), now_ms=1_001_001, ttl_ms=1000, allow_reset=False)


def test_a_reset_is_refused_unless_allowed() -> None:
    reset = _alert(action="reset")
    with pytest.raises(RefusedAlert, match="allow_reset"):
        check_policy(reset, now_ms=1_000_000, ttl_ms=None, allow_reset=False)
    assert check_policy(reset, now_ms=1_000_000, ttl_ms=None, allow_reset=True) == []


@pytest.mark.parametrize("ttl_ms", [None, 60_000])
def test_a_reset_dated_ahead_of_our_clock_past_the_tolerance_is_refused(
    ttl_ms: int | None,
) -> None:
    # Its `ts` bounds the latches it may release: from the future, a re-read of it would
    # release kills latched after it was applied. A negative age must not pass the TTL either.
    reset = _alert(action="reset")
    now = 1_000_000 - RESET_FUTURE_TOLERANCE_MS
    assert check_policy(reset, now_ms=now, ttl_ms=ttl_ms, allow_reset=True) == []
    with pytest.raises(RefusedAlert) as info:
        check_policy(reset, now_ms=now - 1, ttl_ms=ttl_ms, allow_reset=True)
    assert info.value.kind == "future_reset"
    assert f"{RESET_FUTURE_TOLERANCE_MS + 1} ms ahead of this daemon's clock" in info.value.msg


def test_a_kill_dated_ahead_of_our_clock_is_still_acted_on() -> None:
    # refusing a kill is the unsafe side: producer clock skew never drops one
    for action in ("kill", "cancel"):
        check_policy(_alert(action=action), now_ms=1, ttl_ms=1000, allow_reset=False)


def test_a_scope_covering_no_configured_account_is_refused() -> None:
    with pytest.raises(RefusedAlert) as info:
        check_policy(
            _alert(scope={"accounts": ["nobody"]}),
            now_ms=1,
            ttl_ms=None,
            allow_reset=False,
            accounts=ACCOUNTS,
        )
    assert info.value.kind == "no_account"
    with pytest.raises(RefusedAlert):
        check_policy(
            _alert(scope={"venues": ["bingx"]}),
            now_ms=1,
            ttl_ms=None,
            allow_reset=False,
            accounts=ACCOUNTS,
        )


def test_a_scope_naming_some_unknown_accounts_acts_and_reports_them() -> None:
    unknown = check_policy(
        _alert(scope={"accounts": ["mm-1", "typo"]}),
        now_ms=1,
        ttl_ms=None,
        allow_reset=False,
        accounts=ACCOUNTS,
    )
    assert unknown == ["typo"]


def _refusal(scope: dict[str, object], action: str = "kill") -> RefusedAlert:
    with pytest.raises(RefusedAlert) as info:
        check_policy(
            _alert(action=action, scope=scope),
            now_ms=1,
            ttl_ms=None,
            allow_reset=False,
            accounts=ACCOUNTS,
        )
    return info.value


def test_a_refusal_names_what_in_the_scope_matched_no_configured_account() -> None:
    typo = _refusal({"accounts": ["mm-l"]})
    assert typo.kind == "no_account"
    assert typo.msg == ("scope covers no configured account (accounts: no configured account mm-l)")
    venue = _refusal({"venues": ["bingx"]}, action="cancel")
    assert (
        venue.msg == "scope covers no configured account (venues: no configured account on bingx)"
    )
    # Both names are configured, but mm-1 is not a MEXC account: the pair selects nothing.
    pair = _refusal({"venues": ["mexc"], "accounts": ["mm-1"]})
    assert pair.msg == (
        "scope covers no configured account (venues: no configured account on mexc among "
        "accounts ['mm-1']; accounts: no configured account mm-1 on mexc)"
    )


def test_an_account_named_on_the_wrong_venue_is_reported_as_unknown() -> None:
    # mm-2 exists, but on mexc: in a binance-only scope it matches nothing.
    unknown = check_policy(
        _alert(scope={"venues": ["binance"], "accounts": ["mm-1", "mm-2"]}),
        now_ms=1,
        ttl_ms=None,
        allow_reset=False,
        accounts=ACCOUNTS,
    )
    assert unknown == ["mm-2"]
