"""MEXC's error table: raw (HTTP status, code, msg) to the taxonomy."""

from __future__ import annotations

import pytest

from killswitch.exchanges.base import (
    AlreadyGone,
    ClockSkew,
    Fatal,
    IpBanned,
    OutcomeUnknown,
    RateLimited,
    VenueError,
)
from killswitch.exchanges.dialect import MEXC, classify


@pytest.mark.parametrize(
    ("status", "code", "msg", "expected"),
    [
        (400, -2011, "Unknown order sent", AlreadyGone),
        (400, -2011, "Unknown order sent.", AlreadyGone),
        (400, -2011, "Unknown order list sent.", AlreadyGone),
        # A -2011 message MEXC never documented is not guessed at (was AlreadyGone).
        (400, -2011, "Order is being processed", OutcomeUnknown),
        (400, -2013, "Order does not exist.", AlreadyGone),
        (400, 700003, "Timestamp for this request is outside of the recvWindow.", ClockSkew),
        (400, 10073, "invalid Request-Time", ClockSkew),
        (400, 700002, "Signature for this request is not valid.", Fatal),
        (400, 602, "Signature verification failed", Fatal),
        (400, 700001, "API-key format invalid", Fatal),
        (400, 10072, "invalid access key", Fatal),
        (400, 400, "api key required", Fatal),
        (400, 700006, "IP non white list", Fatal),
        (400, 700007, "No permission to access the endpoint", Fatal),
        (400, 700004, "Mandatory parameter 'symbol' was not sent", Fatal),
        (400, 700005, "recvWindow must less than 60000", Fatal),
        (400, 30026, "invalid order ids", Fatal),
        (400, 10007, "bad symbol", Fatal),
        (400, "730708", "listen key information error", Fatal),
        (500, 500, "Internal error", OutcomeUnknown),
        (503, 503, "service not available, please try again", OutcomeUnknown),
        (504, 504, "Gateway Time-out", OutcomeUnknown),
        (502, None, "", OutcomeUnknown),
        (200, 503, "service not available, please try again", OutcomeUnknown),
        (429, 429, "Too Many Requests", RateLimited),
        (200, 429, "Too Many Requests", RateLimited),
        (418, None, "", IpBanned),
        # HTTP 403 is MEXC's WAF, possibly a rate block: not proof of a bad key (was Fatal).
        (403, None, "", RateLimited),
        (401, None, "", Fatal),
        # An answer nobody can classify: re-read the venue, never give up (was Fatal).
        (400, 123456, "something new", OutcomeUnknown),
        (404, None, "<html>", OutcomeUnknown),
        # A code that is not a number: an envelope we cannot read, never a success (was None).
        (200, "abc", "success?", OutcomeUnknown),
    ],
)
def test_table_maps_codes_to_taxonomy(
    status: int, code: int | str | None, msg: str, expected: type[VenueError]
) -> None:
    error = classify(MEXC, status, code, msg)
    assert type(error) is expected


def test_cancel_refusal_under_minus_2011_is_not_treated_as_gone() -> None:
    error = classify(MEXC, 400, -2011, "Order was not canceled due to cancel restrictions.")
    assert type(error) is Fatal


@pytest.mark.parametrize(("status", "code"), [(200, None), (200, 0), (200, 200), (204, None)])
def test_success_answers_are_not_errors(status: int, code: int | None) -> None:
    assert classify(MEXC, status, code, "success") is None


def test_rate_limited_carries_retry_after_from_the_header() -> None:
    error = classify(MEXC, 429, 429, "Too Many Requests", {"Retry-After": "7"})
    assert isinstance(error, RateLimited)
    assert error.retry_after_s == 7.0


def test_ban_without_retry_after_waits_at_least_the_shortest_documented_ban() -> None:
    error = classify(MEXC, 418, None, "")
    assert isinstance(error, IpBanned)
    assert error.retry_after_s == 120.0


def test_codes_sent_as_strings_are_read_as_numbers() -> None:
    error = classify(MEXC, 400, "-2011", "Unknown order sent")
    assert isinstance(error, AlreadyGone)
    assert error.code == -2011
