"""Found by review 47 (of 1092772): a websocket handshake refused with no Retry-After was
counted under the path "" of the REST budgets, where no request ever succeeds: every later
refusal, however rare, doubled the block on every MEXC endpoint (the kill's cancels too) up
to 600 s. Handshakes now count under a path of their own, reset by a handshake that succeeds."""

from __future__ import annotations

from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from killswitch.exchanges.base import RateLimited
from killswitch.exchanges.budget import Priority
from killswitch.exchanges.mexc import MexcExchange

NOW = [1_000_000.0]


def _refused() -> InvalidStatus:
    return InvalidStatus(Response(429, "Too Many Requests", Headers(), b""))


async def test_a_refused_handshake_a_day_never_blocks_a_kill_for_ten_minutes() -> None:
    exchange = MexcExchange(
        account="a",
        api_key="k",
        api_secret="s" * 32,
        rest_url="http://127.0.0.1:9",
        ws_url="ws://127.0.0.1:9/ws",
        budget_clock=lambda: NOW[0],
    )
    try:
        await _days_of_refusals(exchange)
    finally:
        await exchange.close()  # its budgets shared per IP go with it (review 98: review 73
        # and 75, run after this test in one process, found them still there)


async def _days_of_refusals(exchange: MexcExchange) -> None:
    waits = []
    for _day in range(8):
        error = exchange.rest.connect_failed(_refused(), "ws")
        assert isinstance(error, RateLimited)
        waits.append(error.retry_after_s)
        NOW[0] += 60.0
        exchange.rest.connected("ws")  # the reconnect after the wait is served
        NOW[0] += 86_400.0
    assert max(waits) == waits[0]
    exchange.rest.connect_failed(_refused(), "ws")
    cancel = exchange.endpoint_budgets.budget("DELETE /api/v3/openOrders")
    assert cancel.delay_for(1, Priority.KILL) <= waits[0] + 1e-6
