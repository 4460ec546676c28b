"""Review 90: the simulator sent a push half a round trip before any real venue can.

7249f23 split a request's round trip as on a network: the venue acts on a request half a round
trip after it came and answers one round trip after. But the pushes its handling made were sent
at once, so they reached the client half a round trip after the request left and half a round
trip before its answer; on a network they travel the other half back too, and come with the
answer. A bench or a test then saw stream events earlier than a venue can deliver them.

Now a push caused by a request leaves when its answer does (`sim.frames.PUSH_DUE`), on every
venue's stream, behind whatever its connection sent before.

The assertion is a lower bound on a delay the simulator adds (a busy machine only delays the
push further): never a bound on how fast anything of ours is.
"""

from __future__ import annotations

import time

from killswitch.model import AccountRef, ListEvent, OrderEvent
from tests.conftest import eventually
from tests.fixtures.venues import VenueEnv, venue_env_fixture  # noqa: F401 (venue_env)

ROUND_TRIP_MS = 400.0


async def test_a_cancel_s_push_comes_with_its_answer_not_half_a_round_trip_before(
    venue_env: VenueEnv,
) -> None:
    exchange = await venue_env.started()
    gone_at: dict[str, float] = {}
    placed: set[str] = set()

    def on_event(ref: AccountRef, event: OrderEvent | ListEvent) -> None:
        if not isinstance(event, OrderEvent):
            return
        if event.is_open:
            placed.add(event.order_id)
        else:
            gone_at.setdefault(event.order_id, time.monotonic())

    await venue_env.supervise(exchange, on_event=on_event, reconcile_interval_s=None)
    [order_id] = await venue_env.seed(venue_env.symbol)
    await eventually(lambda: order_id in placed, timeout_s=10)
    await venue_env.add_fault("latency", account=venue_env.account, latency_ms=ROUND_TRIP_MS)
    sent = time.monotonic()
    await exchange.cancel_order(venue_env.symbol, order_id)
    await eventually(lambda: order_id in gone_at, timeout_s=10)
    # Before the fix the push came at half the round trip (~200 ms), its answer at ~400 ms.
    after_ms = (gone_at[order_id] - sent) * 1000
    assert after_ms >= 0.9 * ROUND_TRIP_MS, f"push {after_ms:.0f} ms after the cancel left"
