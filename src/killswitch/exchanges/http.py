"""The REST transport the venue connectors share: one warm aiohttp pool per account.

It sends bytes a connector already encoded and signed, and turns transport failures into the
taxonomy, separating "never sent" from "sent, no answer"::

    connect refused / DNS / TLS before sending  -> Transient      (not applied, retry)
    timeout or disconnect after sending         -> OutcomeUnknown (may have been applied)

HTTP statuses and bodies are the connector's to classify: the transport returns them raw.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from killswitch.exchanges.base import OutcomeUnknown, Transient, VenueError


@dataclass(frozen=True, slots=True)
class RawResponse:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


class RestTransport:
    """Keep-alive HTTP client for one venue account."""

    def __init__(
        self,
        base_url: str,
        *,
        venue: str,
        account: str,
        timeout_s: float = 5.0,
        connect_timeout_s: float = 2.0,
        pool_size: int = 64,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.venue = venue
        self.account = account
        self.timeout = aiohttp.ClientTimeout(
            total=timeout_s, connect=connect_timeout_s, sock_connect=connect_timeout_s
        )
        self.pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(
            limit=self.pool_size,
            keepalive_timeout=75,
            ttl_dns_cache=3600,
            enable_cleanup_closed=True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self.timeout, skip_auto_headers=("User-Agent",)
        )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("transport not started")
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: str = "",
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> RawResponse:
        """Send exactly `query` and `body` (already encoded and signed) and return the answer."""
        url = f"{self.base_url}{path}"
        if query:
            url = f"{url}?{query}"
        endpoint = f"{method} {path}"
        # A longer total keeps the pool's connect timeouts: a connect that hangs fails as soon.
        timeout = (
            aiohttp.ClientTimeout(
                total=timeout_s,
                connect=self.timeout.connect,
                sock_connect=self.timeout.sock_connect,
            )
            if timeout_s is not None
            else None
        )
        try:
            async with self.session.request(
                method,
                URL(url, encoded=True),
                data=body,
                headers=headers,
                timeout=timeout or self.timeout,
            ) as resp:
                payload = await resp.read()
                return RawResponse(resp.status, resp.headers, payload)
        except aiohttp.ClientConnectorError as exc:
            raise self._failed(
                Transient, f"connect failed: {type(exc).__name__}", endpoint
            ) from exc
        except aiohttp.ConnectionTimeoutError as exc:
            # no connection in time (a slow connect, a full pool): nothing was sent (review 85)
            raise self._failed(
                Transient, f"connect failed: {type(exc).__name__}", endpoint
            ) from exc
        except (TimeoutError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            raise self._failed(
                OutcomeUnknown, f"no answer: {type(exc).__name__}", endpoint
            ) from exc
        except aiohttp.ClientPayloadError as exc:
            raise self._failed(OutcomeUnknown, "truncated answer", endpoint) from exc
        except aiohttp.ClientError as exc:
            # An answer no HTTP client can read (a garbled status line or headers): the request
            # may have been applied. The library's error names the whole URL, signature and
            # all, so only its type travels (raised below, outside this handler: no context).
            unreadable = type(exc).__name__
        raise self._failed(OutcomeUnknown, f"unreadable answer: {unreadable}", endpoint)

    def _failed(self, kind: type[VenueError], message: str, endpoint: str) -> VenueError:
        """Return a `kind` error about `endpoint` on this transport's account."""
        return kind(message, venue=self.venue, account=self.account, endpoint=endpoint)
