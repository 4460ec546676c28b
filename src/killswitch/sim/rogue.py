"""A rogue trading bot: keeps placing orders through a venue's public REST API until stopped.

It exists to prove that a kill catches orders placed while it runs. It signs as a third-party
client would, with its own few lines per venue (not the connectors' code), so a signing bug on
either side shows up as rejections:

    binance  POST /api/v3/order                  X-MBX-APIKEY  HMAC hex or Ed25519 over the query
    mexc     POST /api/v3/order                  X-MEXC-APIKEY HMAC lowercase hex over the query
    bingx    POST /openApi/spot/v1/trade/order   X-BX-APIKEY   HMAC hex over the decoded values

Outcomes are counted, never raised: `placed` (the venue returned an order id), `rejected` (the
venue refused; `throttled` counts the 429/418 among them), `unknown` (5xx, timeout or cut
connection: the order may or may not be on the book). A 429/418 pauses it for the venue's
Retry-After, as a well-behaved client would, unless `honor_retry_after=False`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import logging
import secrets
import time
from collections.abc import Sequence
from typing import Any, Self
from urllib.parse import quote

import aiohttp
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from yarl import URL

from killswitch.exchanges.signing import binance_ed25519_private_key

log = logging.getLogger(__name__)

PLACE_PATHS = {
    "binance": "/api/v3/order",
    "mexc": "/api/v3/order",
    "bingx": "/openApi/spot/v1/trade/order",
}
KEY_HEADERS = {"binance": "X-MBX-APIKEY", "mexc": "X-MEXC-APIKEY", "bingx": "X-BX-APIKEY"}


def _quote(value: str) -> str:
    return quote(value, safe="")


def _hmac_hex(secret: str, payload: str) -> str:
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


class RogueBot:
    """Place LIMIT orders at `rate_per_s` on `symbols` (round robin) in the background."""

    def __init__(
        self,
        *,
        venue: str,
        rest_url: str,
        api_key: str,
        api_secret: str,
        symbols: Sequence[str],
        key_type: str = "hmac",
        rate_per_s: float = 10.0,
        client_id_prefix: str = "rogue",
        side: str = "BUY",
        price: str = "1.5",
        quantity: str = "2",
        max_in_flight: int = 32,
        timeout_s: float = 5.0,
        recv_window_ms: int = 5000,
        honor_retry_after: bool = True,
    ) -> None:
        if venue not in PLACE_PATHS:
            raise ValueError(f"unknown venue {venue!r}: one of {sorted(PLACE_PATHS)}")
        if not symbols:
            raise ValueError("symbols must not be empty")
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        if key_type not in ("hmac", "ed25519") or (key_type == "ed25519" and venue != "binance"):
            raise ValueError(f"key_type {key_type!r} is not supported on {venue}")
        self.venue = venue
        self.url = rest_url.rstrip("/") + PLACE_PATHS[venue]
        self.api_key = api_key
        self._secret = api_secret
        self._ed25519 = binance_ed25519_private_key(api_secret) if key_type == "ed25519" else None
        self.symbols = list(symbols)
        self.interval_s = 1.0 / rate_per_s
        # A per-bot tag keeps client ids unique across bots and runs; BingX allows [A-Za-z0-9_].
        self.client_id_prefix = client_id_prefix
        self._client_ids = (
            f"{client_id_prefix}{secrets.token_hex(3)}x{n}" for n in itertools.count(1)
        )
        self.side = side
        self.price = price
        self.quantity = quantity
        self.max_in_flight = max_in_flight
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.recv_window_ms = recv_window_ms
        self.honor_retry_after = honor_retry_after
        self.attempts = 0
        self.placed = 0
        self.rejected = 0
        self.throttled = 0
        self.unknown = 0
        self.placed_ids: list[str] = []
        # (symbol, id): Binance numbers orders per symbol, so an id alone may name two orders.
        self.placed_keys: list[tuple[str, str]] = []
        self.last_rejection: str = ""
        self._symbol_cycle = itertools.cycle(self.symbols)
        self._session: aiohttp.ClientSession | None = None
        self._runner: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._progress = asyncio.Event()
        self._paused_until = 0.0

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Start placing in the background. Refuses to start twice."""
        if self._runner is not None:
            raise RuntimeError("rogue bot already started")
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.max_in_flight),
            timeout=self.timeout,
            skip_auto_headers=("User-Agent",),
        )
        self._runner = asyncio.create_task(self._run(), name=f"rogue-{self.venue}")

    async def stop(self) -> None:
        """Stop placing, let the requests in flight finish (so the counts are final)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            await asyncio.wait([runner])
        if self._in_flight:
            await asyncio.wait(list(self._in_flight))
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        log.info(
            "rogue bot stopped venue=%s attempts=%d placed=%d rejected=%d throttled=%d unknown=%d",
            self.venue,
            self.attempts,
            self.placed,
            self.rejected,
            self.throttled,
            self.unknown,
        )

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self._runner is not None and not self._runner.done()

    async def wait_placed(self, n: int) -> None:
        """Return once at least `n` orders were placed (wrap in `asyncio.timeout`)."""
        while self.placed < n:
            self._progress.clear()
            await self._progress.wait()

    def stats(self) -> dict[str, Any]:
        return {
            "venue": self.venue,
            "attempts": self.attempts,
            "placed": self.placed,
            "rejected": self.rejected,
            "throttled": self.throttled,
            "unknown": self.unknown,
        }

    # -- the loop ------------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            if self._paused_until > loop.time():
                await asyncio.sleep(self._paused_until - loop.time())
                next_at = loop.time()
            await self._slots.acquire()
            task = asyncio.create_task(self._place_one())
            self._in_flight.add(task)
            task.add_done_callback(self._done)
            next_at += self.interval_s
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:
                next_at = loop.time()  # fell behind (slow venue): do not burst to catch up

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("rogue bot request crashed venue=%s", self.venue, exc_info=task.exception())

    async def _place_one(self) -> None:
        assert self._session is not None
        client_id = next(self._client_ids)
        symbol = next(self._symbol_cycle)
        url, headers = self._signed_request(symbol, client_id)
        self.attempts += 1
        try:
            # encoded=True: send the query byte for byte as signed, never re-quoted.
            async with self._session.post(URL(url, encoded=True), headers=headers) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After", "")
                body = await resp.read()
        except asyncio.CancelledError:
            self.unknown += 1
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.unknown += 1
            log.debug("rogue bot request failed venue=%s error=%r", self.venue, exc)
            return
        self._record(status, retry_after, body, symbol)

    def _record(self, status: int, retry_after: str, body: bytes, symbol: str = "") -> None:
        if status >= 500:
            self.unknown += 1
            return
        try:
            data = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            data = None
        order_id = self._order_id(status, data)
        if order_id is not None:
            self.placed += 1
            self.placed_ids.append(order_id)
            self.placed_keys.append((symbol, order_id))
            self._progress.set()
            return
        self.rejected += 1
        if status in (418, 429):
            self.throttled += 1
            if self.honor_retry_after and retry_after.isdigit():
                loop = asyncio.get_running_loop()
                self._paused_until = max(self._paused_until, loop.time() + int(retry_after))
        if not self.last_rejection:
            log.warning(
                "rogue bot order rejected venue=%s status=%d body=%s",
                self.venue,
                status,
                body[:200].decode("utf-8", "replace"),
            )
        self.last_rejection = body[:500].decode("utf-8", "replace")

    def _order_id(self, status: int, data: Any) -> str | None:
        if status != 200 or not isinstance(data, dict):
            return None
        if self.venue == "bingx":
            inner = data.get("data")
            if data.get("code") != 0 or not isinstance(inner, dict):
                return None
            data = inner
        order_id = data.get("orderId")
        return None if order_id is None else str(order_id)

    # -- signing, per venue --------------------------------------------------------------------
    def _signed_request(self, symbol: str, client_id: str) -> tuple[str, dict[str, str]]:
        params = [
            ("symbol", symbol),
            ("side", self.side),
            ("type", "LIMIT"),
            ("quantity", self.quantity),
            ("price", self.price),
            ("newClientOrderId", client_id),
        ]
        if self.venue == "binance":
            params.insert(3, ("timeInForce", "GTC"))
        query = signed_query(
            self.venue, params, self._secret, self._ed25519, recv_window_ms=self.recv_window_ms
        )
        headers = {KEY_HEADERS[self.venue]: self.api_key}
        if self.venue == "mexc":
            headers["Content-Type"] = "application/json"
        return f"{self.url}?{query}", headers


def signed_query(
    venue: str,
    params: Sequence[tuple[str, str]],
    secret: str,
    ed25519: Ed25519PrivateKey | None = None,
    *,
    recv_window_ms: int,
) -> str:
    """`params`, `recvWindow` and `timestamp` URL-encoded in order, then `venue`'s signature.

    The live drill's one order is signed here too: like this bot, it is not a connector.
    """
    sent = [
        *params,
        ("recvWindow", str(recv_window_ms)),
        ("timestamp", str(int(time.time() * 1000))),
    ]
    query = "&".join(f"{k}={_quote(v)}" for k, v in sent)
    if venue == "bingx":
        # BingX signs the values as they read before URL-encoding, in the order sent.
        signature = _hmac_hex(secret, "&".join(f"{k}={v}" for k, v in sent))
    elif ed25519 is not None:  # Binance and MEXC sign the query string exactly as sent
        signature = _quote(base64.b64encode(ed25519.sign(query.encode())).decode())
    else:
        signature = _hmac_hex(secret, query)
    return f"{query}&signature={signature}"
