"""Binance ws-api session: one WebSocket API connection, requests matched to answers by `id`."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from killswitch.exchanges.base import (
    OutcomeUnknown,
    RateLimited,
    VenueError,
)
from killswitch.exchanges.binance.parse import VENUE
from killswitch.exchanges.budget import fleet

log = logging.getLogger(__name__)

WS_API_PATH = "/ws-api/v3"

# A ws-api connection lives at most 24 h [BN-WS]: reconnect on our terms before that.
SESSION_MAX_AGE_S = 23.5 * 3600
MIN_BACKOFF_S = 0.25
MAX_BACKOFF_S = 30.0
STABLE_SESSION_S = 5.0
# At most 300 connection attempts per 5 min per IP [BN-WS "Connection limits"], ws-api
# sessions and user streams alike; we keep a fifth of it for whatever else shares the IP.
CONNECT_ATTEMPTS = 240
CONNECT_WINDOW_S = 300.0
STREAM_SHARE = 0.75  # of the window, for user streams: the rest is the ws-api sessions' alone


class _NotSent(Exception):
    """The ws-api session could not take the request: send it over REST instead."""


class WsApiSession:
    """One WebSocket API connection: requests matched to answers by `id`."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.logged_on = False
        self.draining = False  # serverShutdown seen: finish in-flight work, take no more
        # Methods this session's server refused by its route ("WebSocket API trading is not
        # enabled.", -1020), with its words: they go over REST while this session lasts.
        self.refused: dict[str, str] = {}
        self.opened_at = asyncio.get_running_loop().time()
        self.closed = asyncio.Event()
        self.lost = asyncio.Event()  # closed or draining: time for a new session
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read(), name="binance-ws-api-reader")

    @property
    def up(self) -> bool:
        return not self.closed.is_set() and not self.draining

    async def call(self, method: str, params: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send one request and return the answer frame."""
        if not self.up:
            raise _NotSent(method)
        req_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = future
        frame = orjson.dumps({"id": req_id, "method": method, "params": params}).decode()
        try:
            try:
                await self.ws.send(frame)
            except ConnectionClosed as exc:
                raise _NotSent(method) from exc
            # asyncio.timeout, never wait_for: on 3.11 wait_for can swallow a cancel that
            # races the result, and a cancelled close() would then wait forever.
            try:
                async with asyncio.timeout(timeout_s):
                    return await future
            except TimeoutError:
                # A session that leaves a request unanswered may be dead without knowing it
                # (pings take up to 40 s to tell): retire it, so the next request goes over
                # REST while a fresh session opens.
                log.warning("binance ws-api request unanswered; replacing the session")
                self.draining = True
                self.lost.set()
                raise OutcomeUnknown(
                    f"no answer within {timeout_s}s", venue=VENUE, endpoint=f"ws {method}"
                ) from None
        finally:
            self._pending.pop(req_id, None)

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                try:
                    frame = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    log.warning("binance ws-api sent a frame that is not JSON")
                    continue
                if not isinstance(frame, dict):
                    continue
                future = self._pending.get(frame.get("id"))  # type: ignore[arg-type]
                if future is not None and not future.done():
                    future.set_result(frame)
                    continue
                event = frame.get("event")
                if isinstance(event, dict) and event.get("e") == "serverShutdown":
                    log.warning("binance ws-api session got serverShutdown; reconnecting")
                    self.draining = True
                    self.lost.set()
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()
            self.lost.set()
            for req_id, future in list(self._pending.items()):
                if not future.done():
                    future.set_exception(
                        OutcomeUnknown(
                            "ws-api connection closed before the answer",
                            venue=VENUE,
                            endpoint=f"ws id={req_id}",
                        )
                    )

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.wait([self._reader])


def ws_api_url(ws_url: str) -> str:
    """The WebSocket API endpoint: `ws_url` itself, or its `/ws-api/v3` when it has no path."""
    if urlsplit(ws_url).path in ("", "/"):
        return ws_url.rstrip("/") + WS_API_PATH
    return ws_url


class ConnectAttempts:
    """At most `limit` (split over `limits.daemons`) connection attempts in any `window_s`: a
    sliding window, so no fixed window the venue may count in holds more either. Without it,
    a flapping network made every session and stream of every account reconnect every few
    seconds (backoffs reset once a connection had lasted 5 or 10 s): 25 accounts went far
    past Binance's 300 attempts per 5 min per IP (review 66)."""

    def __init__(
        self,
        limit: int = CONNECT_ATTEMPTS,
        window_s: float = CONNECT_WINDOW_S,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._sleep = sleep
        self._times: deque[float] = deque()
        self.waited = 0  # attempts that had to wait for the window (for tests and logs)

    async def acquire(self, what: str, *, share: float = 1.0) -> None:
        """Wait until one more attempt fits `share` of the window, and count it. User streams
        take at most `STREAM_SHARE` of it: flapping streams never use up what the kill's
        ws-api sessions need (review 73)."""
        warned = False
        while True:
            now = self._clock()
            while self._times and self._times[0] <= now - self.window_s:
                self._times.popleft()
            if len(self._times) < max(1, int(self.limit * share) // fleet()):
                self._times.append(now)
                return
            wait_s = self._times[0] + self.window_s - now
            if not warned:
                warned = True
                self.waited += 1
                log.warning(
                    "binance connection attempts at the per-IP limit; %s waits wait_s=%.1f",
                    what,
                    wait_s,
                )
            await self._sleep(wait_s)


_ATTEMPTS: dict[str, ConnectAttempts] = {}


def connect_attempts(url: str) -> ConnectAttempts:
    """The connection-attempt window of the endpoint `url` names: our connections all go to
    one ws-api host (sessions and user streams alike), so this is the IP's window, shared by
    every account of this process."""
    host = urlsplit(url).netloc or url
    attempts = _ATTEMPTS.get(host)
    if attempts is None:
        attempts = _ATTEMPTS[host] = ConnectAttempts()
    return attempts


async def _connect(
    url: str, timeout_s: float, api_key: str = "", *, stream: bool = False
) -> ClientConnection:
    attempts = connect_attempts(url)
    if stream:
        await attempts.acquire("ws user stream", share=STREAM_SHARE)
    else:
        await attempts.acquire("ws-api session")
    # No proxy from the environment and no compression: nothing slow on the kill path. The
    # key header, as on REST, names whose connection it is to a venue that counts weight per
    # client (the simulator counts loopback clients by key); Binance counts it per IP anyway.
    return await connect(
        url,
        open_timeout=timeout_s,
        proxy=None,
        compression=None,
        max_size=1 << 24,
        close_timeout=2.0,
        user_agent_header=None,
        additional_headers={"X-MBX-APIKEY": api_key} if api_key else None,
    )


async def keep_session(
    open_session: Callable[[], Awaitable[WsApiSession]],
    install: Callable[[WsApiSession], Awaitable[None]],
    account: str,
) -> None:
    """Keep one logged-on ws-api session open; reconnect with backoff when it goes."""
    loop = asyncio.get_running_loop()
    backoff = MIN_BACKOFF_S
    while True:
        try:
            fresh = await open_session()
        except (VenueError, _NotSent, OSError, TimeoutError, WebSocketException) as exc:
            log.warning(
                "binance ws-api session failed account=%s error=%s retry_in_s=%.2f",
                account,
                exc,
                backoff,
            )
            # A throttle or a ban (say, on the handshake) is waited out: the venue said so.
            wait_s = exc.retry_after_s if isinstance(exc, RateLimited) else 0.0
            await asyncio.sleep(max(backoff, wait_s))
            backoff = min(backoff * 2, MAX_BACKOFF_S)
            continue
        except Exception:
            # A bug here must not end the keeper: REST is the fallback, but the kill path
            # should get its session back.
            log.exception("binance ws-api session keeper error account=%s", account)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)
            continue
        await install(fresh)
        log.info("binance ws-api session up account=%s", account)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SESSION_MAX_AGE_S):
                await fresh.lost.wait()
        if loop.time() - fresh.opened_at < STABLE_SESSION_S:
            # Dropped right after opening: back off instead of reconnecting in a loop.
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)
        else:
            backoff = MIN_BACKOFF_S
