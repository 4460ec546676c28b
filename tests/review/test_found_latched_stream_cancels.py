"""Review of the latched phase: stream cancels (`kill/latched.py`).

* A stream cancel waiting at the account's gate (probe mode after a quiet spell), or re-sent
  after an unknown outcome, was sent after the reset that released its latch: scope violated.
  Each request is now checked as it is sent (`Kill.still_wanted`).
* An event landing after the drain task's coroutine returned, before its done callback ran,
  started no drain: the order waited for the next event or sweep. The drain now leaves
  `tasks` as it ends.
* A drain ran under the first latch's scope, so after an unknown outcome the re-read hid
  another latch's order, which was taken for gone. A stream kill now keeps every item in view.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from killswitch.exchanges.base import OutcomeUnknown
from killswitch.model import AccountRef
from tests.conftest import eventually
from tests.fakes import FakeExchange
from tests.review.helpers import HeldCancels, new_order
from tests.unit.test_engine import Rig, finished, kill_trigger, make_rig


async def test_no_stream_cancel_of_a_batch_is_sent_after_the_reset(tmp_path: Path) -> None:
    venue = HeldCancels("binance", "b1")
    rig = await make_rig(tmp_path, {"binance": venue})
    ref = AccountRef("binance", "b1")
    try:
        await rig.engine.submit(kill_trigger("k1", venues=["binance"]))
        await finished(rig, "k1")
        rig.clock.now += 60  # a quiet spell: the gate is back to probing (one at a time)

        venue.holding = True
        (first,) = venue.place("BTCUSDT", "bot-a")
        (second,) = venue.place("ETHUSDT", "bot-b")
        # one burst on the stream: both queued in the same batch
        rig.engine.on_stream_event(ref, new_order(venue, first))
        rig.engine.on_stream_event(ref, new_order(venue, second))
        await eventually(lambda: venue.entered == 1)
        await asyncio.sleep(0.05)
        assert venue.entered == 1  # the second waits at the gate

        assert await rig.engine.reset(actor="op", reason="resume trading")
        sent_before_reset = venue.entered
        venue.release.set()
        await rig.engine.wait_idle()
        sent_after = venue.entered - sent_before_reset
        assert sent_after == 0, f"{sent_after} stream cancel(s) sent after the reset"
    finally:
        venue.release.set()
        await rig.engine.stop()


async def test_no_stream_cancel_is_resent_after_the_reset(tmp_path: Path) -> None:
    """OutcomeUnknown on a stream cancel: the re-read and the re-send happen after the reset."""
    venue = FakeExchange("binance", "b1")
    rig = await make_rig(tmp_path, {"binance": venue})
    ref = AccountRef("binance", "b1")
    try:
        await rig.engine.submit(kill_trigger("k1", venues=["binance"]))
        await finished(rig, "k1")
        gate = asyncio.Event()
        (order,) = venue.place("BTCUSDT", "bot-a")
        venue.fail("cancel_order", OutcomeUnknown("timeout", venue="binance"))  # not applied
        venue.hold("snapshot", gate)  # the re-read after the unknown outcome is slow
        rig.engine.on_stream_event(ref, new_order(venue, order))
        await eventually(lambda: venue.count("snapshot") >= 0 and venue.count("cancel_order") == 1)
        await asyncio.sleep(0.05)
        assert await rig.engine.reset(actor="op", reason="resume trading")
        n = venue.count("cancel_order")
        gate.set()
        await rig.engine.wait_idle()
        assert venue.count("cancel_order") == n, "the stream cancel was re-sent after the reset"
        assert ("BTCUSDT", order) in venue.open_keys()
    finally:
        await rig.engine.stop()


class EventAfterAck(FakeExchange):
    """While `then` is set, a cancel's answer is followed on the loop by `then()` (a stream
    frame handled right after the drain task wakes up with this answer)."""

    def __init__(self, *a: object, **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.then = None

    async def cancel_order(self, symbol: str, order_id: str):  # type: ignore[no-untyped-def]
        then, self.then = self.then, None
        if then is not None:
            loop = asyncio.get_running_loop()
            task = asyncio.current_task()
            assert task is not None
            task.add_done_callback(lambda _t: loop.call_soon(then))
        return await super().cancel_order(symbol, order_id)


async def test_an_order_shown_as_the_drain_ends_is_cancelled(tmp_path: Path) -> None:
    venue = EventAfterAck("binance", "b1")
    rig = await make_rig(tmp_path, {"binance": venue})
    ref = AccountRef("binance", "b1")
    try:
        await rig.engine.submit(kill_trigger("k1", venues=["binance"]))
        await finished(rig, "k1")
        (first,) = venue.place("BTCUSDT", "bot-a")
        (second,) = venue.place("ETHUSDT", "bot-b")
        venue.then = lambda: rig.engine.on_stream_event(ref, new_order(venue, second))
        rig.engine.on_stream_event(ref, new_order(venue, first))
        await rig.engine.wait_idle()
        await asyncio.sleep(0.05)
        await rig.engine.wait_idle()
        assert ("BTCUSDT", first) not in venue.open_keys()
        assert ("ETHUSDT", second) not in venue.open_keys(), (
            "the stream showed it while latched, yet no cancel was sent; pending="
            f"{rig.engine._streams._stream_pending}"
        )
    finally:
        await rig.engine.stop()


async def latch_prefixes_a_and_b(rig: Rig) -> None:
    """Two latches on binance, over client ids `a-` and `b-`, each kill done."""
    await rig.engine.submit(kill_trigger("ka", venues=["binance"], client_order_id_prefix="a-"))
    await rig.engine.submit(kill_trigger("kb", venues=["binance"], client_order_id_prefix="b-"))
    await finished(rig, "ka")
    await finished(rig, "kb")


async def test_a_stream_order_of_a_second_latch_is_resent_after_an_unknown_outcome(
    tmp_path: Path,
) -> None:
    venue = FakeExchange("binance", "b1")
    rig = await make_rig(tmp_path, {"binance": venue})
    ref = AccountRef("binance", "b1")
    try:
        await latch_prefixes_a_and_b(rig)
        (a1,) = venue.place("BTCUSDT", "a-1")
        (b1,) = venue.place("ETHUSDT", "b-1")
        # b-1's cancel times out before it reached the matching engine (not applied)
        venue.fail(
            "cancel_order",
            OutcomeUnknown("timeout", venue="binance"),
            when=lambda args: args == ("ETHUSDT", b1),
        )
        rig.engine.on_stream_event(ref, new_order(venue, a1))
        rig.engine.on_stream_event(ref, new_order(venue, b1))
        await rig.engine.wait_idle()
        assert ("BTCUSDT", a1) not in venue.open_keys()
        assert ("ETHUSDT", b1) not in venue.open_keys(), (
            "b-1 (latched by kb, shown on the stream) was taken for gone and left working; "
            f"calls={[(c.method, c.args) for c in venue.calls[-4:]]}"
        )
    finally:
        await rig.engine.stop()


class BudgetedCancels(FakeExchange):
    """`cancel_order` waits for its rate budget (as every connector's `rest.request` does)
    before the request goes on the wire (`_enter` logs it)."""

    def __init__(self, *a: object, **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.budget_free = asyncio.Event()
        self.budget_free.set()
        self.waiting = 0

    async def cancel_order(self, symbol: str, order_id: str):  # type: ignore[no-untyped-def]
        self.waiting += 1
        await self.budget_free.wait()
        return await super().cancel_order(symbol, order_id)


async def test_a_stream_cancel_waiting_for_its_budget_is_not_sent_after_the_reset(
    tmp_path: Path,
) -> None:
    """Past the gate and `still_wanted`, a request may wait seconds for its venue budget: a
    reset meanwhile stops the drain, and nothing goes out for the released latch."""
    venue = BudgetedCancels("binance", "b1")
    rig = await make_rig(tmp_path, {"binance": venue})
    ref = AccountRef("binance", "b1")
    try:
        await rig.engine.submit(kill_trigger("k1", venues=["binance"]))
        await finished(rig, "k1")
        venue.budget_free.clear()
        (order,) = venue.place("BTCUSDT", "bot-a")
        rig.engine.on_stream_event(ref, new_order(venue, order))
        await eventually(lambda: venue.waiting == 1)
        sent_before = venue.count("cancel_order")
        assert await rig.engine.reset(actor="op", reason="resume trading")
        venue.budget_free.set()
        await rig.engine.wait_idle()
        assert venue.count("cancel_order") == sent_before
        assert ("BTCUSDT", order) in venue.open_keys()
    finally:
        venue.budget_free.set()
        await rig.engine.stop()


async def test_a_reset_of_one_latch_still_cancels_what_another_latch_holds(
    tmp_path: Path,
) -> None:
    """The drain stopped by a reset starts again over what a latch still covers."""
    venue = BudgetedCancels("binance", "b1")
    rig = await make_rig(tmp_path, {"binance": venue})
    ref = AccountRef("binance", "b1")
    try:
        await latch_prefixes_a_and_b(rig)
        venue.budget_free.clear()
        (a1,) = venue.place("BTCUSDT", "a-1")
        (b1,) = venue.place("ETHUSDT", "b-1")
        rig.engine.on_stream_event(ref, new_order(venue, a1))
        rig.engine.on_stream_event(ref, new_order(venue, b1))
        await eventually(lambda: venue.waiting >= 1)
        assert await rig.engine.reset(actor="op", reason="a- may trade", only=["ka"])
        venue.budget_free.set()
        await eventually(lambda: ("ETHUSDT", b1) not in venue.open_keys())
        await rig.engine.wait_idle()
        assert ("BTCUSDT", a1) in venue.open_keys()
    finally:
        venue.budget_free.set()
        await rig.engine.stop()
