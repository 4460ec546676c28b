"""MEXC spot v3 connector: signed REST cancels and reads, listenKey stream of protobuf pushes.

Venue facts (`exchange-apis.md` §2): HMAC-SHA256 over the query string followed by the body;
every endpoint has its own budget of 500 weight per 10 s; `DELETE /api/v3/openOrders` cancels
up to 5 comma-separated symbols including OCO legs; there is no batch cancel by ids, no
order-list endpoint and no dead-man's switch. The user stream needs a listenKey (60 min,
extended every 30 min) and pushes `PushDataV3ApiWrapper` protobuf frames. A UID holds at most
60 listenKeys: given a `listen_key_path`, the key made is remembered there and reused by the
next process while MEXC still lists it, so that a crash loop does not leak one key per life.

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
from pathlib import Path
from types import MappingProxyType
from typing import Any, Unpack

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from killswitch.exchanges import mexc_proto as pb
from killswitch.exchanges.base import (
    BAD_SYMBOL_CODES,
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
from killswitch.exchanges.mexc.listen_keys import WS_LOG, ListenKeyFile, RememberedKey
from killswitch.exchanges.mexc.parse import (
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
from killswitch.exchanges.mexc.reads import OpenOrderReads, with_checks
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


# Per endpoint: 500 weight per 10 s [MX-DOC "LIMITS"]. Weights: cancels 1, openOrders 3. Where
# MEXC's 10 s windows start is not said: its budgets slide (`RateBudget`; review 48: reads at
# the cap of each of two adjacent fixed windows of ours landed in one of MEXC's, 429s).
MEXC_RATE_LIMITS = RateLimits(
    weight_per_window=500,
    window_s=10.0,
    cancel_weight=1,
    snapshot_weight=3,
    snapshot_symbol_weight=3,
    list_snapshot_weight=0,
    windows_aligned=False,
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


USER_DATA_STREAM = "/api/v3/userDataStream"
MAX_LISTEN_KEYS = 60  # per UID [MX-DOC "Websocket User Data Streams"]

WIRE = Wire(
    MEXC,
    key_header="X-MEXC-APIKEY",
    query=mexc_query,
    decode=rest_answer,
    headers=MappingProxyType({"Content-Type": "application/json"}),
)


class MexcExchange(OpenOrderReads, VenueConnector):
    """One MEXC spot account."""

    venue = VENUE
    time_path = "/api/v3/time"

    def __init__(
        self,
        *,
        symbols_hint: Sequence[str] = (),
        rate_limits: RateLimits = MEXC_RATE_LIMITS,
        listen_key_keepalive_s: float = 1800.0,
        listen_key_path: Path | None = None,
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
        self._init_reads(symbols_hint)
        self._listen_key: str | None = None
        self._unsure_since: set[str] | None = None  # the keys before a create gone unanswered
        self._taken_keys: set[str] = set()  # keys taken up, never deleted by us
        self._lost_keys: set[str] = set()
        self._streams: dict[ClientConnection, str] = {}
        self._keepalive_task: asyncio.Task[None] | None = None
        self._key_file = None if listen_key_path is None else ListenKeyFile(listen_key_path)
        self._remembered = None if self._key_file is None else self._key_file.load(self.account)
        self._keys_exhausted = False  # the UID's 60 keys are all others': said once, at ERROR

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
        # Also after a failed start: the stream may have made a key since (review 66).
        key, self._listen_key = self._listen_key, None
        if key is not None and key not in self._taken_keys:
            try:
                await asyncio.wait_for(self._delete_listen_key(key), timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Fatal as exc:
                if exc.code != LISTEN_KEY_GONE:
                    log.info("listenKey delete failed account=%s error=%s", self.account, exc)
                    return
            except (VenueError, TimeoutError) as exc:
                # Still remembered: the next run reuses it if MEXC still lists it.
                log.info("listenKey delete failed account=%s error=%s", self.account, exc)
                return
            self._forget(key)

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
                rows, left_out = with_checks(_rows(whole, self.account), checked, read_at)
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
            # A delisted symbol cannot be read: a read naming it proves nothing (review 48),
            # until exchangeInfo lists it again (looked up once a minute at most; review 49).
            named = [s for s in wanted if s in self._delisted_symbols]  # none, nearly always
            delisted = await asyncio.gather(*(self._still_delisted(s, priority) for s in named))
            gone = [s for s, off in zip(named, delisted, strict=True) if off]
            if gone:
                complete = False
                wanted = [s for s in wanted if s not in gone]
            rows = await self._read_symbols(wanted, priority, probe=wanted)
        orders = tuple(order_from_row(row) for row in rows)
        self.known_symbols.update(o.symbol for o in orders)
        self._busy = sorted({o.symbol for o in orders})
        return Snapshot(orders=orders, lists=(), server_time_ms=read_at, complete=complete)

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
        # One request: a refusal of what it names is the request's (`_cancel_chunk`).
        alone = len(wanted) <= MAX_SYMBOLS_PER_CALL
        acks = await _gather_all(
            self._cancel_chunk(chunk, priority, alone=alone) for chunk in _chunks(wanted)
        )
        return CancelAck(cancelled=tuple(i for ack in acks for i in ack.cancelled))

    async def _cancel_chunk(
        self, symbols: Sequence[str], priority: Priority, *, alone: bool = False
    ) -> CancelAck:
        self.known_symbols.update(s for s in symbols if s not in self._delisted_symbols)
        try:
            rows = await self.rest.request(
                "DELETE", "/api/v3/openOrders", [("symbol", ",".join(symbols))], priority=priority
            )
        except AlreadyGone:
            return CancelAck()  # nothing open there: an empty ack, not an error
        except (Fatal, OutcomeUnknown) as exc:
            if exc.code not in BAD_SYMBOL_CODES:
                raise
            # One symbol MEXC calls bad (delisted, say) must not stop the others' cancels
            # (review 48): each alone; the bad one cancels nothing, and no read proves it flat.
            # A cancel of that one symbol alone is refused as the venue said (review 62): the
            # kill alarms, does not send it again, and stops when nothing else is left.
            if len(symbols) == 1:
                await self.symbol_refused(symbols[0], priority)
                if alone and isinstance(exc, Fatal):
                    raise
                return CancelAck()
            each = await asyncio.gather(
                *(self._cancel_chunk([s], priority, alone=True) for s in symbols),
                return_exceptions=True,
            )
            refusals = [e for e in each if isinstance(e, Fatal) and e.code in BAD_SYMBOL_CODES]
            failed = [e for e in each if isinstance(e, BaseException) and e not in refusals]
            if failed:
                raise failed[0] from exc
            if alone and len(refusals) == len(symbols):
                raise refusals[0] from exc  # every symbol it names is refused: so is the request
            return CancelAck(
                cancelled=tuple(i for a in each if isinstance(a, CancelAck) for i in a.cancelled)
            )
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
            self._listen_key = await self._create_listen_key()
        if self._keepalive_task is None or self._keepalive_task.done():
            self._keepalive_task = self._spawn(self._keep_listen_key_alive())
        return self._listen_key

    async def _create_listen_key(self) -> str:
        """A listenKey for the stream. A create whose answer was lost (a 5xx, a timeout) may
        have made one: the valid keys are listed before and after it, and a new one is taken
        up, so that a storm cannot leak keys into the UID's 60 (review 46; other clients of
        the UID hold keys too, so none is ever deleted but ours). The key an earlier run
        remembered is reused while MEXC lists it: a crash loop leaks no key (review 66)."""
        now = await self._valid_listen_keys()
        if self._unsure_since is not None:
            # an earlier create's answer was lost and so was the listing after it
            made, self._unsure_since = now - self._unsure_since, None
            if made:
                return self._taken_up(made)
        reused = await self._reuse_remembered(now)
        if reused is not None:
            return reused
        try:
            data = await self.rest.request("POST", USER_DATA_STREAM, priority=Priority.KILL)
        except (OutcomeUnknown, Transient) as exc:
            self._unsure_since = now
            made = (await self._valid_listen_keys()) - now
            self._unsure_since = None
            if made:
                return self._taken_up(made)
            if len(now) < MAX_LISTEN_KEYS:
                raise
            raise self._no_key_left(len(now), exc) from exc
        except Fatal as exc:
            if len(now) < MAX_LISTEN_KEYS:
                raise
            raise self._no_key_left(len(now), exc) from exc
        if self._keys_exhausted:
            self._keys_exhausted = False
            log.warning("listenKey made again account=%s: the UID had a key free", self.account)
        key = str(data["listenKey"])
        self._remember(key, ours=True)
        return key

    async def _reuse_remembered(self, valid: set[str]) -> str | None:
        """The key an earlier run of this account made, kept alive, if MEXC still lists it."""
        remembered = self._remembered
        if remembered is None:
            return None
        if remembered.key not in valid:
            self._remembered = None
            log.info("listenKey of an earlier run is gone account=%s: making one", self.account)
            return None
        try:
            await self.rest.request(
                "PUT", USER_DATA_STREAM, [("listenKey", remembered.key)], priority=Priority.KILL
            )
        except Fatal as exc:
            if exc.code != LISTEN_KEY_GONE:
                raise
            self._remembered = None
            log.info("listenKey of an earlier run expired account=%s: making one", self.account)
            return None
        if not remembered.ours:
            self._taken_keys.add(remembered.key)
        log.info("listenKey of an earlier run reused account=%s", self.account)
        return remembered.key

    def _no_key_left(self, held: int, exc: VenueError) -> Fatal:
        """The UID's keys are all taken, none by us: the stream waits until one is freed."""
        what = (
            f"listenKey create refused: the UID holds {held} valid listenKeys (MEXC allows "
            f"{MAX_LISTEN_KEYS} per UID), none of them ours; no user stream until one expires "
            f"(60 min after its last keepalive) or its client deletes it ({exc.code}: {exc.msg})"
        )
        if not self._keys_exhausted:
            self._keys_exhausted = True
            log.error("%s account=%s", what, self.account)
        return Fatal(what, venue=VENUE, account=self.account, code=exc.code, endpoint=exc.endpoint)

    def _taken_up(self, made: set[str]) -> str:
        """One of the keys that appeared (any serves the UID's stream; another client of the
        UID may have made one too). A key taken up is never deleted by us: it may be another
        client's (review 48); taking one even when several appeared stops the leak (review 49)."""
        key = sorted(made)[0]
        log.warning(
            "listenKey create unanswered account=%s: taking up the key it made", self.account
        )
        self._taken_keys.add(key)
        self._remember(key, ours=False)
        return key

    def _remember(self, key: str, *, ours: bool) -> None:
        self._remembered = RememberedKey(key, ours=ours)
        if self._key_file is not None:
            self._key_file.save(self._remembered, self.account)

    def _forget(self, key: str) -> None:
        if self._remembered is not None and self._remembered.key == key:
            self._remembered = None
            if self._key_file is not None:
                self._key_file.forget(self.account)

    async def _valid_listen_keys(self) -> set[str]:
        """The UID's valid listenKeys (`GET`: `{"listenKey": [...]}`)."""
        data = await self.rest.request("GET", USER_DATA_STREAM, priority=Priority.KILL)
        keys = data.get("listenKey") if isinstance(data, dict) else None
        if not isinstance(keys, list):
            raise OutcomeUnknown("listenKey list unreadable", venue=VENUE, account=self.account)
        return {str(k) for k in keys}

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
                logger=WS_LOG,
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
