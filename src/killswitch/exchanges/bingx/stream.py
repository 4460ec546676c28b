"""BingX user-data stream: the listenKey, the gzip `/market` connection, heartbeats, order events.

Functions of the connector (`StreamHost`), moved out of `BingxExchange` as they were."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from killswitch.exchanges.base import (
    Transient,
    VenueError,
)
from killswitch.exchanges.bingx.parse import decode_frame, is_text_ping, stream_error
from killswitch.exchanges.bingx.rest import Host
from killswitch.exchanges.bingx.venue import EXECUTION_REPORT
from killswitch.exchanges.budget import Priority
from killswitch.exchanges.rest import SignedRest
from killswitch.model import (
    StreamEvent,
    StreamSubscribed,
    StreamTerminated,
)

log = logging.getLogger(__name__)


class StreamHost(Host, Protocol):
    """What the user-data stream uses of the connector (`BingxExchange`)."""

    rest: SignedRest
    timeout_s: float
    heartbeat_timeout_s: float
    listen_key_refresh_s: float
    _ws_url: str

    async def create_listen_key(self, *, priority: Priority = Priority.BACKGROUND) -> str: ...
    async def extend_listen_key(self, key: str) -> bool: ...
    def _order_events(self, data: dict[str, Any]) -> list[StreamEvent]: ...


LISTEN_KEY_EXPIRED = "listenKeyExpired"
KEEPALIVE_RETRY_S = 60.0


def _event_of(msg: dict[str, Any]) -> object:
    data = msg.get("data")
    return data.get("e") if isinstance(data, dict) else None


def stream_lost(ex: Host, what: str) -> Transient:
    """The stream cannot go on (`what`): the supervisor reconnects and resnapshots."""
    return Transient(what, venue=ex.venue, account=ex.account, endpoint="ws /market")


async def stream_events(ex: StreamHost) -> AsyncIterator[StreamEvent]:
    key = await ex.create_listen_key()
    url = f"{ex._ws_url}?listenKey={key}"
    try:
        ws = await connect(
            url,
            ping_interval=None,
            open_timeout=ex.timeout_s,
            close_timeout=1.0,
            max_size=1 << 22,
            compression=None,
        )
    except (OSError, TimeoutError, WebSocketException) as exc:
        raise ex.rest.connect_failed(exc, "ws /market") from exc
    ex.rest.connected("ws /market")
    expired = asyncio.Event()
    keepalive = asyncio.create_task(
        keep_listen_key(ex, key, ws, expired), name=f"bingx-listenkey-{ex.account}"
    )
    try:
        subscribe = {"id": str(uuid.uuid4()), "reqType": "sub", "dataType": EXECUTION_REPORT}
        try:
            await ws.send(orjson.dumps(subscribe).decode())
        except ConnectionClosed as exc:
            raise stream_lost(ex, "stream closed before the subscription") from exc
        async for event in frames(ex, ws, key, expired, str(subscribe["id"])):
            yield event
            if isinstance(event, StreamTerminated):
                return
    finally:
        keepalive.cancel()
        await asyncio.wait([keepalive])
        await ws.close()


async def frames(
    ex: StreamHost, ws: ClientConnection, key: str, expired: asyncio.Event, sub_id: str
) -> AsyncIterator[StreamEvent]:
    loop = asyncio.get_running_loop()
    subscribed = False
    last_ping = loop.time()
    while True:
        wait_s = last_ping + ex.heartbeat_timeout_s - loop.time()
        try:
            async with asyncio.timeout(max(wait_s, 0.001)):
                frame = await ws.recv()
        except TimeoutError:
            raise stream_lost(ex, f"no server ping for {ex.heartbeat_timeout_s:.1f}s") from None
        except ConnectionClosed as exc:
            if expired.is_set() or not await key_alive(ex, key):
                yield StreamTerminated("listenKey expired")
                return
            raise stream_lost(
                ex, f"stream closed: code={exc.rcvd.code if exc.rcvd else None}"
            ) from exc
        if is_text_ping(frame):
            # The plain-text heartbeat (docs-v3's rules page, swap streams): `Ping` ->
            # `Pong`. Spot documents JSON; a venue may send either (§3.7).
            last_ping = loop.time()
            try:
                await ws.send("Pong")
            except ConnectionClosed:
                continue
            continue
        try:
            msg = decode_frame(frame)
        except (OSError, EOFError, orjson.JSONDecodeError) as exc:
            if isinstance(frame, str):
                # Order events come gzipped; stray text cannot be one of them.
                log.warning("bingx unexpected text frame account=%s", ex.account)
                continue
            # A binary frame we cannot read may have been an order event: resnapshot.
            raise stream_lost(ex, f"undecodable stream frame: {type(exc).__name__}") from exc
        if not isinstance(msg, dict):
            continue
        if "ping" in msg:
            last_ping = loop.time()
            pong = {"pong": msg["ping"], "time": msg.get("time", "")}
            try:
                await ws.send(orjson.dumps(pong).decode())
            except ConnectionClosed:
                continue  # the next recv() reports the close
            continue
        if LISTEN_KEY_EXPIRED in (msg.get("e"), msg.get("dataType"), _event_of(msg)):
            # The key ran out while the socket stays open (api-ai-skills websocket.md: the
            # connection receives `listenKeyExpired`): no order event comes after it.
            expired.set()
            yield StreamTerminated("listenKey expired")
            return
        if msg.get("dataType") == EXECUTION_REPORT and isinstance(msg.get("data"), dict):
            for event in ex._order_events(msg["data"]):
                yield event
            continue
        if not subscribed and msg.get("id") == sub_id and msg.get("code") == 0:
            subscribed = True
            yield StreamSubscribed()
            continue
        error = stream_error(msg)
        if error is not None:
            error.account = ex.account
            error.endpoint = "ws /market subscribe"
            raise error


async def key_alive(ex: StreamHost, key: str) -> bool:
    """After a close: is the key still valid? Bounded, so a blocked budget (a ban) cannot
    hold the stream open; when we cannot tell, the close is reported as a drop."""
    try:
        async with asyncio.timeout(ex.timeout_s):
            return await ex.extend_listen_key(key)
    except asyncio.CancelledError:
        raise
    except (VenueError, TimeoutError):
        return True


async def keep_listen_key(
    ex: StreamHost, key: str, ws: ClientConnection, expired: asyncio.Event
) -> None:
    """Extend the key every `listen_key_refresh_s`; close the stream once it is gone. A
    failed extension is tried again within `KEEPALIVE_RETRY_S`, not a whole interval later
    (the key lives 60 min; one failure must not let it run out)."""
    wait_s = ex.listen_key_refresh_s
    while True:
        await asyncio.sleep(wait_s)
        wait_s = ex.listen_key_refresh_s
        try:
            alive = await ex.extend_listen_key(key)
        except asyncio.CancelledError:
            raise
        except VenueError as exc:
            log.warning("bingx listenKey keep-alive failed account=%s error=%s", ex.account, exc)
            wait_s = min(wait_s, KEEPALIVE_RETRY_S)
            continue
        if not alive:
            log.warning("bingx listenKey expired account=%s", ex.account)
            expired.set()
            await ws.close()
            return


def _stream_url(ws_url: str) -> str:
    """The `/market` endpoint: a bare host gets the documented path appended."""
    base = ws_url.rstrip("/")
    return base if urlsplit(base).path else f"{base}/market"
