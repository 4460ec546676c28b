"""Found by review 43: BingX's 2026 reference documents cancelAllAfter's answer as `triggerTime`
alone (ms, 0 once closed), no `status`; docs-v3 gives seconds with a status. The parser raised
on a missing status, so `check_dms` (preflight) took the arm as failed and never sent CLOSE:
the timer it armed beside live bots fired and cancelled every order of the account. Both
answers now read, and the check closes the timer whatever the arm answered."""

from __future__ import annotations

import asyncio

import pytest

from killswitch.exchanges.bingx.parse import dead_mans_switch_state
from killswitch.readiness.checks import check_dms
from tests.review.bingx_rig import bingx_with_answers, place


@pytest.mark.parametrize("dms_answer", ["status", "trigger_ms"])
async def test_the_preflight_check_leaves_no_timer_armed_under_either_answer(
    dms_answer: str,
) -> None:
    async with bingx_with_answers(dead_mans_switch_time_scale=0.2, dms_answer=dms_answer) as (
        sim,
        exchange,
        _,
    ):
        order = await place(sim, "BTC-USDT", "live_bot_order")
        check = await check_dms(exchange, 10)
        assert check.ok, check.detail
        assert not sim.dead_mans_switch_armed("bx0")
        await asyncio.sleep(2.5)  # 10 s on the venue at time scale 0.2 = 2 s
        assert order in {o.order_id for o in sim.book(sim.accounts["bx0"]).open_orders()}


def test_both_answers_read() -> None:
    armed = dead_mans_switch_state({"triggerTime": 1_796_000_000_123}, "bingx", "a")
    assert (armed.active, armed.trigger_time_s) == (True, 1_796_000_000)
    assert not dead_mans_switch_state({"triggerTime": 0}, "bingx", "a").active
    old = dead_mans_switch_state(
        {"triggerTime": 1_796_000_000, "status": "ACTIVATED", "note": ""}, "bingx", "a"
    )
    assert (old.active, old.trigger_time_s) == (True, 1_796_000_000)
    assert not dead_mans_switch_state({"triggerTime": 0, "status": "CLOSED"}, "bingx", "a").active
