"""Risk rules on user-data streams: fill notional, order rate, stream down or silent."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from killswitch.handlers.rules import RiskRules
from killswitch.model import AccountRef, ExecType, ListEvent, Mode, OrderEvent, Scope, Trigger
from killswitch.settings import RuleSettings
from killswitch.streams.supervisor import StreamState
from tests.conftest import eventually

MM1 = AccountRef("binance", "mm-1")
MM2 = AccountRef("binance", "mm-2")


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


async def never(_trigger: Trigger) -> None:
    raise AssertionError("not submitted in pure checks")


def rule(kind: str, limit: float, **kw: Any) -> RuleSettings:
    base = {"kind": kind, "venue": "binance", "account": "mm-1", "limit": limit}
    return RuleSettings.model_validate(base | kw)


def rules(clock: Clock, *settings: RuleSettings) -> RiskRules:
    return RiskRules(settings, never, clock=clock, wall_ms=lambda: 1_763_676_000_000)


def fill(qty: str, price: str, exec_type: ExecType = ExecType.TRADE) -> OrderEvent:
    return OrderEvent(
        symbol="BTCUSDT",
        order_id="1",
        client_order_id="c1",
        exec_type=exec_type,
        status="PARTIALLY_FILLED",
        is_open=True,
        event_time_ms=0,
        last_qty=qty,
        last_price=price,
    )


def new_order(n: int) -> OrderEvent:
    return OrderEvent(
        symbol="BTCUSDT",
        order_id=str(n),
        client_order_id=f"c{n}",
        exec_type=ExecType.NEW,
        status="NEW",
        is_open=True,
        event_time_ms=0,
    )


def queued(r: RiskRules) -> list[Trigger]:
    items: list[Trigger] = []
    while r.submitter.pending():
        items.append(r.submitter._queue.get_nowait())
    return items


def test_fill_notional_above_the_limit_in_the_window_fires_the_accounts_kill() -> None:
    clock = Clock()
    r = rules(clock, rule("fill_notional", 10_000, window_s=60))
    r.on_event(MM1, fill("0.1", "50000"))  # 5,000
    clock.now += 30
    r.on_event(MM1, fill("0.1", "50000"))  # 10,000: not above
    assert queued(r) == []
    clock.now += 1
    r.on_event(MM1, fill("0.0001", "50000"))  # 10,005
    [trigger] = queued(r)
    assert trigger.mode is Mode.KILL
    assert trigger.scope == Scope.of(["binance"], ["mm-1"])
    assert trigger.source == "rule"
    assert trigger.actor == "rule:fill_notional:binance/mm-1"
    assert trigger.reason == ("filled notional 10005.00 in 60s > limit 10000 on binance/mm-1")


def test_fills_that_left_the_window_do_not_count() -> None:
    clock = Clock()
    r = rules(clock, rule("fill_notional", 10_000, window_s=60))
    r.on_event(MM1, fill("0.15", "50000"))  # 7,500
    clock.now += 61
    r.on_event(MM1, fill("0.15", "50000"))  # 7,500 again, the first one expired
    assert queued(r) == []


def test_only_trades_count_towards_notional_and_unreadable_fills_are_skipped() -> None:
    clock = Clock()
    r = rules(clock, rule("fill_notional", 100))
    r.on_event(MM1, fill("1", "1000", ExecType.NEW))
    r.on_event(MM1, fill("1", "1000", ExecType.CANCELED))
    r.on_event(MM1, fill("bad", "1000"))
    r.on_event(MM1, fill("nan", "1000"))
    assert queued(r) == []


def test_a_tripped_rule_fires_once_and_rearms_when_the_window_clears() -> None:
    clock = Clock()
    r = rules(clock, rule("fill_notional", 100, window_s=10))
    r.on_event(MM1, fill("1", "150"))
    r.on_event(MM1, fill("1", "150"))
    assert len(queued(r)) == 1
    clock.now += 11
    assert r.check() == []  # window empty: re-armed
    r.on_event(MM1, fill("1", "150"))
    assert len(queued(r)) == 1
    assert r.rules[0].fired == 2


def test_events_of_other_accounts_do_not_count() -> None:
    clock = Clock()
    r = rules(clock, rule("fill_notional", 100))
    r.on_event(MM2, fill("1", "1000"))
    assert queued(r) == []


def test_order_rate_above_the_limit_fires_with_the_configured_scope_and_mode() -> None:
    clock = Clock()
    r = rules(
        clock,
        rule(
            "order_rate",
            5,
            window_s=2,
            mode="cancel",
            scope={"accounts": ["mm-1"], "client_order_id_prefix": "bot7-"},
        ),
    )
    for n in range(10):  # 5/s over 2 s: at the limit
        r.on_event(MM1, new_order(n))
        clock.now += 0.1
    assert queued(r) == []
    r.on_event(MM1, new_order(10))
    [trigger] = queued(r)
    assert trigger.mode is Mode.CANCEL
    assert trigger.scope == Scope.of([], ["mm-1"], [], "bot7-")
    assert "11 new orders in 2s (5.50/s > limit 5/s)" in trigger.reason


def test_order_rate_ignores_non_new_events_and_lists() -> None:
    clock = Clock()
    r = rules(clock, rule("order_rate", 0.5, window_s=2))
    r.on_event(MM1, fill("1", "1"))
    r.on_event(MM1, ListEvent("BTCUSDT", "L1", "lc", True, ("1", "2"), 0))
    assert queued(r) == []


def test_a_stream_never_live_fires_after_the_limit() -> None:
    clock = Clock()
    r = rules(clock, rule("stream_down", 30))
    clock.now += 30
    assert r.check() == []
    clock.now += 0.5
    [trigger] = r.check()
    assert "not live for 30.5s (state down, limit 30s)" in trigger.reason


def test_a_stream_that_goes_down_fires_once_and_rearms_when_live_again() -> None:
    clock = Clock()
    r = rules(clock, rule("stream_down", 10))
    r.on_state(MM1, StreamState.LIVE)
    clock.now += 100
    assert r.check() == []
    r.on_state(MM1, StreamState.DOWN, "gap")
    clock.now += 5
    r.on_state(MM1, StreamState.CONNECTING)  # still not live: the clock keeps running
    clock.now += 6
    assert len(r.check()) == 1
    clock.now += 60
    assert r.check() == []
    r.on_state(MM1, StreamState.LIVE)
    r.on_state(MM1, StreamState.DOWN)
    clock.now += 11
    assert len(r.check()) == 1


def test_a_live_but_silent_stream_fires_only_when_silence_is_configured() -> None:
    clock = Clock()
    quiet = rules(clock, rule("stream_down", 10))
    watched = rules(clock, rule("stream_down", 10, silent_s=20))
    for r in (quiet, watched):
        r.on_state(MM1, StreamState.LIVE)
        r.on_event(MM1, new_order(1))
    clock.now += 21
    assert quiet.check() == []
    [trigger] = watched.check()
    assert "live but silent for 21.0s (limit 20s)" in trigger.reason
    clock.now += 100
    assert watched.check() == []
    watched.on_event(MM1, new_order(2))
    clock.now += 21
    assert len(watched.check()) == 1


def test_silent_s_is_only_for_stream_down_rules() -> None:
    with pytest.raises(ValueError, match="silent_s applies to stream_down"):
        rule("order_rate", 1, silent_s=5)


async def test_the_service_submits_fired_triggers() -> None:
    submitted: list[Trigger] = []

    async def submit(trigger: Trigger) -> None:
        submitted.append(trigger)

    r = RiskRules([rule("fill_notional", 100)], submit, check_interval_s=0.01)
    task = asyncio.create_task(r.run())
    r.on_event(MM1, fill("1", "101"))
    await eventually(lambda: submitted, timeout_s=10)
    await r.stop()
    await asyncio.wait_for(task, 10)
    assert [t.actor for t in submitted] == ["rule:fill_notional:binance/mm-1"]
    assert r.status() == "1 rules, tripped: fill_notional:binance/mm-1"
