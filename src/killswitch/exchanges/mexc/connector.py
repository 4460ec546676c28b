"""MEXC spot v3 connector: signed REST cancels and reads, listenKey stream of protobuf pushes.

Venue facts (`exchange-apis.md` §2): HMAC-SHA256 over the query string followed by the body;
every endpoint has its own budget of 500 weight per 10 s; `DELETE /api/v3/openOrders` cancels
up to 5 comma-separated symbols including OCO legs; there is no batch cancel by ids, no
order-list endpoint and no dead-man's switch. The user stream needs a listenKey (60 min,
extended every 30 min) and pushes `PushDataV3ApiWrapper` protobuf frames.

Unverified in the docs, handled both ways: `GET /api/v3/openOrders` without a symbol. The
connector asks without one first; if MEXC refuses, it reads the symbols it knows (configured
hint, symbols seen on the stream, in snapshots and cancels) five per call, an incomplete read.
When the refusal says the symbol is mandatory it does so from then on, and says so in
`capabilities.open_orders_without_symbol`; any other refusal costs only that read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from functools import partial
from types import MappingProxyType
from typing import Any, Unpack

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from killswitch.exchanges import mexc_proto as pb
from killswitch.exchanges.base import (
    AlreadyGone,
    CancelAck,
    Capabilities,
    DeadMansSwitchState,
    Fatal,
    OutcomeUnknown,
    RateLimits,
    Transient,
    VenueError,
    malformed_is_unknown,
)
from killswitch.exchanges.budget import Priority, shared_item
from killswitch.exchanges.connector import ConnectorArgs, VenueConnector
from killswitch.exchanges.dialect import MEXC
from killswitch.exchanges.mexc.parse import (
    AUTH_CODES,
    INVALID_LISTEN_KEY,
    LISTEN_KEY_GONE,
    MAX_SYMBOLS_PER_CALL,
    PING,
    SUBSCRIBE,
    VENUE,
    _chunks,
    _close_code,
    _control_msg,
    _gather_all,
    _rows,
    decode_push,
    order_from_row,
    rest_answer,
)
from killswitch.exchanges.rest import EndpointCharges, Wire
from killswitch.exchanges.signing import mexc_query, mexc_signed_query
from killswitch.exchanges.spot_v3 import text_id, trading_permissions
from killswitch.model import (
    Snapshot,
    StreamEvent,
    StreamSubscribed,
    StreamTerminated,
)

log = logging.getLogger(__name__)


# Per endpoint: 500 weight per 10 s [MX-DOC "LIMITS"]. Weights: cancels 1, openOrders 3.
MEXC_RATE_LIMITS = RateLimits(
    weight_per_window=500,
    window_s=10.0,
    cancel_weight=1,
    snapshot_weight=3,
    snapshot_symbol_weight=3,
    list_snapshot_weight=0,
)

MEXC_CAPABILITIES = Capabilities(
    cancel_all_max_symbols=MAX_SYMBOLS_PER_CALL,
    # `DELETE /api/v3/order/all` is known only from ccxt: not planned on.
    cancel_all_without_symbol=False,
    cancel_all_covers_lists=True,  # "including OCO pending orders"
    batch_cancel_max=0,
    has_order_lists=False,
    open_orders_without_symbol=True,  # tried first; turned off if MEXC refuses (see above)
    dead_mans_switch=False,
    rate_limits=MEXC_RATE_LIMITS,
)


WIRE = Wire(
    MEXC,
    key_header="X-MEXC-APIKEY",
    query=mexc_query,
    decode=rest_answer,
    headers=MappingProxyType({"Content-Type": "application/json"}),
)


# Missing-parameter codes: MEXC's (700004, "Mandatory parameter '...' was not sent") and the
# Binance one MEXC's table copies (-1102).
MISSING_PARAM_CODES = frozenset({700004, -1102})
# An order this much younger than a read may have been placed between it and its check.
_PLACED_MEANWHILE_MS = 2_000
# Requests a read without a symbol's check may add: a kill's read checks every known symbol, up
# to `_KILL_CHECK_READS` requests (120 weight of the endpoint's 500 per 10 s; review 40: one
# request per known symbol, unbounded, was a burst past it); past that it proves nothing flat
# (review 41: a read that checked some known symbols proved flat over an order on another). A
# background read (a stream reconcile) checks `_CHECK_READS`, the known symbols in turn.
_CHECK_READS = 2
_KILL_CHECK_READS = 40
# What MEXC says of a symbol it does not take: a list of several, under the read's own table.
_BAD_SYMBOL_CODES = frozenset({10007, 30014, 30021, -1121, -1100})
_MISSING_WORDS = ("mandatory", "required", "must be sent", "not sent", "empty")


def symbol_required(exc: VenueError) -> bool:
    """Does this refusal say, in the venue's words, that `symbol` must be sent?"""
    msg = exc.msg.lower()
    if "symbol" not in msg:
        return False
    return exc.code in MISSING_PARAM_CODES or any(word in msg for word in _MISSING_WORDS)


