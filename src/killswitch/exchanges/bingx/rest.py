"""BingX's signed REST path: budgets, the error lock, signing, the envelope, rate-limit holds.

Functions of the connector (`RestHost`), moved out of `BingxExchange` as they were."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import quote

import orjson
from multidict import CIMultiDictProxy

from killswitch.exchanges.base import (
    ClockSkew,
    IpBanned,
    OutcomeUnknown,
    RateLimited,
)
from killswitch.exchanges.bingx.errors import classify, epoch_in
from killswitch.exchanges.bingx.venue import (
    BACKOFF_FLAT_REPEATS,
    BACKOFF_INITIAL_S,
    BACKOFF_MAX_S,
    EPOCH_MARGIN_S,
    ERROR_LOCK_COUNT,
)
from killswitch.exchanges.budget import (
    ErrorCounter,
    Priority,
    RateBudget,
    SlidingBudget,
    acquire_all,
)
from killswitch.exchanges.clock import ServerClock
from killswitch.exchanges.http import RawResponse, RestTransport
from killswitch.exchanges.signing import bingx_signed_query

log = logging.getLogger(__name__)


class RestHost(Protocol):
    """What the request path reads of the connector (`BingxExchange`)."""

    @property
    def venue(self) -> str: ...
    @property
    def account(self) -> str: ...
    @property
    def recv_window_ms(self) -> int: ...
    @property
    def clock(self) -> ServerClock: ...
    @property
    def errors(self) -> ErrorCounter: ...
    @property
    def group_budget(self) -> RateBudget: ...
    @property
    def budgets(self) -> dict[str, SlidingBudget]: ...
    @property
    def ip_budgets(self) -> dict[str, SlidingBudget]: ...
    @property
    def _backoffs(self) -> dict[str, int]: ...
    @property
    def _headers(self) -> dict[str, str]: ...
    @property
    def _rng(self) -> random.Random: ...
    @property
    def _secret(self) -> str: ...
    @property
    def _transport(self) -> RestTransport: ...
    async def resync_clock(self) -> None: ...


async def request(
    ex: RestHost,
    method: str,
    path: str,
    params: Sequence[tuple[str, str]] = (),
    *,
    signed: bool = True,
    priority: Priority = Priority.KILL,
) -> Any:
    """Send one request and return the envelope's `data`; on ClockSkew resync, retry once."""
    try:
        return await send(ex, method, path, params, signed, priority)
    except ClockSkew:
        if not signed:
            raise
        log.warning("bingx clock skew account=%s endpoint=%s: resyncing", ex.account, path)
        await ex.resync_clock()
        return await send(ex, method, path, params, signed, priority)


def path_budgets(ex: RestHost, path: str) -> list[SlidingBudget]:
    return [b for b in (ex.budgets.get(path), ex.ip_budgets.get(path)) if b is not None]


async def send(
    ex: RestHost,
    method: str,
    path: str,
    params: Sequence[tuple[str, str]],
    signed: bool,
    priority: Priority,
) -> Any:
    if ex.errors.count(path) >= ERROR_LOCK_COUNT - 1:
        # One more error would lock this API for minutes: do not send what may earn it.
        raise RateLimited(
            "error-count lock ahead: holding this API",
            retry_after_s=max(1.0, ex.errors.clear_in_s(path)),
            venue=ex.venue,
            account=ex.account,
            endpoint=f"{method} {path}",
        )
    await ex.group_budget.acquire(1, priority)
    budgets = path_budgets(ex, path)
    if budgets:
        await acquire_all(budgets, priority, ex.account)
    if signed:
        pairs = sorted(
            [
                *params,
                ("recvWindow", str(ex.recv_window_ms)),
                ("timestamp", str(ex.clock.now_ms())),
            ]
        )
        query = bingx_signed_query(ex._secret, pairs)
    else:
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params)
    response = await ex._transport.request(method, path, query=query, headers=ex._headers)
    return answer(ex, response, method, path)


def answer(ex: RestHost, response: RawResponse, method: str, path: str) -> Any:
    headers = response.headers
    body: Any = None
    if response.body:
        try:
            body = orjson.loads(response.body)
        except orjson.JSONDecodeError:
            body = None
    code: int | None = None
    msg = ""
    if isinstance(body, dict) and "code" in body:
        try:
            code = int(body["code"])
        except (TypeError, ValueError):
            code = -1
        msg = str(body.get("msg") or "")
    header = _header_float(headers)
    error = classify(response.status, code, msg, retry_after_s=header, now_ms=ex.clock.now_ms())
    if error is not None:
        error.account = ex.account
        error.endpoint = f"{method} {path}"
        if isinstance(error, IpBanned):
            ex.group_budget.block(error.retry_after_s, banned=True)
            for budget in [*ex.budgets.values(), *ex.ip_budgets.values()]:
                budget.block(error.retry_after_s)
            log.error(
                "bingx IP banned account=%s endpoint=%s retry_after_s=%.0f",
                ex.account,
                path,
                error.retry_after_s,
            )
        elif isinstance(error, RateLimited):
            throttled(ex, error, path, msg, header)
        elif code not in (None, 0):
            ex.errors.record(path)
        raise error
    ex._backoffs.pop(path, None)
    if response.body and body is None:
        # A 2xx we cannot read: for a cancel, it may or may not have been applied.
        raise OutcomeUnknown(
            "unreadable answer",
            venue=ex.venue,
            account=ex.account,
            http_status=response.status,
            endpoint=f"{method} {path}",
        )
    if isinstance(body, dict) and "code" in body:
        return body.get("data")
    return body


def throttled(ex: RestHost, error: RateLimited, path: str, msg: str, header: float | None) -> None:
    """A 100410 (or 429/403): hold this API, on our UID budget and the shared IP one,
    until the epoch its text names, else for a short jittered backoff that doubles while
    the venue keeps refusing. Which dimension refused is not said, so both wait."""
    if epoch_in(msg) is None and header is None:
        repeats = ex._backoffs.get(path, 0)
        ex._backoffs[path] = repeats + 1
        doublings = max(0, repeats - BACKOFF_FLAT_REPEATS + 1)
        base = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2**doublings)
        error.retry_after_s = base * (1.0 + 0.25 * ex._rng.random())
    elif header is None:
        # An epoch read on our estimate of the venue's clock: leave room for its error.
        error.retry_after_s += EPOCH_MARGIN_S + ex.clock.last_rtt_ms / 1000.0
    budgets = path_budgets(ex, path)
    for budget in budgets:
        budget.block(error.retry_after_s)
    if not budgets:
        ex.group_budget.block(error.retry_after_s)
    log.warning(
        "bingx rate limited account=%s endpoint=%s retry_after_s=%.1f msg=%r",
        ex.account,
        path,
        error.retry_after_s,
        msg[:120],
    )


def _observe(budget: RateBudget, headers: CIMultiDictProxy[str]) -> None:
    remaining = headers.get("X-RateLimit-Requests-Remain")
    if remaining is not None and remaining.lstrip("-").isdigit():
        budget.observe_remaining(int(remaining))


def _header_float(headers: CIMultiDictProxy[str]) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None
