"""Review 55: one stream cancel that keeps failing held every later stream cancel of the
account behind it for up to `deadline_s` (DESIGN "Latched means latched: at once when a stream
shows it").

`StreamCancels` sent one batch at a time per account and awaited its wave to the end; a wave
retries a failing request (OutcomeUnknown: re-read, send again; Transient: back off) until the
stream kill's deadline (30 s by default). An order the stream showed meanwhile, even on another
symbol, waited in `_stream_pending` until then.

Now an order the stream shows while an earlier batch is still out goes at once in a batch of
its own, up to `MAX_STREAM_BATCHES` per account; an order already in flight in one batch is
never sent by another at the same time.

The venue here never answers a cancel on a stuck symbol until the test says so: "sent before
the first batch's retries ended" is then a matter of order, not of timing.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from killswitch.exchanges.base import CancelAck, OutcomeUnknown
from killswitch.kill import latched
from killswitch.model import AccountRef
from tests.conftest import eventually
from tests.fakes import FakeExchange
from tests.review.helpers import new_order
from tests.unit.test_engine import QUICK, finished, kill_trigger, make_rig

# The account's gate stays open for bursts throughout: this is about the stream drains, not
# the gate's lone probe after a quiet spell (the test moves the clock on).
OPEN = replace(QUICK, open_for_s=3600.0)


class StuckSymbols(FakeExchange):
    """A cancel of an order on a symbol in `stuck` goes on the wire and gets no answer until
    `answer` is set; then it times out (OutcomeUnknown, not applied), every time."""

    def __init__(self, *a: object, **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.stuck: set[str] = set()
        self.answer = asyncio.Event()
        self.on_the_wire: dict[tuple[str, str], int] = {}  # unanswered cancels, by order
        self.most_at_once: dict[tuple[str, str], int] = {}

    async def cancel_order(self, symbol: str, order_id: str) -> CancelAck:
        if symbol not in self.stuck:
            return await super().cancel_order(symbol, order_id)
        self._enter("cancel_order", (symbol, order_id))
        key = (symbol, order_id)
        self.on_the_wire[key] = self.on_the_wire.get(key, 0) + 1
        self.most_at_once[key] = max(self.most_at_once.get(key, 0), self.on_the_wire[key])
        try:
            await self.answer.wait()
        finally:
            self.on_the_wire[key] -= 1
        raise OutcomeUnknown("request timed out", venue=self.venue, code=-1007)

    def sent(self, symbol: str) -> int:
        return sum(1 for c in self.calls if c.method == "cancel_order" and c.args[0] == symbol)


async def test_an_order_shown_while_a_stream_cancel_is_stuck_is_cancelled_at_once(
    tmp_path: Path,
) -> None:
    venue = StuckSymbols("binance", "b1")
    rig = await make_rig(tmp_path, {"binance": venue}, config=OPEN)
    ref = AccountRef("binance", "b1")
    try:
        await rig.engine.submit(kill_trigger("k1", venues=["binance"]))
        await finished(rig, "k1")
        venue.stuck = {"BTCUSDT"}

        (x,) = venue.place("BTCUSDT", "bot-x")
        rig.engine.on_stream_event(ref, new_order(venue, x))
        await eventually(lambda: venue.sent("BTCUSDT") == 1)  # on the wire, unanswered

        (y,) = venue.place("ETHUSDT", "bot-y")
        rig.engine.on_stream_event(ref, new_order(venue, y))
        # Before the fix it waited for BTCUSDT's batch (here: for ever, as its first answer
        # never comes; with the venue answering, until that batch's deadline).
        await eventually(lambda: ("ETHUSDT", y) not in venue.open_keys(), timeout_s=5.0)
        assert not venue.answer.is_set()
        assert venue.sent("BTCUSDT") == 1  # the first batch is still on its first attempt

        # The stream shows x again once its dedupe window has passed, while its cancel is
        # still on the wire: no second cancel of x goes out beside it.
        rig.clock.now += rig.engine.config.deadline_s
        rig.engine.on_stream_event(ref, new_order(venue, x))
        (z,) = venue.place("SOLUSDT", "bot-z")
        rig.engine.on_stream_event(ref, new_order(venue, z))
        await eventually(lambda: ("SOLUSDT", z) not in venue.open_keys(), timeout_s=5.0)
        assert venue.sent("BTCUSDT") == 1

        venue.answer.set()  # every BTCUSDT cancel now times out, until the deadlines pass
        await rig.engine.wait_idle()
        assert venue.sent("BTCUSDT") > 1  # retried, and x was sent again once shown again
        assert venue.most_at_once[("BTCUSDT", x)] == 1
    finally:
        venue.answer.set()
        await rig.engine.stop()


async def test_stream_cancel_batches_in_flight_per_account_are_capped(tmp_path: Path) -> None:
    """Stuck batches do not multiply without bound: past the cap, new orders wait for the
    first lane to free, then go together."""
    venue = StuckSymbols("binance", "b1")
    rig = await make_rig(tmp_path, {"binance": venue})
    ref = AccountRef("binance", "b1")
    cap = latched.MAX_STREAM_BATCHES
    symbols = [f"S{i}USDT" for i in range(cap + 3)]
    try:
        await rig.engine.submit(kill_trigger("k1", venues=["binance"]))
        await finished(rig, "k1")
        venue.stuck = set(symbols)
        orders: list[tuple[str, str]] = []
        for n, symbol in enumerate(symbols, start=1):
            (order,) = venue.place(symbol, f"bot-{n}")
            orders.append((symbol, order))
            rig.engine.on_stream_event(ref, new_order(venue, order))
            want = min(n, cap)
            await eventually(lambda want=want: venue.count("cancel_order") >= want)
            await asyncio.sleep(0.02)
            assert venue.count("cancel_order") == want
        assert len(rig.engine._streams.tasks) == cap

        venue.stuck = set()  # the venue recovers: retries and the waiting orders get through
        venue.answer.set()
        await rig.engine.wait_idle()
        assert not set(orders) & venue.open_keys()
        assert not rig.engine._streams.tasks
    finally:
        venue.answer.set()
        await rig.engine.stop()
