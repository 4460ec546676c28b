"""Readiness reasons as an operator reads them, and the daemon's stream rule (pure parts)."""

from __future__ import annotations

import asyncio
import calendar
import time

import pytest

from killswitch.control_client import format_status
from killswitch.events import EventRecord
from killswitch.exchanges.base import ClockSkew, Fatal, IpBanned, RateLimited, Transient
from killswitch.exchanges.factory import build_exchange
from killswitch.model import AccountRef
from killswitch.readiness.checks import (
    AccountReadiness,
    Check,
    Target,
    check_clock,
    check_rate,
    duration,
    reason_for,
    redact,
)
from killswitch.readiness.service import ReadinessService
from tests.conftest import eventually
from tests.fakes import FakeExchange

NOON = calendar.timegm(time.strptime("2026-12-06 12:00:00", "%Y-%m-%d %H:%M:%S"))


def test_reasons_are_in_the_venues_own_words() -> None:
    bad_sig = Fatal("Signature for this request is not valid.", code=700002)
    assert reason_for(bad_sig) == "key rejected: 700002 Signature for this request is not valid."
    assert reason_for(IpBanned("banned", retry_after_s=184, code=-1003), now_s=NOON) == (
        "IP banned until 12:03:04Z"
    )
    limited = RateLimited("Too many requests.", retry_after_s=7, code=429)
    assert reason_for(limited) == "rate limited for 7 s: 429 Too many requests."
    skew = ClockSkew("Timestamp outside recvWindow.", code=-1021)
    assert reason_for(skew) == "clock skew: -1021 Timestamp outside recvWindow."
    assert reason_for(Transient("connect failed")).startswith("venue not answering: Transient")
    assert reason_for(TimeoutError()) == "no answer in time"


def test_durations_read_naturally() -> None:
    assert [duration(s) for s in (4, 89, 180, 7199, 7500)] == [
        "4 s",
        "89 s",
        "3 min",
        "119 min",
        "2 h 5 min",
    ]


def test_redact_masks_every_secret_value() -> None:
    assert redact("key abcd1234 and abcd1234", ["abcd1234", ""]) == "key *** and ***"


def test_an_account_is_ready_only_when_no_check_failed_and_the_first_failure_is_the_reason() -> (
    None
):
    result = AccountReadiness("binance", "mm-1")
    assert result.reason == "not checked yet"
    assert not result.ready
    result.checks = [
        Check("key", True, "ok"),
        Check("trade", None, "unknown"),
        Check("clock", False, "clock skew 1.4 s > recvWindow 1.0 s"),
        Check("stream", False, "stream down: x"),
    ]
    assert not result.ready
    assert result.reason == "clock skew 1.4 s > recvWindow 1.0 s"
    result.checks[2] = Check("clock", True, "ok")
    result.checks.pop()
    assert result.ready
    assert result.reason is None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Events:
    def __init__(self) -> None:
        self.records: list[EventRecord] = []

    def emit(self, event: EventRecord) -> None:
        self.records.append(event)


def test_a_stream_down_longer_than_the_grace_makes_the_account_unready_once() -> None:
    clock, events = Clock(), Events()
    service = ReadinessService(events, stream_grace_s=60, clock=clock)
    ref = AccountRef("bingx", "mm-1")
    service.add(Target(ref, FakeExchange("bingx", "mm-1")), watch_stream=True)
    watched = service._watched[ref]
    watched.last = AccountReadiness("bingx", "mm-1", [Check("key", True, "ok")])
    service.on_state(ref, "live", "")
    assert service.reason(ref) is None
    service.on_state(ref, "down", "Transient: connection reset")
    clock.now += 59
    service.announce()
    assert service.reason(ref) is None  # a reconnect, not unreadiness
    clock.now += 121
    assert service.reason(ref) == "stream down 3 min: Transient: connection reset"
    service.announce()
    service.announce()
    assert [(e["type"], e.get("kind")) for e in events.records] == [("alarm", "not_ready")]
    assert "NOT READY bingx/mm-1: stream down 3 min" in service.status()
    service.on_state(ref, "live", "")
    assert [e["type"] for e in events.records] == ["alarm", "account_ready"]
    assert service.status() == "1/1 accounts ready"


def test_status_shows_a_reason_column_and_says_how_many_are_not_ready() -> None:
    status = {
        "latched": False,
        "accounts": [
            {"venue": "binance", "account": "mm-1", "stream": "live", "ready": True, "reason": ""},
            {
                "venue": "mexc",
                "account": "mm-1",
                "stream": "down",
                "ready": False,
                "reason": "key rejected: 700002 Signature for this request is not valid.",
            },
        ],
    }
    text = format_status(status)
    lines = text.splitlines()
    assert "REASON" in lines[2]
    mexc = next(line for line in lines if line.startswith("mexc/mm-1"))
    assert mexc.split()[1] == "NO"
    assert mexc.endswith("key rejected: 700002 Signature for this request is not valid.")
    binance = next(line for line in lines if line.startswith("binance/mm-1"))
    assert binance.split()[1] == "yes"
    assert binance.endswith(" -")
    assert "1 account(s) NOT READY" in text


