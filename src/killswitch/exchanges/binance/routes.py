"""Binance's two routes for one signed request: the WebSocket API session when it is up, else
REST; a request one route refuses (trading not enabled there, or not supported) goes by the
other at once. The request side of `BinanceExchange`, kept apart from its lifecycle and the
`Exchange` protocol."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from killswitch.exchanges.base import Fatal, OutcomeUnknown, Transient, VenueError
from killswitch.exchanges.binance.parse import VENUE
from killswitch.exchanges.binance.session import WsApiSession, _NotSent
from killswitch.exchanges.budget import Priority, RateBudget
from killswitch.exchanges.clock import ServerClock
from killswitch.exchanges.dialect import (
    BINANCE_REST_TRADING_OFF,
    BINANCE_UNSUPPORTED,
    BINANCE_WS_TRADING_OFF,
    MessageRule,
)
from killswitch.exchanges.rest import Answer, SignedRest

log = logging.getLogger(__name__)

CANCEL_WEIGHT = 1  # a cancel's weight (RATE_LIMITS.cancel_weight)

_WS_INT_PARAMS = frozenset({"orderId", "orderListId"})  # LONG params go as JSON integers


@dataclass(frozen=True, slots=True)
class _Endpoint:
    """One signed request by both routes: its ws-api method, and its REST method and path."""

    ws_method: str
    method: str
    path: str
    trade: bool = False  # a TRADE endpoint: a server may refuse these by one route


OPEN_ORDERS = _Endpoint("openOrders.status", "GET", "/api/v3/openOrders")
OPEN_ORDER_LISTS = _Endpoint("openOrderLists.status", "GET", "/api/v3/openOrderList")
CANCEL_ALL = _Endpoint("openOrders.cancelAll", "DELETE", "/api/v3/openOrders", trade=True)
CANCEL_ORDER = _Endpoint("order.cancel", "DELETE", "/api/v3/order", trade=True)
CANCEL_ORDER_LIST = _Endpoint("orderList.cancel", "DELETE", "/api/v3/orderList", trade=True)
TRADE_WS_METHODS = frozenset(e.ws_method for e in (CANCEL_ALL, CANCEL_ORDER, CANCEL_ORDER_LIST))


class _RouteRefused(Exception):
    """The ws-api session refused a request by its route, not executed: send it over REST."""

    def __init__(self, error: VenueError) -> None:
        super().__init__(str(error))
        self.error = error


def _matches(rules: Sequence[MessageRule], error: VenueError) -> bool:
    code = error.code if isinstance(error.code, int) else None
    return any(rule.matches(code, error.msg) for rule in rules)


class TwoRoutes:
    """Sends `BinanceExchange`'s signed requests by the ws-api or by REST."""

    account: str
    budget: RateBudget
    clock: ServerClock
    recv_window_ms: int
    rest: SignedRest
    session: WsApiSession | None
    timeout_s: float
    use_ws_api: bool
    _next_session: asyncio.Event
    _rest_trading_told: bool
    _ws_refusals: dict[str, str]  # ws-api method -> the last session's refusal of it
    _ws_signed: Callable[[dict[str, Any]], dict[str, Any]]

    def _ws_result(self, frame: dict[str, Any], method: str) -> Any:
        for limit in frame.get("rateLimits") or ():
            if limit.get("rateLimitType") == "REQUEST_WEIGHT" and limit.get("interval") == "MINUTE":
                self.budget.observe_used(int(limit.get("count", 0)))
        status = frame.get("status")
        if status == 200 and "result" in frame:
            return frame["result"]
        error = frame.get("error")
        if not isinstance(status, int) or status == 200 or not isinstance(error, dict):
            # An answer we cannot read may hide an applied request: re-read before deciding.
            raise OutcomeUnknown(
                "unreadable ws-api answer",
                venue=VENUE,
                account=self.account,
                http_status=status if isinstance(status, int) else None,
                endpoint=f"ws {method}",
            )
        code = error.get("code")
        data = error.get("data") or {}
        retry_after_s: float | None = None
        if isinstance(data, dict) and data.get("retryAfter") is not None:
            # ws-api gives retryAfter as an epoch-ms timestamp, not seconds [BN-WS "IP limits"].
            now_ms = data.get("serverTime") or self.clock.now_ms()
            retry_after_s = max(0.0, (int(data["retryAfter"]) - int(now_ms)) / 1000.0)
        answer = Answer(
            int(status),
            code=int(code) if isinstance(code, int) else None,
            msg=str(error.get("msg", "")),
            readable=False,  # an error carries no payload: `read` raises it
        )
        return self.rest.read(answer, f"ws {method}", retry_after_s=retry_after_s)

    async def _call(
        self,
        endpoint: _Endpoint,
        params: Sequence[tuple[str, str]],
        *,
        weight: int = CANCEL_WEIGHT,
        priority: Priority,
    ) -> Any:
        """One signed request: on the ws-api session when it is up, else over REST.

        A `ClockSkew` answer resyncs the clock once and retries at once. A request one route
        refused (trading not enabled there, or not supported) goes by the other at once,
        paid for again: the venue counted the refused one.
        """

        async def attempt() -> Any:
            # In flight until it lands: over the ws-api in `_ws_send`, over REST in `rest.send`.
            await self.budget.acquire(weight, priority, in_flight=True)
            session = self._ws_route(endpoint)
            if session is not None:
                try:
                    return await self._ws_send(session, endpoint, params, weight)
                except _NotSent:
                    log.info("binance ws-api down, using REST account=%s", self.account)
                except _RouteRefused:
                    await self.budget.acquire(weight, priority, in_flight=True)
            try:
                return await self.rest.send(endpoint.method, endpoint.path, params, weight=weight)
            except Fatal as exc:
                if not endpoint.trade or not _matches(BINANCE_REST_TRADING_OFF, exc):
                    raise
                return await self._rest_refused(endpoint, params, weight, priority, exc)

        return await self.rest.resyncing(attempt)

    def _ws_route(self, endpoint: _Endpoint) -> WsApiSession | None:
        """The session to send `endpoint` on: up, and not refusing it."""
        session = self.session
        if session is None or not session.up or endpoint.ws_method in session.refused:
            return None
        return session

    async def _ws_send(
        self,
        session: WsApiSession,
        endpoint: _Endpoint,
        params: Sequence[tuple[str, str]],
        weight: int,
    ) -> Any:
        """Send one request, its `weight` acquired in flight, on `session` and read the answer.

        `_NotSent` leaves the weight in flight (REST sends the request on); otherwise it has
        landed. `_RouteRefused`: the session's server refused the request by its route; the
        session refuses it (with "trading is not enabled", every TRADE request) from now on.
        """
        try:
            frame = await session.call(
                endpoint.ws_method, self._ws_params(params, session), self.timeout_s
            )
        except _NotSent:
            raise
        except BaseException:
            self.budget.landed(weight)
            raise
        self.budget.landed(weight)
        try:
            result = self._ws_result(frame, endpoint.ws_method)
        except Fatal as exc:
            if _matches(BINANCE_WS_TRADING_OFF, exc):
                refused = {*TRADE_WS_METHODS, endpoint.ws_method}
            elif exc.code == BINANCE_UNSUPPORTED:
                refused = {endpoint.ws_method}
            else:
                raise
            self._ws_refusals.update(dict.fromkeys(refused, exc.msg))
            if not refused <= session.refused.keys():
                session.refused.update(dict.fromkeys(refused, exc.msg))
                log.warning(
                    "binance ws-api session refuses %s; they go over REST while it lasts"
                    " account=%s error=%s",
                    ",".join(sorted(refused)),
                    self.account,
                    exc,
                )
            raise _RouteRefused(exc) from exc
        self._ws_refusals.pop(endpoint.ws_method, None)  # taken: a refusal is past
        return result

    async def _rest_refused(
        self,
        endpoint: _Endpoint,
        params: Sequence[tuple[str, str]],
        weight: int,
        priority: Priority,
        refusal: Fatal,
    ) -> Any:
        """REST answered "Rest API trading is not enabled.": send the request on the ws-api
        session (waiting up to the timeout for one coming up). The refusal stands (Fatal)
        only when the ws-api refuses it too, or there is none; a session merely down (coming
        back, or lost under the send) makes it a `Transient`: the engine retries until its
        deadline (review 63: an account was stopped while its ws-api reconnected)."""
        if not self._rest_trading_told:
            self._rest_trading_told = True
            log.warning(
                "binance REST refuses trading; cancels need the ws-api account=%s error=%s",
                self.account,
                refusal,
            )
        session = await self._session_soon()
        ws_refusal = None if session is None else session.refused.get(endpoint.ws_method)
        if session is not None and ws_refusal is None:
            await self.budget.acquire(weight, priority, in_flight=True)
            try:
                return await self._ws_send(session, endpoint, params, weight)
            except _NotSent:
                self.budget.landed(weight)
            except _RouteRefused as exc:
                ws_refusal = exc.error.msg
        if ws_refusal is None and session is None:
            # No session up: what the last one said of this request stands (review 64).
            ws_refusal = self._ws_refusals.get(endpoint.ws_method)
        if ws_refusal is not None or self.use_ws_api:
            # Both routes named: refused by both (Fatal), or the ws-api down (Transient).
            kind = Transient if ws_refusal is None else Fatal
            both = kind(
                f"{refusal.msg} ws-api: {ws_refusal or 'no session up'}",
                venue=VENUE,
                account=self.account,
                http_status=refusal.http_status,
                code=refusal.code,
                endpoint=f"{refusal.endpoint}, ws {endpoint.ws_method}",
            )
            if isinstance(both, Transient):
                raise both from refusal
            refusal = both
        log.error(
            "binance refuses trading by REST and no ws-api session takes it account=%s error=%s",
            self.account,
            refusal,
        )
        raise refusal

    async def _session_soon(self) -> WsApiSession | None:
        """The ws-api session, once up: while the keeper brings one up, up to the timeout."""
        if not self.use_ws_api:
            return None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.timeout_s):
                while True:
                    installed = self._next_session
                    session = self.session
                    if session is not None and session.up:
                        return session
                    await installed.wait()
        return None

    def _ws_params(
        self, params: Sequence[tuple[str, str]], session: WsApiSession
    ) -> dict[str, Any]:
        """A request's params as the ws-api takes them: typed, and signed unless logged on."""
        ws_params: dict[str, Any] = {
            k: int(v) if k in _WS_INT_PARAMS and v.isdigit() else v for k, v in params
        }
        if not session.logged_on:
            return self._ws_signed(ws_params)
        ws_params["recvWindow"] = self.recv_window_ms
        ws_params["timestamp"] = self.clock.now_ms()
        return ws_params
