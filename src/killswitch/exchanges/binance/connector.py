"""Binance Spot connector: the WebSocket API on the kill path, REST for fallback and reads.

Facts from `reference/exchange-apis.md` §1. One warm WebSocket API session per account carries
cancels (`openOrders.cancelAll`, `order.cancel`, `orderList.cancel`) and reads
(`openOrders.status`, `openOrderLists.status`); Ed25519 keys log the session on, HMAC keys sign
each request ad hoc. While the session is down (not yet open, dropped, `serverShutdown`), the
same request goes over REST. A request sent on the session and not answered within the timeout
is `OutcomeUnknown`; one that could not be sent goes over REST instead.

A server may take no TRADE requests (cancels) by one route: "WebSocket API trading is not
enabled." / "Rest API trading is not enabled." [BN-ERR], or -1020 "This operation is not
supported." from the ws-api. Such a request was refused, not executed: it goes by the other
route at once, and the session sends no more of what it refused (reads keep using it). Only
when both routes refuse does the refusal stand, as `Fatal`.

The user-data stream is in `stream`, a separate connection per `user_stream()` call.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import AsyncGenerator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Unpack

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import WebSocketException

from killswitch.exchanges.base import (
    AlreadyGone,
    CancelAck,
    Capabilities,
    ClockSkew,
    DeadMansSwitchState,
    Exchange,
    Fatal,
    RateLimits,
    VenueError,
    malformed_is_unknown,
)
from killswitch.exchanges.binance import stream
from killswitch.exchanges.binance.parse import (
    VENUE,
    _gather,
    _order_list,
    _rows,
    cancel_ack,
    rest_answer,
)
from killswitch.exchanges.binance.routes import (
    CANCEL_ALL,
    CANCEL_ORDER,
    CANCEL_ORDER_LIST,
    OPEN_ORDER_LISTS,
    OPEN_ORDERS,
    TwoRoutes,
)
from killswitch.exchanges.binance.session import (
    WsApiSession,
    _connect,
    _NotSent,
    keep_session,
    ws_api_url,
)
from killswitch.exchanges.budget import Priority, RateBudget, shared_item
from killswitch.exchanges.connector import ConnectorArgs, VenueConnector
from killswitch.exchanges.dialect import (
    BINANCE,
)
from killswitch.exchanges.rest import WeightCharges, Wire
from killswitch.exchanges.signing import (
    binance_ed25519_private_key,
    binance_ed25519_signature,
    binance_hmac_signature,
    binance_query,
    binance_signed_query,
    binance_ws_payload,
)
from killswitch.exchanges.spot_v3 import order_from_row, trading_permissions
from killswitch.model import (
    Snapshot,
    StreamEvent,
)

log = logging.getLogger(__name__)

RATE_LIMITS = RateLimits(
    weight_per_window=6000,  # REQUEST_WEIGHT per IP per calendar minute [BN-REST "LIMITS"]
    window_s=60.0,
    cancel_weight=1,
    snapshot_weight=80,  # GET /api/v3/openOrders without a symbol
    snapshot_symbol_weight=6,
    list_snapshot_weight=6,  # GET /api/v3/openOrderList
)
CAPABILITIES = Capabilities(
    cancel_all_max_symbols=1,
    cancel_all_without_symbol=False,
    cancel_all_covers_lists=True,  # DELETE /api/v3/openOrders cancels list legs too [BN-REST]
    batch_cancel_max=0,  # no batch cancel by id on Spot [§1.2]
    has_order_lists=True,
    open_orders_without_symbol=True,
    dead_mans_switch=False,  # none on Binance Spot [§1.2]
    dead_mans_switch_range_s=None,
    rate_limits=RATE_LIMITS,
)

# Errors are classified by `dialect.BINANCE` (code table, -2011 by message, the unknown rule).
WIRE = Wire(BINANCE, key_header="X-MBX-APIKEY", query=binance_query, decode=rest_answer)
USED_WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"


# The used-weight count the venue sends back with every answer is this IP's whole use, others'
# included: while it is this fresh and low, a kill's first burst needs no probe (`kill.gate`).
HEADROOM_FRESH_S = 5.0
# The share of a kill's weight cap a first look may fill the IP's minute to (`first_look_fits`).
FIRST_LOOK_SHARE = 0.5
# How long a first look decided counts before its read is sure to be counted by the budget
# (it is sent at once, so a read counted twice for this long only makes later looks rarer).
LOOK_DECIDED_S = 1.0
# When no answer has brought the count for this long, a ws-api `ping` (weight 1, the IP's
# count in its `rateLimits`) asks for it: one per IP, whatever the number of accounts behind
# it, about 30 of the minute's 6000. It also finds a dead session before a kill does.
KEEP_FRESH_S = 2.0


class BinanceExchange(TwoRoutes, VenueConnector):
    """One Binance Spot account."""

    venue = VENUE
    capabilities = CAPABILITIES
    key_types = ("hmac", "ed25519")
    time_path = "/api/v3/time"  # weight 1

    def __init__(
        self,
        *,
        budget: RateBudget | None = None,
        use_ws_api: bool = True,
        keep_fresh_s: float | None = KEEP_FRESH_S,
        **args: Unpack[ConnectorArgs],
    ) -> None:
        super().__init__(**args)
        self._ed_key: Ed25519PrivateKey | None = None
        if self.key_type == "ed25519":
            self._ed_key = binance_ed25519_private_key(self._secret)
            self._secret = ""
        self.use_ws_api = use_ws_api
        self.keep_fresh_s = keep_fresh_s
        # Binance's request weight is counted per IP, not per key [BN-REST "LIMITS"]: every
        # account behind our IP spends one budget (the used-weight header reads all of it).
        self.budget = (
            budget
            if budget is not None
            else shared_item(
                self.ip_scope,
                "binance weight",
                lambda: RateBudget(RATE_LIMITS, clock=self.venue_seconds),
            )
        )
        charges = WeightCharges(self.budget, USED_WEIGHT_HEADER)
        self.rest = self._signed_rest(WIRE, charges, partial(binance_signed_query, self._sign))
        self.ws_url = ws_api_url(self._ws_url)
        self.session: WsApiSession | None = None
        self._session_ready = asyncio.Event()
        self._next_session = asyncio.Event()  # set (and replaced) when a session is installed
        self._rest_trading_told = False  # "Rest API trading is not enabled." logged once
        # ws-api method -> the current (or last, while none is up) session's refusal of it
        self._ws_refusals: dict[str, str] = {}

    # -- lifecycle -------------------------------------------------------------------------
    async def _open(self) -> None:
        """Measure the clock offset, then open the ws-api session."""
        await self.resync_clock()
        if self.use_ws_api:
            self._spawn(self._keep_session())
            if self.keep_fresh_s is not None:
                self._spawn(self._keep_fresh(self.keep_fresh_s))
            # Warm before any kill; if the session cannot open now, REST carries the kill.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.timeout_s):
                    await self._session_ready.wait()

    async def _shut(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            await session.close()

    async def _keep_session(self) -> None:
        """Keep one logged-on ws-api session open; reconnect with backoff when it goes."""
        await keep_session(self._open_session, self._install_session, self.account)

    def headroom_known(self) -> bool:
        """True while the IP's used weight, as the venue last said it, is fresh and low."""
        return self.budget.headroom_known(HEADROOM_FRESH_S)

    def first_look_fits(self, symbols: Sequence[str] | None) -> bool:
        """A kill's first look spends the IP's weight only while the minute stays at most
        half used after it (`FIRST_LOOK_SHARE`): the rest is kept for the cancels and the
        verification reads of every account behind this IP. (At 22 accounts, all-orders reads
        at 80 each at start-up, as first looks and as verifications passed a kill's share of
        the minute together, and the proof waited up to 60 s for the next minute.)"""
        weight = RATE_LIMITS.list_snapshot_weight + (
            RATE_LIMITS.snapshot_weight
            if symbols is None
            else RATE_LIMITS.snapshot_symbol_weight * len(set(symbols))
        )
        # The accounts of a kill decide at once, before any of their reads is sent: each
        # counts the looks decided before it (review of 1c85520: 22 accounts each saw the
        # same room, all looked, and the proof waited for the next minute again).
        return self.budget.spare(weight, FIRST_LOOK_SHARE, LOOK_DECIDED_S)

    async def _keep_fresh(self, every_s: float) -> None:
        """Ask for the IP's used weight (a ws-api `ping`) whenever nobody behind this IP has
        heard it for `every_s`. A ping that fails says nothing: the count just goes stale."""
        while True:
            await asyncio.sleep(every_s * random.uniform(0.5, 1.0))
            session = self.session
            if session is None or not session.up or not self.budget.due_for_news(every_s):
                continue
            try:
                await self.budget.acquire(1, Priority.BACKGROUND, in_flight=True)
                try:
                    frame = await session.call("ping", {}, self.timeout_s)
                finally:
                    self.budget.landed(1)
                self._ws_result(frame, "ping")
            except (VenueError, _NotSent) as exc:
                log.debug("binance weight ping failed account=%s error=%s", self.account, exc)
            except Exception:
                log.exception("binance weight ping error account=%s", self.account)

    async def _install_session(self, fresh: WsApiSession) -> None:
        old, self.session = self.session, fresh
        # What the last session refused, a new one is asked afresh (review 65: a refusal
        # remembered for good stopped an account while a new session reconnected).
        self._ws_refusals.clear()
        self._session_ready.set()
        installed, self._next_session = self._next_session, asyncio.Event()
        installed.set()
        if old is not None:
            await old.close()

    async def _open_session(self) -> WsApiSession:
        await self.budget.acquire(2, Priority.BACKGROUND)  # a connection costs 2 weight
        try:
            ws = await _connect(self.ws_url, self.timeout_s, self._api_key)
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise self.rest.connect_failed(exc, "ws-api") from exc
        self.rest.connected("ws-api")
        session = WsApiSession(ws)
        if self._ed_key is not None:
            try:
                await self._logon(session)
            except BaseException:
                await session.close()
                raise
        return session

    async def _logon(self, session: WsApiSession) -> None:
        for attempt in (1, 2):
            await self.budget.acquire(2, Priority.BACKGROUND)
            frame = await session.call("session.logon", self._logon_params(), self.timeout_s)
            try:
                self._ws_result(frame, "session.logon")
            except ClockSkew:
                if attempt == 2:
                    raise
                await self.resync_clock()
                continue
            session.logged_on = True
            return

    # -- signing -----------------------------------------------------------------------------
    def _sign(self, payload: str) -> str:
        if self._ed_key is not None:
            return binance_ed25519_signature(self._ed_key, payload)
        return binance_hmac_signature(self._secret, payload)

    def _ws_signed(self, params: dict[str, Any]) -> dict[str, Any]:
        signed: dict[str, Any] = {
            **params,
            "apiKey": self._api_key,
            "recvWindow": self.recv_window_ms,
            "timestamp": self.clock.now_ms(),
        }
        signed["signature"] = self._sign(binance_ws_payload(signed))
        return signed

    def _logon_params(self) -> dict[str, Any]:
        return self._ws_signed({})

    # -- the Exchange protocol -----------------------------------------------------------------
    @malformed_is_unknown
    async def snapshot(
        self, symbols: Sequence[str] | None = None, *, priority: Priority = Priority.KILL
    ) -> Snapshot:
        """Open orders and order lists: all symbols (weight 80 + 6) or per symbol (6 each)."""
        taken_ms = self.clock.now_ms()
        lists_call = self._call(
            OPEN_ORDER_LISTS, (), weight=RATE_LIMITS.list_snapshot_weight, priority=priority
        )
        if symbols is None:
            order_calls = [
                self._call(OPEN_ORDERS, (), weight=RATE_LIMITS.snapshot_weight, priority=priority)
            ]
        else:
            weight = RATE_LIMITS.snapshot_symbol_weight
            order_calls = [
                self._call(OPEN_ORDERS, (("symbol", s),), weight=weight, priority=priority)
                for s in dict.fromkeys(symbols)
            ]
        rows_lists, *rows_orders = await _gather(lists_call, *order_calls)
        orders = tuple(
            order_from_row(row)
            for rows in rows_orders
            for row in _rows(rows, "openOrders", self.account)
        )
        lists = tuple(_order_list(row) for row in _rows(rows_lists, "openOrderList", self.account))
        if symbols is not None:
            wanted = set(symbols)
            lists = tuple(lst for lst in lists if lst.symbol in wanted)
        return Snapshot(orders=orders, lists=lists, server_time_ms=taken_ms)

    @malformed_is_unknown
    async def cancel_all(
        self, symbols: Sequence[str] | None, *, priority: Priority = Priority.KILL
    ) -> CancelAck:
        """Cancel everything open on each symbol (`openOrders.cancelAll`, lists included).

        Binance has no cancel-all without a symbol: with None, the symbols come from one
        all-symbols snapshot. A symbol with nothing open is an empty ack.
        """
        if symbols is None:
            symbols = sorted((await self.snapshot(priority=priority)).symbols())
        acks = await _gather(*(self._cancel_symbol(s, priority) for s in dict.fromkeys(symbols)))
        return CancelAck(
            cancelled=tuple(i for ack in acks for i in ack.cancelled),
            lists_cancelled=tuple(i for ack in acks for i in ack.lists_cancelled),
        )

    async def _cancel_symbol(self, symbol: str, priority: Priority) -> CancelAck:
        try:
            result = await self._call(CANCEL_ALL, (("symbol", symbol),), priority=priority)
        except AlreadyGone:
            return CancelAck()  # -2011 "Unknown order sent.": nothing open on the symbol
        return cancel_ack(result, symbol)

    @malformed_is_unknown
    async def cancel_order(
        self, symbol: str, order_id: str, *, priority: Priority = Priority.KILL
    ) -> CancelAck:
        """Cancel one order (a list leg cancels its whole list). `AlreadyGone` if not open."""
        id_param = "orderId" if order_id.isdigit() else "origClientOrderId"
        params = (("symbol", symbol), (id_param, order_id))
        result = await self._call(CANCEL_ORDER, params, priority=priority)
        return cancel_ack(result, symbol)

    @malformed_is_unknown
    async def cancel_order_list(
        self, symbol: str, list_id: str, *, priority: Priority = Priority.KILL
    ) -> CancelAck:
        """Cancel a whole order list (`orderList.cancel`). `AlreadyGone` if not open."""
        params = (("symbol", symbol), ("orderListId", list_id))
        result = await self._call(CANCEL_ORDER_LIST, params, priority=priority)
        return cancel_ack(result, symbol)

    @malformed_is_unknown
    async def account_permissions(self) -> dict[str, object]:
        """May this key trade and cancel? `GET /api/v3/account` (weight 20, background).

        For readiness checks (`killswitch preflight`, the daemon's periodic check), never on
        the kill path: `can_trade` is the venue's `canTrade`, `permissions` its list."""
        params = (("omitZeroBalances", "true"),)
        body = await self.rest.request(
            "GET", "/api/v3/account", params, weight=20, priority=Priority.BACKGROUND
        )
        return trading_permissions(body)

    async def arm_dead_mans_switch(self, timeout_s: int) -> DeadMansSwitchState:
        """Binance Spot has no dead-man's switch."""
        raise Fatal("Binance Spot has no dead-man's switch", venue=VENUE, account=self.account)

    async def disarm_dead_mans_switch(self) -> DeadMansSwitchState:
        """Binance Spot has no dead-man's switch."""
        raise Fatal("Binance Spot has no dead-man's switch", venue=VENUE, account=self.account)

    def user_stream(self) -> AsyncGenerator[StreamEvent, None]:
        """Subscribe one user-data stream on its own ws-api connection and yield its events.

        Raises `Transient` when the connection drops (the server pings every 20 s and
        `websockets` pings too, so a dead peer is noticed); yields `StreamTerminated` and
        stops on `eventStreamTerminated`, `serverShutdown`, or before the 24 h limit.
        """
        return stream.user_stream(
            self.ws_url,
            self.timeout_s,
            self.budget,
            self.account,
            self._subscribe_stream,
            self.rest,
        )

    async def _subscribe_stream(self, ws: ClientConnection) -> None:
        ids = itertools.count(1)
        for attempt in (1, 2):
            try:
                if self._ed_key is not None:
                    await self._stream_request(ws, next(ids), "session.logon", self._logon_params())
                    await self._stream_request(ws, next(ids), "userDataStream.subscribe", None)
                else:
                    params = self._ws_signed({})
                    await self._stream_request(
                        ws, next(ids), "userDataStream.subscribe.signature", params
                    )
            except ClockSkew:
                if attempt == 2:
                    raise
                await self.resync_clock()
            else:
                return

    async def _stream_request(
        self, ws: ClientConnection, req_id: int, method: str, params: dict[str, Any] | None
    ) -> Any:
        return await stream.stream_request(
            ws,
            req_id,
            method,
            params,
            timeout_s=self.timeout_s,
            account=self.account,
            result=self._ws_result,
        )


if TYPE_CHECKING:  # the connector satisfies the Exchange protocol, checked by mypy

    def _conforms(exchange: BinanceExchange) -> Exchange:
        return exchange