def test_rate_headroom_and_a_venue_lock_are_read_from_the_connectors_budgets() -> None:
    bingx = build_exchange(
        "bingx",
        account="mm-1",
        api_key="k",
        api_secret="s",
        rest_url="http://127.0.0.1:9",
        ws_url="ws://127.0.0.1:9/market",
    )
    check = check_rate(bingx)
    assert (check.ok, check.detail) == (True, "headroom 100%")
    budget = next(iter(bingx.budgets.values()))  # type: ignore[attr-defined]
    budget.block(30.0)  # a 100410 lock
    check = check_rate(bingx)
    assert check.ok is False
    assert check.detail.startswith("rate limited for ")
    assert 0 < int(check.detail.split()[3]) <= 30
    binance = build_exchange(
        "binance",
        account="mm-1",
        api_key="k",
        api_secret="s",
        rest_url="http://127.0.0.1:9",
        ws_url="ws://127.0.0.1:9/ws-api/v3",
    )
    binance.budget.block(184.0, banned=True)  # type: ignore[attr-defined]  # an 418
    check = check_rate(binance)
    assert check.ok is False
    assert check.detail.startswith("IP banned until ")


class BrokenHeadroom(FakeExchange):
    def rate_headroom(self) -> dict[str, object]:
        raise RuntimeError("a bug in a check")


async def test_a_crashing_check_makes_the_account_unready_and_never_stops_the_service() -> None:
    events = Events()
    service = ReadinessService(events)
    ref = AccountRef("binance", "mm-1")
    service.add(Target(ref, BrokenHeadroom("binance", "mm-1")))
    await service.start()
    assert service.reason(ref) == "readiness check failed: RuntimeError"
    assert [e["type"] for e in events.records] == ["alarm"]


def clock_answering_after(answer: asyncio.Event) -> FakeExchange:
    """A BingX account whose server-time read (a readiness check) waits for `answer`."""

    class Hung(FakeExchange):
        async def server_time_ms(self) -> int:
            await answer.wait()
            return await super().server_time_ms()

    return Hung("bingx", "mm-1")


async def test_the_first_round_does_not_hold_back_the_daemons_start() -> None:
    """A venue that does not answer at start (or checks queued on a shared per-IP budget)
    must not delay READY and the inputs: `start` waits `start_wait_s`, `run` finishes it."""
    answer = asyncio.Event()
    hung = clock_answering_after(answer)
    ref = AccountRef("bingx", "mm-1")
    service = ReadinessService(Events(), timeout_s=60.0, start_wait_s=0.05)
    service.add(Target(ref, hung))
    await asyncio.wait_for(service.start(), timeout=5)
    assert service.reason(ref) == "not checked yet"
    runner = asyncio.create_task(service.run())
    answer.set()
    await eventually(lambda: service.rounds == 1)
    assert service.reason(ref) != "not checked yet"  # the round ended in `run`
    await service.stop()
    await asyncio.wait_for(runner, timeout=5)


async def test_a_stop_during_the_first_round_ends_it() -> None:
    hung = clock_answering_after(asyncio.Event())  # never
    service = ReadinessService(Events(), timeout_s=60.0, start_wait_s=0.01)
    service.add(Target(AccountRef("bingx", "mm-1"), hung))
    await service.start()
    runner = asyncio.create_task(service.run())
    await asyncio.sleep(0.01)
    await service.stop()
    await asyncio.wait_for(runner, timeout=5)
    assert service.rounds == 0


async def test_a_server_time_read_that_waited_says_unknown_not_skewed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read queued 10 s behind a shared per-IP budget knows the offset only to +/- 5 s: the
    clock check says unknown (the account stays ready), not "clock skew 5 s"."""
    now = [1_000_000.0]
    monkeypatch.setattr("killswitch.readiness.checks.time.time", lambda: now[0])

    class Queued(FakeExchange):
        async def server_time_ms(self) -> int:
            now[0] += 10.0
            return int((now[0] - 5.0) * 1000)  # the venue's clock equals ours

    check = await check_clock(Queued("bingx", "mm-1"), 5000)
    assert check.ok is None
    assert "not measured" in check.detail


def test_a_failed_account_never_read_whole_is_not_shown_as_nothing_left() -> None:
    from killswitch.control_client import format_kill

    account = {
        "venue": "bingx",
        "account": "mm-1",
        "orders_before": 0,
        "lists_before": 0,
        "cancelled": 0,
        "requests": 1,
        "retries": 0,
    }
    unread = {**account, "state": "failed", "verified": False, "still_open": {"orders": []}}
    flat = {**account, "state": "flat", "verified": True, "still_open": {"orders": []}}
    text = format_kill({"kill_id": "k", "state": "failed", "accounts": [unread, flat]})
    first, second = text.splitlines()[1:3]
    assert "left unknown (no complete read)" in first
    assert "left 0," in second
