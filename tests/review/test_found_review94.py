"""Review 94, of 8e4e305 (the BingX lesson "does `cancelOpenOrders` cover OCO lists?").

- A "covers" learned in error (F1) left every list open until the deadline: each later wave
  planned only another cancel-all from the capabilities read when the kill began. Now lists a
  read shows after a wave get requests of their own, and a wave plans with what the venue has
  taught since. And "covers" was learned from lists gone from a read begun after the
  acknowledgement, which our own list cancels on their way, a second cancel-all, a single leg
  cancel or a fill explain as well: now only legs in the cancel-all's own answer teach it.
- "Does not cover" went unlearned when our clock's margin (the last sync's round trip) was
  longer than the lists' age (F2): the venue's own time in the answer (`updateTime`) now says
  when the cancel-all acted. An `oco/cancel` answered after its leg's stream event taught
  nothing (F3: the list was looked up after the answer); leg-id batches and single leg
  cancels that found a list open taught nothing either (F5).

The real connector (and engine, stream supervisor, tracker) against the BingX simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from killswitch.exchanges.bingx import BingxExchange
from killswitch.kill.config import EngineConfig
from killswitch.model import AccountRef, Mode, Scope, Trigger
from killswitch.sim.bingx import BingxSim
from killswitch.sim.faults import Fault, FaultKind
from killswitch.streams.supervisor import StreamSupervisor
from killswitch.streams.tracker import OrderTracker
from tests.fixtures.bingx import bingx_venue
from tests.integration.test_bingx_kill import bx_rig, kill, seed_lists
from tests.review.bingx_rig import bingx_engine
from tests.review.test_found_bingx_cancel_all_lesson import (
    CANCEL_ALL,
    LIST_READ,
    OCO_CANCEL,
    SPOT,
    log_of,
    oco_legs,
)

# A kill that cannot end flat fails quickly.
SHORT = EngineConfig(
    deadline_s=8.0,
    retry_initial_s=0.05,
    retry_max_s=1.0,
    quiet_window_s=0.3,
    sweep_interval_s=3600.0,
)


def covers(ex: BingxExchange) -> Any:
    return ex.learned_paths()["cancel_all_covers_lists"]


@contextlib.asynccontextmanager
async def three_lists(**options: Any) -> AsyncIterator[tuple[BingxSim, BingxExchange]]:
    """A strictest BingX sim (`options`: its switches and faults) with 3 OCO lists open on
    `bx0`, and a started connector for it."""
    async with bingx_venue(accounts=1, variant="strictest", **options) as (sim, make):
        sim.seed(sim.accounts["bx0"], [], [oco_legs(i) for i in range(3)])
        exchange = make("bx0")
        await exchange.start()
        yield sim, exchange


async def test_a_kill_that_believes_cancel_all_covers_lists_in_error_still_ends_flat(
    tmp_path: Path,
) -> None:
    # No stream: the kill knows the lists from its reads only (a tracker on the stream holds
    # the legs as plain orders, which hid this: they were cancelled by id).
    learned = tmp_path / "learned-bx0.json"
    learned.write_text(json.dumps({"cancel_all_covers_lists": True}))
    # The cancel-all's answer comes after the first look has read the lists (which then
    # cannot teach better): its plan trusts the lesson.
    slow = Fault(FaultKind.LATENCY, endpoint=CANCEL_ALL, latency_ms=400.0)
    async with bingx_venue(accounts=1, variant="strictest", faults=[slow]) as (sim, make):
        sim.seed(sim.accounts["bx0"], [], [oco_legs(i) for i in range(6)])
        exchange = make("bx0", learned_path=learned)
        await exchange.start()
        async with bingx_engine(exchange, tmp_path / "j.jsonl", SHORT) as engine:
            trigger = Trigger("wrong-covers", "test", Mode.KILL, "r94", Scope.of(venues=["bingx"]))
            await engine.submit(trigger)
            k = engine.kill_for("wrong-covers")
            assert k is not None
            async with asyncio.timeout(SHORT.deadline_s + 30):
                await k.done.wait()
            left = len(sim.book(sim.accounts["bx0"]).lists)
            assert k.flat.is_set(), (k.state, left)
            assert left == 0
            assert covers(exchange) is False, "and it learned better on the way"


async def test_lists_gone_by_our_own_cancels_on_their_way_teach_no_covers() -> None:
    slow = Fault(FaultKind.LATENCY, endpoint=OCO_CANCEL, latency_ms=300.0)
    async with three_lists(faults=[slow]) as (sim, ex):
        snap = await ex.snapshot()
        cancels = [
            asyncio.create_task(ex.cancel_order_list(x.symbol, x.list_id)) for x in snap.lists
        ]
        while len(log_of(sim, OCO_CANCEL)) < 3:  # all three on their way
            await asyncio.sleep(0.005)
        await ex.cancel_all(None)
        await asyncio.gather(*cancels)
        assert len(sim.book(sim.accounts["bx0"]).lists) == 0, "our oco/cancels took them"
        await ex.snapshot()
        assert covers(ex) is not True


async def test_a_second_cancel_all_or_a_fill_teach_no_covers() -> None:
    async with three_lists(leg_id_cancels_list=True) as (sim, ex):
        snap = await ex.snapshot()
        await ex.cancel_all(None)
        book = sim.book(sim.accounts["bx0"])
        assert len(book.lists) == 3, "strictest: the cancel-all left them"
        first, *others = snap.lists
        book.fill(first.order_ids[0], symbol=first.symbol)  # filled: gone, not cancelled
        for lst in others:
            await ex.cancel_order(lst.symbol, lst.order_ids[0])  # our own leg cancels
        await ex.cancel_all(None)
        await ex.snapshot()
        assert not book.lists
        assert covers(ex) is False, "the leg cancels found lists open after the cancel-all"


async def test_leg_id_batches_that_find_lists_open_teach_does_not_cover() -> None:
    async with three_lists(leg_id_cancels_list=True) as (sim, ex):
        snap = await ex.snapshot()
        await ex.cancel_all(None)
        reads = len(log_of(sim, LIST_READ))
        for lst in snap.lists:
            await ex.cancel_orders(lst.symbol, list(lst.order_ids))
        assert not sim.book(sim.accounts["bx0"]).lists
        assert len(log_of(sim, LIST_READ)) == reads, "no list read: the batches are the witness"
        assert covers(ex) is False


async def test_an_oco_cancel_answered_after_its_leg_s_stream_event_teaches_it() -> None:
    slow = Fault(FaultKind.LATENCY, endpoint=OCO_CANCEL, latency_ms=50.0)
    async with three_lists(faults=[slow]) as (_, ex):
        tracker = OrderTracker(AccountRef("bingx", "bx0"))
        supervisor = StreamSupervisor(ex, tracker, reconcile_interval_s=None)
        task = asyncio.create_task(supervisor.run())
        try:
            assert await supervisor.wait_live(20.0)
            snapshot = await ex.snapshot()
            await ex.cancel_all(None)
            target = snapshot.lists[0]
            await ex.cancel_order_list(target.symbol, target.list_id)
            assert covers(ex) is False
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_lists_younger_than_a_slow_clock_sync_are_still_known_survivors(
    tmp_path: Path,
) -> None:
    # The margin for our clock's error is the last sync's round trip (400 ms here), longer
    # than the lists' age at the kill; no read saw them before the cancel-all.
    slow_time = Fault(FaultKind.LATENCY, endpoint=f"{SPOT}/server/time", latency_ms=400.0)
    async with bx_rig(tmp_path, "strictest", faults=[slow_time]) as r:
        assert r.exchange.clock.last_rtt_ms >= 400
        async with aiohttp.ClientSession() as session:
            await seed_lists(r, session, 6)
        placed = max(x.time_ms for x in r.sim.book(r.sim.accounts["bx0"]).lists.values())
        k = await kill(r, "slow-sync")
        assert k.flat.is_set(), k.state
        arrived = log_of(r.sim, CANCEL_ALL)[0]["t"] * 1000
        assert arrived - placed < 400, "the lists were younger than the margin"
        assert covers(r.exchange) is False
