"""Binance user-data stream: its own ws-api connection, subscribed, read until it ends.

The user-data stream is a separate connection per `user_stream()` call:
`userDataStream.subscribe.signature` (any key type) or `session.logon` +
`userDataStream.subscribe` (Ed25519). The REST listenKey stream is retired [BN-CL 2026-01-21].
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, WebSocketException

from killswitch.exchanges.base import Transient
from killswitch.exchanges.binance.parse import VENUE, parse_frame
from killswitch.exchanges.binance.session import _connect
from killswitch.exchanges.budget import Priority, RateBudget
from killswitch.exchanges.rest import SignedRest
from killswitch.model import (
    StreamEvent,
    StreamSubscribed,
    StreamTerminated,
)

log = logging.getLogger(__name__)

STREAM_MAX_AGE_S = 23.5 * 3600


async def user_stream(
    ws_url: str,
    timeout_s: float,
    budget: RateBudget,
    account: str,
    subscribe: Callable[[ClientConnection], Awaitable[None]],
    rest: SignedRest,  # how a refused handshake is read and told to the budgets
) -> AsyncGenerator[StreamEvent, None]:
    """Subscribe one user-data stream on its own ws-api connection and yield its events.

    Raises `Transient` when the connection drops (the server pings every 20 s and
    `websockets` pings too, so a dead peer is noticed); yields `StreamTerminated` and
    stops on `eventStreamTerminated`, `serverShutdown`, or before the 24 h limit.
    """
    await budget.acquire(4, Priority.BACKGROUND)  # connect 2 + subscribe 2
    try:
        ws = await _connect(ws_url, timeout_s, stream=True)
    except (OSError, TimeoutError, WebSocketException) as exc:
        raise rest.connect_failed(exc, "ws user stream") from exc
    rest.connected("ws user stream")
    try:
        await subscribe(ws)
        yield StreamSubscribed()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STREAM_MAX_AGE_S
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                yield StreamTerminated("connection age limit")
                return
            try:
                async with asyncio.timeout(remaining):
                    raw = await ws.recv()
            except TimeoutError:
                continue
            except ConnectionClosed as exc:
                raise Transient(
                    f"user stream closed: {exc}",
                    venue=VENUE,
                    account=account,
                    endpoint="ws user stream",
                ) from exc
            for item in parse_frame(raw):
                yield item
                if isinstance(item, StreamTerminated):
                    return
    finally:
        await ws.close()


async def stream_request(
    ws: ClientConnection,
    req_id: int,
    method: str,
    params: dict[str, Any] | None,
    *,
    timeout_s: float,
    account: str,
    result: Callable[[dict[str, Any], str], Any],
) -> Any:
    request: dict[str, Any] = {"id": req_id, "method": method}
    if params is not None:
        request["params"] = params
    try:
        await ws.send(orjson.dumps(request).decode())
        async with asyncio.timeout(timeout_s):
            while True:
                frame = orjson.loads(await ws.recv())
                if isinstance(frame, dict) and frame.get("id") == req_id:
                    return result(frame, method)
    except (ConnectionClosed, TimeoutError, ValueError, TypeError, AttributeError) as exc:
        # Closed, silent or unreadable: this connection cannot carry the stream.
        raise Transient(
            f"{method} not acknowledged: {type(exc).__name__}",
            venue=VENUE,
            account=account,
            endpoint=f"ws {method}",
        ) from exc
