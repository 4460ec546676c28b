"""The one classify: the order of its rules, on a dialect shaped like BingX's (envelope codes,
one code meaning two things by its message, a throttle code whose wait is in its text)."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from killswitch.exchanges.base import (
    AlreadyGone,
    ClockSkew,
    Fatal,
    IpBanned,
    OutcomeUnknown,
    RateLimited,
    Transient,
    VenueError,
)
from killswitch.exchanges.dialect import BINANCE, MEXC, Dialect, MessageRule, classify

ENVELOPE = Dialect(
    venue="enveloped",
    codes=MappingProxyType(
        {80016: AlreadyGone, 100410: RateLimited, 101500: OutcomeUnknown, 100001: Fatal}
    ),
    message_rules=(
        MessageRule(100421, "timestamp", ClockSkew, contains=True),
        MessageRule(100421, "order not exist", AlreadyGone, contains=True),
        MessageRule(100400, "FILLED or CANCELLED already", AlreadyGone, contains=True),
    ),
    message_codes=frozenset({100421}),
    code_ranges=((90000, 90999, Transient),),
    success_codes=frozenset({None, 0}),
    retry_after_s=0.5,
)


@pytest.mark.parametrize(
    ("status", "code", "msg", "kind"),
    [
        (200, 0, "", None),
        (200, None, "", None),
        (200, 80016, "order not exist", AlreadyGone),  # a business error inside a 200
        (200, "80016", "order not exist", AlreadyGone),  # the code as text
        (200, 100421, "Null timestamp or timestamp mismatch", ClockSkew),
        (200, 100421, "cancel fail, order not exist", AlreadyGone),
        (200, 100421, "something else entirely", OutcomeUnknown),  # decided by message only
        (200, 100400, "order status :FILLED or CANCELLED already", AlreadyGone),
        (200, 100400, "bad param", OutcomeUnknown),  # no rule, not in the table
        (200, 90123, "busy", Transient),  # a family of codes
        (200, 100001, "signature verification failed", Fatal),
        (200, 424242, "new", OutcomeUnknown),
        (200, "not-a-number", "new", OutcomeUnknown),
        (418, 0, "", IpBanned),  # statuses that decide alone win over any code
        (429, 80016, "", RateLimited),
        (503, 80016, "", OutcomeUnknown),
        (403, None, "<html>", RateLimited),
        (401, None, "", Fatal),
        (400, None, "", OutcomeUnknown),
    ],
)
def test_the_rules_apply_in_the_documented_order(
    status: int, code: int | str | None, msg: str, kind: type[VenueError] | None
) -> None:
    error = classify(ENVELOPE, status, code, msg)
    assert (type(error) if error is not None else None) is kind
    if error is not None:
        assert (error.venue, error.http_status) == ("enveloped", status)


def test_a_wait_read_from_the_text_is_used_unless_a_header_gives_one() -> None:
    from_text = classify(ENVELOPE, 200, 100410, "unblocked after ...", retry_after_s=3.0)
    assert isinstance(from_text, RateLimited)
    assert from_text.retry_after_s == 3.0
    header = classify(ENVELOPE, 200, 100410, "", {"Retry-After": "7"}, retry_after_s=3.0)
    assert isinstance(header, RateLimited)
    assert header.retry_after_s == 7.0
    default = classify(ENVELOPE, 200, 100410, "rate limited")
    assert isinstance(default, RateLimited)
    assert default.retry_after_s == 0.5
    garbled = classify(ENVELOPE, 429, None, "", {"Retry-After": "soon"})
    assert isinstance(garbled, RateLimited)
    assert garbled.retry_after_s == 0.5


@pytest.mark.parametrize("dialect", [BINANCE, MEXC, ENVELOPE], ids=lambda d: d.venue)
def test_the_unknown_answer_rule_is_the_same_on_every_venue(dialect: Dialect) -> None:
    assert dialect.unknown is OutcomeUnknown
    error = classify(dialect, 400, 987654321, "a code nobody documented")
    assert type(error) is OutcomeUnknown
    waf = classify(dialect, 403, None, "")
    assert type(waf) is RateLimited
