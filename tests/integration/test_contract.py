"""The Exchange contract, run against every venue's simulator dialect (issue 4, "Done when").

Each test states one promise the engine relies on, whatever the venue: idempotent cancels,
throttling honoured, ambiguous outcomes reported as such, clock skew healed, and a user stream
that the supervisor keeps exactly equal to the venue's book through drops, silence and ends.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from killswitch.exchanges.base import (
    AlreadyGone,
    Exchange,
    Fatal,
    IpBanned,
    OutcomeUnknown,
    RateLimited,
)
from killswitch.exchanges.factory import connector_class
from killswitch.kill.planner import CancelRequest, RequestKind, plan
from killswitch.model import ListEvent, OrderEvent, Scope
from tests.conftest import eventually
from tests.fixtures.venues import VenueEnv, venue_env_fixture  # noqa: F401 - venue_env


# -- the interface ---------------------------------------------------------------------------
async def test_connector_implements_the_protocol_and_is_what_build_exchange_builds(
    venue_env: VenueEnv,
) -> None:
    ex = await venue_env.started()
    assert isinstance(ex, Exchange)
    assert ex.venue == venue_env.venue
    assert type(ex) is connector_class(venue_env.venue)
    caps = ex.capabilities
    assert caps.cancel_all_max_symbols >= 1
    assert caps.rate_limits.weight_per_window > 0
    assert caps.rate_limits.window_s > 0


async def test_snapshot_equals_the_venue_book_with_ids_as_strings(venue_env: VenueEnv) -> None:
    ex = await venue_env.started()
    ids = await venue_env.seed(venue_env.symbol, 3)
    ids += await venue_env.seed(venue_env.other_symbol, 2)
    lists = (
        {await venue_env.seed_list(venue_env.symbol)} if ex.capabilities.has_order_lists else set()
    )
    snap = await ex.snapshot()
    assert (
        {o.order_id for o in snap.orders}
        == venue_env.book_ids()
        == set(ids) | {leg for lst in snap.lists for leg in lst.order_ids}
    )
    assert all(isinstance(o.order_id, str) for o in snap.orders)
    assert {lst.list_id for lst in snap.lists} == lists
    assert snap.symbols() == {venue_env.symbol, venue_env.other_symbol}
    assert snap.server_time_ms > 0


# -- cancels ---------------------------------------------------------------------------------
async def test_cancelling_an_order_twice_gives_already_gone_the_second_time(
    venue_env: VenueEnv,
) -> None:
    ex = await venue_env.started()
    [oid, other] = await venue_env.seed(venue_env.symbol, 2)
    await ex.cancel_order(venue_env.symbol, oid)
    assert venue_env.book_ids() == {other}
    with pytest.raises(AlreadyGone):
        await ex.cancel_order(venue_env.symbol, oid)
    assert venue_env.book_ids() == {other}


async def test_cancel_all_twice_is_an_empty_ack_not_an_error(venue_env: VenueEnv) -> None:
    ex = await venue_env.started()
    ids = await venue_env.seed(venue_env.symbol, 3)
    [kept] = await venue_env.seed(venue_env.other_symbol)
    ack = await ex.cancel_all([venue_env.symbol])
    assert set(ack.cancelled) == {(venue_env.symbol, i) for i in ids}
    assert venue_env.book_ids() == {kept}
    again = await ex.cancel_all([venue_env.symbol])
    assert again.cancelled == ()
    assert venue_env.book_ids() == {kept}


async def test_cancel_all_covers_as_many_symbols_as_the_capabilities_promise(
    venue_env: VenueEnv,
) -> None:
    ex = await venue_env.started()
    a = await venue_env.seed(venue_env.symbol, 2)
    b = await venue_env.seed(venue_env.other_symbol, 2)
    if ex.capabilities.cancel_all_max_symbols >= 2:
        ack = await ex.cancel_all([venue_env.symbol, venue_env.other_symbol])
        assert set(ack.cancelled) == {
            *((venue_env.symbol, i) for i in a),
            *((venue_env.other_symbol, i) for i in b),
        }
    if ex.capabilities.cancel_all_without_symbol:
        await venue_env.seed(venue_env.symbol)
        await ex.cancel_all(None)
    else:
        for symbol in (venue_env.symbol, venue_env.other_symbol):
            await ex.cancel_all([symbol])
    assert venue_env.book_ids() == set()


async def test_snapshot_of_named_symbols_holds_only_those(venue_env: VenueEnv) -> None:
    ex = await venue_env.started()
    wanted = await venue_env.seed(venue_env.symbol, 2)
    await venue_env.seed(venue_env.other_symbol, 2)
    snap = await ex.snapshot([venue_env.symbol])
    assert {o.order_id for o in snap.orders} == set(wanted)


async def test_cancel_all_that_promises_to_cover_lists_leaves_no_leg(venue_env: VenueEnv) -> None:
    ex = await venue_env.started()
    if not (ex.capabilities.has_order_lists and ex.capabilities.cancel_all_covers_lists):
        pytest.skip(f"{venue_env.venue}: cancel-all is not promised to cover order lists")
    await venue_env.seed_list(venue_env.symbol)
    await venue_env.seed(venue_env.symbol)
    await ex.cancel_all([venue_env.symbol])
    assert venue_env.book_ids() == set()
    assert venue_env.book_list_ids() == set()


async def test_dead_mans_switch_arms_and_disarms_where_the_venue_has_one(
    venue_env: VenueEnv,
) -> None:
    ex = await venue_env.started()
    caps = ex.capabilities
    if not caps.dead_mans_switch:
        with pytest.raises(Fatal):
            await ex.arm_dead_mans_switch(60)
        return
    assert caps.dead_mans_switch_range_s is not None
    low, high = caps.dead_mans_switch_range_s
    first = await ex.arm_dead_mans_switch(low)
    armed = await ex.arm_dead_mans_switch(high)  # arming again pushes the deadline out
    assert first.active
    assert armed.active
    assert first.trigger_time_s is not None
    assert armed.trigger_time_s is not None
    assert armed.trigger_time_s > first.trigger_time_s
    assert armed.trigger_time_s * 1000 > venue_env.sim.now_ms()
    disarmed = await ex.disarm_dead_mans_switch()
    assert not disarmed.active


async def test_cancel_orders_by_id_reports_already_gone_ids_as_gone(venue_env: VenueEnv) -> None:
    ex = await venue_env.started()
    [a, b, c] = await venue_env.seed(venue_env.symbol, 3)
    await ex.cancel_order(venue_env.symbol, a)
    result = await ex.cancel_orders(venue_env.symbol, [a, b, c])
    assert set(result.cancelled) == {b, c}
    assert set(result.gone) == {a}
    assert result.failed == ()
    assert venue_env.book_ids() == set()


# -- failures classified ---------------------------------------------------------------------
async def test_rate_limit_raises_rate_limited_with_retry_after_and_the_next_request_waits_it(
    venue_env: VenueEnv,
) -> None:
    ex = await venue_env.started()
    [first, second] = await venue_env.seed(venue_env.symbol, 2)
    await venue_env.add_fault("rate_limit", account=venue_env.account, retry_after_s=1, count=1)
    with pytest.raises(RateLimited) as info:
        await ex.cancel_order(venue_env.symbol, first)
    assert not isinstance(info.value, IpBanned)
    if venue_env.spec.exact_retry_after:
        assert info.value.retry_after_s == pytest.approx(1.0, abs=0.35)
    else:  # no hint from the venue: a brief, jittered backoff, never minutes
        assert 0.5 <= info.value.retry_after_s <= 3.0
    assert venue_env.book_ids() == {first, second}  # refused, not applied
    await ex.cancel_order(venue_env.symbol, second)
    # Had the client sent before Retry-After passed, the sim would have refused it again.
    assert venue_env.sim.counters["http 429"] == 1
    assert venue_env.sim.counters["http 418"] == 0
    assert venue_env.book_ids() == {first}


async def test_a_stall_past_the_timeout_is_outcome_unknown(venue_env: VenueEnv) -> None:
    ex = await venue_env.started(timeout_s=0.5)
    [oid] = await venue_env.seed(venue_env.symbol)
    await venue_env.add_fault("stall", account=venue_env.account, stall_s=3.0, count=1)
    with pytest.raises(OutcomeUnknown):
        await ex.cancel_order(venue_env.symbol, oid)
    assert venue_env.book_ids() == {oid}  # the stalled request was never applied
    await ex.cancel_order(venue_env.symbol, oid)
    assert venue_env.book_ids() == set()


@pytest.mark.parametrize(
    ("kind", "applied"), [("error_before", False), ("error_after", True)], ids=["before", "after"]
)
async def test_a_5xx_is_outcome_unknown_whether_or_not_the_cancel_was_applied(
    venue_env: VenueEnv, kind: str, applied: bool
) -> None:
    ex = await venue_env.started()
    [oid] = await venue_env.seed(venue_env.symbol)
    await venue_env.add_fault(kind, account=venue_env.account, http_status=503, count=1)
    with pytest.raises(OutcomeUnknown):
        await ex.cancel_order(venue_env.symbol, oid)
    assert venue_env.book_ids() == (set() if applied else {oid})
    # Re-reading decides; a repeated cancel is safe either way.
    snap = await ex.snapshot()
    assert {o.order_id for o in snap.orders} == venue_env.book_ids()
    if applied:
        with pytest.raises(AlreadyGone):
            await ex.cancel_order(venue_env.symbol, oid)
    else:
        await ex.cancel_order(venue_env.symbol, oid)
    assert venue_env.book_ids() == set()


@pytest.mark.parametrize("skew_ms", [15_000, -15_000], ids=["venue-ahead", "venue-behind"])
async def test_clock_skew_is_resynced_and_the_cancel_succeeds(
    venue_env: VenueEnv, skew_ms: int
) -> None:
    ex = await venue_env.started()
    [oid] = await venue_env.seed(venue_env.symbol)
    await venue_env.add_fault("clock_skew", skew_ms=skew_ms)
    await ex.cancel_order(venue_env.symbol, oid)
    assert venue_env.book_ids() == set()
    assert abs(await ex.server_time_ms() - venue_env.sim.now_ms()) < 5_000


# -- the user stream under supervision -------------------------------------------------------
async def test_an_order_placed_by_another_client_appears_in_the_tracker(
    venue_env: VenueEnv,
) -> None:
    ex = await venue_env.started()
    seen: list[OrderEvent | ListEvent] = []
    sup = await venue_env.supervise(ex, on_event=lambda ref, ev: seen.append(ev))
    [oid] = await venue_env.seed(venue_env.other_symbol)
    await eventually(lambda: sup.tracker.get(oid) is not None)
    order = sup.tracker.get(oid)
    assert order is not None
    assert order.symbol == venue_env.other_symbol
    assert any(isinstance(e, OrderEvent) and e.order_id == oid and e.is_open for e in seen)
    await venue_env.fill(oid)
    await eventually(lambda: sup.tracker.get(oid) is None)
    assert venue_env.tracker_matches_book(sup.tracker)
    assert sup.gaps == 0  # delivered by the stream, not repaired by a resnapshot


async def test_a_busy_account_settles_and_stays_live_without_false_alarms(
    venue_env: VenueEnv,
) -> None:
    ex = await venue_env.started()
    stop = asyncio.Event()
    rounds = 0

    async def churn() -> None:
        # Another client keeps placing, and the market keeps filling, through the connect.
        nonlocal rounds
        working: list[str] = []
        while not stop.is_set():
            working += await venue_env.seed(venue_env.symbol)
            if len(working) > 5:
                await venue_env.fill(working.pop(0))
            rounds += 1

    task = asyncio.create_task(churn())
    try:
        sup = await venue_env.supervise(ex, reconcile_interval_s=0.3, reconcile_grace_ms=300)
        checks = sup.reconciles
        await eventually(lambda: sup.reconciles >= checks + 3)  # checks while orders flow
    finally:
        stop.set()
        await task
    assert rounds > 20
    await eventually(lambda: venue_env.tracker_matches_book(sup.tracker))
    assert sup.gaps == 0, sup.last_gap_reason


async def test_a_dropped_stream_is_reconnected_and_resnapshotted_to_equal_the_book(
    venue_env: VenueEnv,
) -> None:
    ex = await venue_env.started()
    [keep, cancel_later] = await venue_env.seed(venue_env.symbol, 2)
    sup = await venue_env.supervise(ex)
    assert venue_env.tracker_matches_book(sup.tracker)
    fault = await venue_env.add_fault("ws_drop", account=venue_env.account)
    await eventually(lambda: sup.gaps >= 1)
    # While the stream is down, the book changes: these events are never delivered.
    added = await venue_env.seed(venue_env.other_symbol, 2)
    await ex.cancel_order(venue_env.symbol, cancel_later)
    await venue_env.remove_fault(fault)
    await eventually(lambda: venue_env.tracker_matches_book(sup.tracker))
    assert {o.order_id for o in sup.tracker.open_orders()} == {keep, *added}
    assert sup.reconnects >= 1
    await venue_env.stream_ready()
    [late] = await venue_env.seed(venue_env.symbol)
    await eventually(lambda: late in sup.tracker)


async def test_a_silent_stream_is_detected_reconnected_and_resnapshotted(
    venue_env: VenueEnv,
) -> None:
    ex = await venue_env.started()
    [gone] = await venue_env.seed(venue_env.symbol)
    sup = await venue_env.supervise(ex, reconcile_interval_s=0.3, reconcile_grace_ms=200)
    fault = await venue_env.add_fault("ws_silent", account=venue_env.account)
    [unseen] = await venue_env.seed(venue_env.other_symbol)
    await ex.cancel_order(venue_env.symbol, gone)
    await eventually(lambda: sup.gaps >= 1)
    assert sup.last_gap_reason is not None
    assert sup.last_gap_reason.startswith("stream missed events")
    await eventually(lambda: venue_env.tracker_matches_book(sup.tracker))
    assert {o.order_id for o in sup.tracker.open_orders()} == {unseen}
    await venue_env.remove_fault(fault)
    await venue_env.stream_ready()
    gaps = sup.gaps
    [heard] = await venue_env.seed(venue_env.symbol)
    await eventually(lambda: heard in sup.tracker)
    assert venue_env.tracker_matches_book(sup.tracker)
    assert sup.gaps == gaps


@pytest.mark.parametrize("kind", ["listen_key_expiry", "server_shutdown"])
async def test_a_venue_ended_stream_is_resubscribed_and_resnapshotted(
    venue_env: VenueEnv, kind: str
) -> None:
    ex = await venue_env.started()
    sup = await venue_env.supervise(ex)
    fault = await venue_env.add_fault(kind, account=venue_env.account)
    await eventually(lambda: sup.gaps >= 1)
    await venue_env.remove_fault(fault)
    [oid] = await venue_env.seed(venue_env.symbol)
    await eventually(lambda: venue_env.tracker_matches_book(sup.tracker))
    assert oid in sup.tracker
    await venue_env.stream_ready()
    [heard] = await venue_env.seed(venue_env.other_symbol)
    await eventually(lambda: heard in sup.tracker)


async def test_order_lists_are_tracked_and_cancelled_as_a_whole(venue_env: VenueEnv) -> None:
    ex = await venue_env.started()
    if not ex.capabilities.has_order_lists:
        pytest.skip(f"{venue_env.venue} has no order lists")
    sup = await venue_env.supervise(ex)
    list_id = await venue_env.seed_list(venue_env.symbol)
    await eventually(lambda: venue_env.tracker_matches_book(sup.tracker))
    assert [lst.list_id for lst in sup.tracker.open_lists()] == [list_id]
    await ex.cancel_order_list(venue_env.symbol, list_id)
    assert venue_env.book_ids() == set()
    await eventually(lambda: venue_env.tracker_matches_book(sup.tracker))
    assert sup.tracker.open_lists() == []


# -- the whole account, the planner's way ----------------------------------------------------
async def _send(ex: Exchange, request: CancelRequest) -> None:
    """One planned request, as the engine sends it; an already-gone answer is success."""
    with contextlib.suppress(AlreadyGone):
        if request.kind is RequestKind.CANCEL_ALL_ACCOUNT:
            await ex.cancel_all(None)
        elif request.kind is RequestKind.CANCEL_ALL:
            await ex.cancel_all(list(request.symbols))
        elif request.kind is RequestKind.CANCEL_LIST:
            assert request.list_id is not None
            await ex.cancel_order_list(request.symbols[0], request.list_id)
        elif request.kind is RequestKind.CANCEL_ORDER:
            await ex.cancel_order(request.symbols[0], request.order_ids[0])
        else:
            result = await ex.cancel_orders(request.symbols[0], list(request.order_ids))
            assert result.failed == (), result.failed


async def test_planned_waves_leave_the_account_flat_proved_by_a_complete_read(
    venue_env: VenueEnv,
) -> None:
    ex = await venue_env.started()
    await venue_env.seed(venue_env.symbol, 4)
    await venue_env.seed(venue_env.other_symbol, 3)
    if ex.capabilities.has_order_lists:
        for _ in range(3):
            await venue_env.seed_list(venue_env.symbol)
        await venue_env.seed_list(venue_env.other_symbol)
    waves = 0
    requests = plan(Scope(), None, None, (), ex.capabilities)  # the first look: nothing read
    while True:
        await asyncio.gather(*(_send(ex, r) for r in requests))
        snap = await ex.snapshot()
        if snap.proves_flat:
            break
        waves += 1
        assert waves < 5, f"still open after {waves} waves: {snap}"
        requests = plan(Scope(), None, snap, (), ex.capabilities)
    assert venue_env.book_ids() == set()
    assert venue_env.book_list_ids() == set()
    counters = venue_env.sim.counters
    assert counters["http 429"] == 0, "the kill earned a throttling answer"
    assert counters["http 418"] == 0