# -- the connector ------------------------------------------------------------------------------
def _with_checks(rows: list[Any], checked: list[Any], read_at: int) -> tuple[list[Any], list[Any]]:
    """The rows of a read without a symbol with those its check by symbol found that it did not
    show; and the orders it left out that are older than both reads (one placed meanwhile
    proves nothing): while there is one, the read was not whole."""
    shown = _keys(rows)
    left_out = []
    for row in checked:
        if _key(row) not in shown:
            rows.append(row)
            if int(row.get("time") or 0) < read_at - _PLACED_MEANWHILE_MS:
                left_out.append(row)
    return rows, left_out


def _key(row: Any) -> tuple[str, str]:
    return str(row["symbol"]), text_id(row["orderId"])


def _keys(rows: list[Any]) -> set[tuple[str, str]]:
    return {_key(row) for row in rows}


class MexcExchange(VenueConnector):
    """One MEXC spot account."""

    venue = VENUE
    time_path = "/api/v3/time"

    def __init__(
        self,
        *,
        symbols_hint: Sequence[str] = (),
        rate_limits: RateLimits = MEXC_RATE_LIMITS,
        listen_key_keepalive_s: float = 1800.0,
        stream_ping_interval_s: float = 20.0,
        stream_pong_timeout_s: float = 10.0,
        budget_clock: Callable[[], float] | None = None,  # the venue's clock by default
        budget_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        **args: Unpack[ConnectorArgs],
    ) -> None:
        super().__init__(**args)
        self.capabilities = replace(MEXC_CAPABILITIES, rate_limits=rate_limits)
        self._keepalive_s = listen_key_keepalive_s
        self._ping_interval_s = stream_ping_interval_s
        self._pong_timeout_s = stream_pong_timeout_s
        # MEXC counts its limits per endpoint and IP (some per UID: sharing them is only
        # stricter): every account behind our IP spends the same budgets, and a 429 to one
        # holds them all [MX-DOC "LIMITS"].
        self.endpoint_budgets = shared_item(
            self.ip_scope,
            "mexc endpoints",
            lambda: EndpointCharges(
                rate_limits, clock=budget_clock or self.venue_seconds, sleep=budget_sleep
            ),
        )
        sign = partial(mexc_signed_query, self._secret)
        self.rest = self._signed_rest(WIRE, self.endpoint_budgets, sign)
        self.known_symbols: set[str] = set(symbols_hint)
        # The read without a symbol is not used once MEXC refused it as "symbol mandatory", or
        # was caught answering a subset (reference §2.3: unverified that it answers every one).
        self._no_symbol_refused = False
        self._one_symbol_reads = False  # set when a read of several symbols is refused
        # The most symbols one read of several showed orders on: a list that long or shorter
        # answers each symbol it names. A longer one may answer fewer (reference §2.3: the
        # read's table takes one symbol; say, only the first), so the symbols it showed
        # nothing on are read by name as well (review 42).
        self._list_answers = 1
        # Known symbols MEXC refused by name as bad (delisted, or not served by its API): no
        # longer in a list of several (one would fail the list), read alone by every kill's
        # check; while one stays unread, no account-wide read proves flat (review 42: an order
        # placed elsewhere may sit there).
        self._unreadable: set[str] = set()
        self._check_from = 0  # where the next check of the read without a symbol starts
        self._listen_key: str | None = None
        self._lost_keys: set[str] = set()
        self._streams: dict[ClientConnection, str] = {}
        self._keepalive_task: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------
    async def _open(self) -> None:
        """Measure the clock offset, and warm a few connections."""
        await self.resync_clock()
        # A kill sends several cancels at once: open those connections now, not then. A
        # warm-up that fails costs nothing but the warm connection: the start goes on.
        warmed = await asyncio.gather(
            *(self.rest.request("GET", "/api/v3/ping", signed=False) for _ in range(3)),
            return_exceptions=True,
        )
        for outcome in warmed:
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
            if isinstance(outcome, BaseException):
                log.info("mexc warm-up request failed account=%s error=%s", self.account, outcome)

    async def _shut(self) -> None:
        """Close the streams and drop the listenKey."""
        for ws in list(self._streams):
            await ws.close()
        key, self._listen_key = self._listen_key, None
        if key is not None and self._started:
            try:
                await asyncio.wait_for(self._delete_listen_key(key), timeout=1.0)
            except asyncio.CancelledError:
                raise
            except (VenueError, TimeoutError) as exc:
                log.info("listenKey delete failed account=%s error=%s", self.account, exc)

    # -- reads ----------------------------------------------------------------------------------
    @malformed_is_unknown
    async def snapshot(
        self, symbols: Sequence[str] | None = None, *, priority: Priority = Priority.KILL
    ) -> Snapshot:
        """Open orders of every symbol (or of `symbols`); MEXC has no order-list read."""
        read_at = self.clock.now_ms()
        rows: list[Any] | None = None
        complete = True
        if symbols is None and not self._no_symbol_refused:
            whole, checked, answered = await self._read_every_symbol(priority)
            if isinstance(whole, Fatal | OutcomeUnknown):
                self._refused(whole)
                if answered:  # the check read every known symbol already: nothing to add
                    rows, complete = checked, False
            elif isinstance(whole, BaseException):
                raise whole
            else:
                rows, left_out = _with_checks(_rows(whole, self.account), checked, read_at)
                if left_out:
                    complete = False  # proves nothing flat; and if it is its rule, never again
                    await self._confirm_subset(left_out, priority)
                elif priority is Priority.KILL and not answered:
                    complete = False  # some known symbol went unchecked: no proof for a kill
        if rows is None:
            # Read per symbol. For an account-wide read that covers only the symbols we know
            # of: an order on any other symbol would be missed, so it proves nothing flat.
            complete = symbols is not None
            wanted = list(
                dict.fromkeys(symbols if symbols is not None else sorted(self.known_symbols))
            )
            rows = []
            for part in await _gather_all(
                self._read_symbols(chunk, priority) for chunk in _chunks(wanted)
            ):
                rows.extend(part)
        orders = tuple(order_from_row(row) for row in rows)
        self.known_symbols.update(o.symbol for o in orders)
        return Snapshot(orders=orders, lists=(), server_time_ms=read_at, complete=complete)

    async def _read_every_symbol(self, priority: Priority) -> tuple[object, list[Any], bool]:
        """`openOrders` without a symbol, and beside it (the same round) the symbols we know of
        read by name, as many as the priority allows (see `_CHECK_READS`), in turn: whether the
        call without a symbol answers every symbol is unverified (reference §2.3). Returns its
        answer (or error), the rows of the check, and whether the check read every known
        symbol and every part of it answered."""
        known = sorted(self.known_symbols)
        reads = _KILL_CHECK_READS if priority is Priority.KILL else _CHECK_READS
        unread = sorted(self._unreadable)
        retried = unread[:reads]
        reads -= len(retried)
        if self._one_symbol_reads:
            take = reads
        elif self._list_answers >= MAX_SYMBOLS_PER_CALL:
            take = reads * MAX_SYMBOLS_PER_CALL
        else:
            # a list of five may cost six requests (the list, then up to five by name)
            take = reads * MAX_SYMBOLS_PER_CALL // (MAX_SYMBOLS_PER_CALL + 1)
        take = min(len(known), take)
        start = self._check_from % len(known) if known else 0
        chosen = (known[start:] + known[:start])[:take]
        self._check_from = start + take
        chunks = _chunks(chosen) if take >= MAX_SYMBOLS_PER_CALL else [[s] for s in chosen]
        whole, *checks = await asyncio.gather(
            self.rest.request("GET", "/api/v3/openOrders", weight=3, priority=priority),
            *(self._read_symbols(chunk, priority) for chunk in chunks),
            *(self._read_symbol(symbol, priority) for symbol in retried),
            return_exceptions=True,
        )
        for outcome in (whole, *checks):
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
        rows: list[Any] = []
        answered = take == len(known) and len(retried) == len(unread)
        for outcome in checks:
            if isinstance(outcome, VenueError):
                log.info("openOrders check failed account=%s error=%s", self.account, outcome)
                answered = False
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                rows.extend(outcome)
        return whole, rows, answered

    def _refused(self, exc: Fatal | OutcomeUnknown) -> None:
        """Raise `exc` unless it is a refusal of the read without a symbol (a 4xx that is not
        about the key): then the known symbols are read this time. Only the venue's own "symbol
        is mandatory" is its rule, remembered; any other (a proxy's 404, a passing 400) may be
        gone next time. A 5xx, a timeout or an unreadable answer proves nothing."""
        status = exc.http_status
        refused = status is not None and 400 <= status < 500
        if exc.code in AUTH_CODES or not refused:
            raise exc
        if symbol_required(exc):
            self._no_symbol_refused = True
            self.capabilities = replace(self.capabilities, open_orders_without_symbol=False)
        log.warning(
            "openOrders without symbol refused account=%s code=%s%s: reading known symbols",
            self.account,
            exc.code,
            " (symbol required)" if self._no_symbol_refused else "",
        )

    async def _confirm_subset(self, left_out: list[Any], priority: Priority) -> None:
        """A read without a symbol left out orders its check showed open: read it again, then
        those symbols by name. An order still open then was open while the second read was
        answered (an order never reopens): it too left it out, and it is never used again. A
        race (an order cancelled or filled between the first two reads) confirms nothing."""
        try:
            again = _keys(
                _rows(
                    await self.rest.request(
                        "GET", "/api/v3/openOrders", weight=3, priority=priority
                    ),
                    self.account,
                )
            )
            symbols = sorted({str(row["symbol"]) for row in left_out})
            still = _keys(
                [
                    r
                    for part in await _gather_all(self._read_symbol(s, priority) for s in symbols)
                    for r in part
                ]
            )
        except VenueError as exc:
            log.info("openOrders subset check failed account=%s error=%s", self.account, exc)
            return
        if any(_key(row) in still and _key(row) not in again for row in left_out):
            self._no_symbol_refused = True
            self.capabilities = replace(self.capabilities, open_orders_without_symbol=False)
            log.warning(
                "openOrders without symbol answers a subset account=%s: reading known symbols "
                "from now on, and an account-wide read proves nothing flat",
                self.account,
            )

    async def _read_symbols(self, symbols: Sequence[str], priority: Priority) -> list[Any]:
        """The open orders of up to five symbols. The read's table takes one symbol; only a
        changelog says five, comma-separated (reference §2.3), so a list is trusted for every
        symbol it names only when one as long showed orders on each of its symbols; else the
        symbols it showed nothing on are read by name too. A list refused as a bad request is
        that rule: read one symbol per request from then on (the same weight each). A symbol
        MEXC called bad is read alone, never in a list (it would fail the list)."""
        found: list[Any] = []
        alone = [s for s in symbols if s in self._unreadable]
        listed = [s for s in symbols if s not in self._unreadable]
        if len(listed) > 1 and not self._one_symbol_reads:
            try:
                found = await self._read_symbol(",".join(listed), priority, listed=False)
            except (Fatal, OutcomeUnknown) as exc:
                status = exc.http_status
                if exc.code in AUTH_CODES or status is None or not 400 <= status < 500:
                    raise
                # Only the venue's own "bad symbol" is its rule, remembered; any other 4xx (a
                # proxy's 404, a passing 400) reads one symbol per request this time only.
                if exc.code in _BAD_SYMBOL_CODES:
                    self._one_symbol_reads = True
                log.warning(
                    "openOrders of several symbols refused account=%s code=%s: one per request%s",
                    self.account,
                    exc.code,
                    " from now on" if self._one_symbol_reads else " this time",
                )
            else:
                shown = {str(row["symbol"]) for row in found} & set(listed)
                if len(shown) > self._list_answers:
                    self._list_answers = len(shown)
                    log.info(
                        "openOrders of %d symbols answered each account=%s",
                        len(shown),
                        self.account,
                    )
                trusted = len(listed) <= self._list_answers
                listed = [] if trusted else [s for s in listed if s not in shown]
        for part in await _gather_all(self._read_symbol(s, priority) for s in listed + alone):
            found.extend(part)
        return found

    async def _read_symbol(
        self, symbol: str, priority: Priority, *, listed: bool = True
    ) -> list[Any]:
        """One symbol's open orders (or a comma list's, `listed=False`). A single symbol MEXC
        calls bad (delisted, or one its API does not serve) is no longer a known symbol, so it
        cannot fail every later read; this read still fails: a symbol it could not read is
        never taken as one with nothing open."""
        try:
            answer = await self.rest.request(
                "GET", "/api/v3/openOrders", [("symbol", symbol)], weight=3, priority=priority
            )
        except (Fatal, OutcomeUnknown) as exc:
            if listed and exc.code in _BAD_SYMBOL_CODES and symbol in self.known_symbols:
                log.warning(
                    "openOrders symbol=%s refused as a bad symbol account=%s code=%s: read "
                    "alone from now on, and no account-wide read proves flat while it fails",
                    symbol,
                    self.account,
                    exc.code,
                )
                self.known_symbols.discard(symbol)
                self._unreadable.add(symbol)
            raise
        if listed and symbol in self._unreadable:
            self._unreadable.discard(symbol)
            self.known_symbols.add(symbol)
        return _rows(answer, self.account)

    # -- cancels --------------------------------------------------------------------------------
    @malformed_is_unknown
    async def cancel_all(
        self, symbols: Sequence[str] | None, *, priority: Priority = Priority.KILL
    ) -> CancelAck:
        """Cancel everything on `symbols`, five per request; None reads the open symbols first."""
        if symbols is None:
            symbols = sorted((await self.snapshot(priority=priority)).symbols())
        wanted = list(dict.fromkeys(symbols))
        if not wanted:
            return CancelAck()
        acks = await _gather_all(self._cancel_chunk(chunk, priority) for chunk in _chunks(wanted))
        return CancelAck(cancelled=tuple(i for ack in acks for i in ack.cancelled))

    async def _cancel_chunk(self, symbols: Sequence[str], priority: Priority) -> CancelAck:
        self.known_symbols.update(symbols)
        try:
            rows = await self.rest.request(
                "DELETE", "/api/v3/openOrders", [("symbol", ",".join(symbols))], priority=priority
            )
        except AlreadyGone:
            return CancelAck()  # nothing open there: an empty ack, not an error
        return CancelAck(
            cancelled=tuple(
                (str(row.get("symbol") or symbols[0]), text_id(row["orderId"]))
                for row in rows or ()
            )
        )

    @malformed_is_unknown
    async def cancel_order(
        self, symbol: str, order_id: str, *, priority: Priority = Priority.KILL
    ) -> CancelAck:
        self.known_symbols.add(symbol)
        row = await self.rest.request(
            "DELETE",
            "/api/v3/order",
            [("symbol", symbol), ("orderId", order_id)],
            priority=priority,
        )
        return CancelAck(cancelled=((symbol, text_id(row.get("orderId", order_id))),))

    async def cancel_order_list(self, symbol: str, list_id: str) -> CancelAck:
        raise Fatal(
            "MEXC spot has no order-list cancel; cancel_all covers OCO orders",
            venue=VENUE,
            account=self.account,
        )

    @malformed_is_unknown
    async def account_permissions(self) -> dict[str, object]:
        """May this key trade and cancel? `GET /api/v3/account` (weight 10, background).

        For readiness checks, never on the kill path: `can_trade` is the venue's `canTrade`."""
        body = await self.rest.request(
            "GET", "/api/v3/account", weight=10, priority=Priority.BACKGROUND
        )
        return trading_permissions(body)

    def rate_headroom(self) -> dict[str, object]:
        """For readiness: the least headroom among the endpoints used so far (0..1), and how
        long every endpoint is blocked after a 429/418."""
        return self.endpoint_budgets.headroom()

    async def arm_dead_mans_switch(self, timeout_s: int) -> DeadMansSwitchState:
        raise Fatal("MEXC spot has no dead-man's switch", venue=VENUE, account=self.account)

    async def disarm_dead_mans_switch(self) -> DeadMansSwitchState:
        raise Fatal("MEXC spot has no dead-man's switch", venue=VENUE, account=self.account)

    # -- listenKey ----------------------------------------------------------------------------
    async def _ensure_listen_key(self) -> str:
        if self._listen_key is None:
            data = await self.rest.request("POST", "/api/v3/userDataStream", priority=Priority.KILL)
            self._listen_key = str(data["listenKey"])
        if self._keepalive_task is None or self._keepalive_task.done():
            self._keepalive_task = self._spawn(self._keep_listen_key_alive())
        return self._listen_key

    async def _delete_listen_key(self, key: str) -> None:
        await self.rest.request("DELETE", "/api/v3/userDataStream", [("listenKey", key)])

    async def extend_listen_key(self) -> None:
        """Push the listenKey's expiry out to 60 min; a dead key ends the streams using it."""
        key = self._listen_key
        if key is None:
            return
        try:
            await self.rest.request(
                "PUT", "/api/v3/userDataStream", [("listenKey", key)], priority=Priority.BACKGROUND
            )
        except Fatal as exc:
            if exc.code != LISTEN_KEY_GONE:
                raise
            log.warning("listenKey expired account=%s: ending its streams", self.account)
            self._listen_key = None
            self._lost_keys.add(key)
            for ws, ws_key in list(self._streams.items()):
                if ws_key == key:
                    await ws.close()

    async def _keep_listen_key_alive(self) -> None:
        delay = self._keepalive_s
        while True:
            await asyncio.sleep(delay)
            try:
                await self.extend_listen_key()
            except asyncio.CancelledError:
                raise
            except VenueError as exc:
                # Retry well before the 60-minute expiry rather than a full interval later.
                delay = min(self._keepalive_s, 60.0)
                log.warning("listenKey keepalive failed account=%s error=%s", self.account, exc)
            else:
                delay = self._keepalive_s

    # -- user stream ------------------------------------------------------------------------------
    async def user_stream(self) -> AsyncIterator[StreamEvent]:
        """Connect, subscribe to order pushes and yield them until the connection ends."""
        key = await self._ensure_listen_key()
        url = f"{self._ws_url}?listenKey={key}"
        try:
            ws = await websockets.connect(
                url,
                ping_interval=None,  # MEXC's keepalive is the JSON PING below
                open_timeout=self.timeout_s,
                close_timeout=1.0,
                max_size=2**20,
                compression=None,
            )
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            raise self.rest.connect_failed(exc, "ws") from exc
        self.rest.connected("ws")
        self._streams[ws] = key
        try:
            with contextlib.suppress(ConnectionClosed):
                # A refused key is closed at once; its reason is still waiting to be read.
                await ws.send(SUBSCRIBE)
            async for event in self._read_stream(ws, key):
                yield event
        finally:
            self._streams.pop(ws, None)
            await ws.close()

    async def _read_stream(self, ws: ClientConnection, key: str) -> AsyncIterator[StreamEvent]:
        loop = asyncio.get_running_loop()
        subscribe_deadline: float | None = loop.time() + self.timeout_s
        next_ping = loop.time() + self._ping_interval_s
        pong_due: float | None = None
        while True:
            deadline = pong_due if pong_due is not None else next_ping
            if subscribe_deadline is not None:
                deadline = min(deadline, subscribe_deadline)
            try:
                # Not `wait_for`: on Python 3.11 it makes a task per frame (review 36 measured it
                # among the stream's largest costs during a kill's burst of pushes).
                async with asyncio.timeout_at(deadline):
                    frame = await ws.recv()
            except TimeoutError:
                now = loop.time()
                if subscribe_deadline is not None and now >= subscribe_deadline:
                    raise self._stream_error("no subscription ack") from None
                if pong_due is not None:
                    raise self._stream_error("no PONG to our PING") from None
                await self._send_ping(ws)
                pong_due = now + self._pong_timeout_s
                next_ping = now + self._ping_interval_s
                continue
            except ConnectionClosed as exc:
                if key in self._lost_keys:
                    yield StreamTerminated("listenKey expired")
                    return
                raise self._stream_error(f"connection closed code={_close_code(exc)}") from exc
            if isinstance(frame, bytes):
                event = decode_push(frame)
                if event is not None:
                    self.known_symbols.add(event.symbol)
                    yield event
                continue
            if INVALID_LISTEN_KEY in frame:
                if self._listen_key == key:
                    self._listen_key = None
                yield StreamTerminated(f"{INVALID_LISTEN_KEY}: listenKey expired or closed")
                return
            msg = _control_msg(frame)
            if msg == "PONG":
                pong_due = None
            elif msg == pb.ORDERS_CHANNEL:
                if subscribe_deadline is not None:
                    subscribe_deadline = None
                    yield StreamSubscribed()
            elif msg is not None and subscribe_deadline is not None and "Not Subscribed" in msg:
                raise Fatal(
                    f"subscription refused: {msg}", venue=VENUE, account=self.account, endpoint="ws"
                )

    async def _send_ping(self, ws: ClientConnection) -> None:
        try:
            await ws.send(PING)
        except ConnectionClosed as exc:
            raise self._stream_error(f"connection closed code={_close_code(exc)}") from exc

    def _stream_error(self, what: str) -> Transient:
        return Transient(what, venue=VENUE, account=self.account, endpoint="ws")
