"""BingX spot connector: `BingxExchange`, one account (the venue's facts are in the package's
docstring)."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Unpack

from killswitch.exchanges.base import (
    AlreadyGone,
    BatchResult,
    CancelAck,
    DeadMansSwitchState,
    Fatal,
    OutcomeUnknown,
    Transient,
    VenueError,
    malformed_is_unknown,
)
from killswitch.exchanges.bingx.lists import (
    index_lists,
    may_be_refused_leg,
    oco_cancel,
    open_oco_lists,
    order_events,
    saw_open_after_cancel_all,
    settle_legs,
)
from killswitch.exchanges.bingx.parse import (
    MalformedAnswer,
    _gather,
    _items,
    _OcoList,
    batch_result,
    dead_mans_switch_state,
    order_id_str,
    parse_order,
    snapshot_parts,
)
from killswitch.exchanges.bingx.reads import open_order_rows
from killswitch.exchanges.bingx.rest import WIRE, BingxCharges, signer
from killswitch.exchanges.bingx.stream import _stream_url, stream_events
from killswitch.exchanges.bingx.venue import (
    API_PERMISSION_NAMES,
    API_PERMISSION_SPOT_TRADING,
    API_PERMISSIONS,
    BATCH_CANCEL_MAX,
    CANCEL,
    CANCEL_ALL_AFTER,
    CANCEL_OPEN_ORDERS,
    CANCEL_ORDERS,
    CAPABILITIES,
    CLIENT_ID_QUERIES,
    CLOCK_MARGIN_MS,
    OCO_CANCEL,
    QUERY,
    RECV_WINDOW_MAX_MS,
    SERVER_TIME,
    SYMBOLS,
    SYMBOLS_TTL_S,
    USER_DATA_STREAM,
    kind_rates,
)
from killswitch.exchanges.budget import Priority, shared_item, shared_users
from killswitch.exchanges.connector import ConnectorArgs, VenueConnector, cancel_in_groups
from killswitch.exchanges.paths import (
    LearnedPaths,
    PathCapabilities,
)
from killswitch.model import (
    UNREAD_CLIENT_ID,
    ListKey,
    Order,
    OrderKey,
    Snapshot,
    StreamEvent,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SymbolList:
    """The venue's spot symbols as last read, for every account behind our IP."""

    listed: tuple[str, ...] = ()
    read_at: float = -math.inf  # monotonic
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class BingxExchange(VenueConnector):
    """One BingX spot account."""

    venue = "bingx"
    time_path = SERVER_TIME

    def __init__(
        self,
        *,
        heartbeat_timeout_s: float = 15.0,
        listen_key_refresh_s: float = 1800.0,
        warm_connections: int = 4,
        budget_clock: Callable[[], float] | None = None,
        budget_sleep: Callable[[float], Awaitable[None]] | None = None,
        learned_path: Path | None = None,
        rng: random.Random | None = None,
        **args: Unpack[ConnectorArgs],
    ) -> None:
        super().__init__(**args)
        # The strictest reading of the docs caps recvWindow at 5000 ms (§3.7).
        self.recv_window_ms = min(self.recv_window_ms, RECV_WINDOW_MAX_MS)
        # Three missed server pings (one every 5 s) mean the stream is dead [BX-DOC heartbeat].
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.listen_key_refresh_s = listen_key_refresh_s
        self.warm_connections = warm_connections
        self._ws_url = _stream_url(self._ws_url)
        self.charges = BingxCharges(
            self.account,
            self.clock,
            self.ip_scope,
            budget_clock=budget_clock,
            budget_sleep=budget_sleep,
            rng=rng or random.Random(),
        )
        self.group_budget = self.charges.group_budget
        self.budgets = self.charges.budgets
        self.ip_budgets = self.charges.ip_budgets
        self.errors = self.charges.errors
        self.rest = self._signed_rest(WIRE, self.charges, signer(self._secret))
        self.learned = LearnedPaths.load(learned_path)
        self._list_legs: dict[str, tuple[str, ...]] = {}  # OCO list id -> leg order ids
        self._leg_list: dict[str, str] = {}  # leg order id -> OCO list id
        self._client_ids: dict[OrderKey, str] = {}  # what `client_ids` learned
        self._list_symbol: dict[str, str] = {}  # OCO list id -> symbol
        # The last cancel-all without symbol: when it was acknowledged (monotonic), the venue
        # ms before which a list placed was open when it acted, and the lists a read had shown
        # open before it was sent (`lists.saw_open_after_cancel_all`).
        self._cancel_all_acked: tuple[float, int, frozenset[str]] | None = None
        self._list_time: dict[str, int] = {}  # OCO list id -> when placed (venue ms)
        self._venue_symbols = shared_item(self.ip_scope, "bingx symbols", SymbolList)
        self._oco_read_lock = asyncio.Lock()
        self._oco_read: tuple[float, list[_OcoList], bool] | None = None
        # By shape: the most lists and items one oco/openOrderList page has shown.
        self._oco_page_most: dict[str, tuple[int, int]] = {}

    @property
    def capabilities(self) -> PathCapabilities:
        """The static facts, plus what this account has taught us (§3.7), and its share of
        the per-IP budgets with the other accounts behind our IP."""
        covers = self.learned.cancel_all_covers_lists
        return replace(
            CAPABILITIES,
            cancel_all_covers_lists=covers is True,
            lists_coverage=covers,
            list_legs_by_batch=self.learned.leg_id_cancels_list,
            rates=kind_rates(shared_users(self.ip_scope)),
        )

    def learned_paths(self) -> dict[str, object]:
        """What this account has taught us, for status and events."""
        return self.learned.to_json()

    def on_learned(self, listener: Callable[[str, bool | str], None]) -> None:
        """Call `listener(name, value)` whenever this account teaches us something new (an
        event for the audit log: "bingx/mm-1 learned leg_id_cancels_list=False")."""
        self.learned.listeners.append(listener)

    # -- lifecycle -------------------------------------------------------------------------
    @malformed_is_unknown
    async def _open(self) -> None:
        """Measure the clock offset, and warm pooled connections."""
        # Only the clock must be measured; the other requests just open pooled connections.
        warm = [self._warm() for _ in range(self.warm_connections - 1)]
        await _gather([self.sync_clock(Priority.BACKGROUND), *warm])
        log.info(
            "bingx connector started account=%s offset_ms=%.1f rtt_ms=%.1f",
            self.account,
            self.clock.offset_ms,
            self.clock.last_rtt_ms,
        )

    async def _shut(self) -> None:
        """Nothing besides the REST pool: each stream closes with its iterator."""

    async def _warm(self) -> None:
        # A warm-up only opens a pooled connection: it never waits for the market group's
        # budget (one per IP for every account), and leaves half of it to the clock syncs and
        # readiness checks of every account starting beside this one.
        market = self.ip_budgets[SERVER_TIME]
        if market.used() >= market.limit // 2:
            return
        try:
            await self._background_time()
        except VenueError as exc:
            log.info("bingx warm-up request failed account=%s error=%s", self.account, exc)

    # -- time ------------------------------------------------------------------------------
    @malformed_is_unknown
    async def server_time_ms(self) -> int:
        """Ask the venue for its time (one request, in the background share)."""
        return await self._background_time()

    # -- reads -----------------------------------------------------------------------------
    @malformed_is_unknown
    async def snapshot(
        self, symbols: Sequence[str] | None = None, *, priority: Priority = Priority.KILL
    ) -> Snapshot:
        """Open orders and OCO lists: one no-symbol read, or one read per symbol given.

        `complete` is False when any read may have been cut short: a page of 2,000 rows (the
        venue's cap), OCO pages that never ended, or symbols a capped read could not cover
        within `MAX_SYMBOL_READS`. Such a snapshot lists what is open, never proves flat.
        """
        read_at = self.clock.now_ms()
        wanted = None if symbols is None else list(dict.fromkeys(symbols))
        oco_task = asyncio.ensure_future(open_oco_lists(self, priority))
        try:
            rows, complete = await open_order_rows(self, wanted, priority)
        finally:
            oco_done = await asyncio.gather(oco_task, return_exceptions=True)
        oco = oco_done[0]
        if isinstance(oco, BaseException):
            raise oco
        oco_lists, oco_complete = oco
        index_lists(self, oco_lists, oco_complete)
        orders, lists = snapshot_parts(rows, oco_lists, wanted)
        return Snapshot(
            tuple(orders.values()),
            tuple(lists),
            read_at,
            complete=complete and oco_complete,
        )

    async def venue_symbols(self, priority: Priority = Priority.KILL) -> tuple[str, ...]:
        """The venue's spot symbols (`common/symbols`, 1/s per IP), cached for `SYMBOLS_TTL_S`
        for every account behind our IP: accounts asking at once share one request."""
        cache = self._venue_symbols
        async with cache.lock:
            if cache.listed and time.monotonic() - cache.read_at < SYMBOLS_TTL_S:
                return cache.listed
            data = await self.rest.request("GET", SYMBOLS, signed=False, priority=priority)
            rows = _items(data, "symbols", read=True)
            if not rows:
                raise MalformedAnswer("common/symbols: no symbols")
            cache.listed = tuple(dict.fromkeys(str(row["symbol"]) for row in rows))
            cache.read_at = time.monotonic()
            return cache.listed

    @malformed_is_unknown
    async def query_order(
        self, symbol: str, order_id: str, *, priority: Priority = Priority.BACKGROUND
    ) -> Order:
        """One order by id, open or not."""
        data = await self.rest.request(
            "GET", QUERY, [("orderId", order_id), ("symbol", symbol)], priority=priority
        )
        if not isinstance(data, dict):
            raise OutcomeUnknown("query answer is not an object", venue=self.venue)
        return parse_order(data, self._leg_list.get(order_id))

    async def client_ids(self, orders: Sequence[Order]) -> dict[OrderKey, str]:
        """Each order's client id by `trade/query`, which shows it (its row in openOrders
        may not, §3.3), for at most `CLIENT_ID_QUERIES` orders a call; remembered, since a
        client id never changes. An order the query does not settle is left out."""
        todo = [o for o in orders if o.key not in self._client_ids][:CLIENT_ID_QUERIES]

        async def ask(order: Order) -> None:
            try:
                seen = await self.query_order(order.symbol, order.order_id, priority=Priority.KILL)
            except VenueError as exc:
                log.info("bingx client id query failed account=%s: %s", self.account, exc)
                return
            if seen.client_order_id != UNREAD_CLIENT_ID:
                self._client_ids[order.key] = seen.client_order_id

        await _gather([ask(o) for o in todo])
        return {o.key: self._client_ids[o.key] for o in orders if o.key in self._client_ids}

    # -- cancels ---------------------------------------------------------------------------
    @malformed_is_unknown
    async def cancel_all(
        self, symbols: Sequence[str] | None, *, priority: Priority = Priority.KILL
    ) -> CancelAck:
        """`cancelOpenOrders`: no symbol cancels every order; else one call per symbol.

        Whether it also cancels OCO legs is learned: legs in its answer say yes; a list open
        before it acted that the venue shows open after its acknowledgement says no
        (`lists.saw_open_after_cancel_all`). Nothing else says yes: lists gone from a later
        read may have been filled, or cancelled by requests of ours on their way.
        """
        # Looked up before it is sent: a leg's stream event may forget its list first.
        leg_list = dict(self._leg_list)
        if symbols is None:
            before = frozenset(self._list_legs)
            sent_ms = self.clock.now_ms()
            cancelled, acted_ms = await self._cancel_open_orders(None, priority)
            acks = [cancelled]
            if not acted_ms:
                # No venue time in the answer: when we sent it, less our clock's error (a list
                # placed after it reached the venue must not be taken for a survivor).
                acted_ms = int(sent_ms - max(CLOCK_MARGIN_MS, self.clock.last_rtt_ms))
            self._cancel_all_acked = (time.monotonic(), acted_ms, before)
            if any(leg in leg_list or leg in self._leg_list for _, leg in cancelled):
                self.learned.learn("cancel_all_covers_lists", True)
        else:
            answers = await _gather(
                [self._cancel_open_orders(s, priority) for s in dict.fromkeys(symbols)]
            )
            acks = [cancelled for cancelled, _ in answers]
        keys = tuple(k for ack in acks for k in ack)
        # ...or what a read indexed while it was on its way (review 97).
        owners = ((symbol, leg_list.get(leg) or self._leg_list.get(leg)) for symbol, leg in keys)
        lists = tuple(
            dict.fromkeys(self._list_key(lid, symbol) for symbol, lid in owners if lid is not None)
        )
        return CancelAck(cancelled=keys, lists_cancelled=lists)

    def _list_key(self, list_id: str, symbol: str) -> ListKey:
        """The (symbol, list id) of a list, its symbol as the list read named it (`symbol`
        where no read has shown it)."""
        return (self._list_symbol.get(list_id, symbol), list_id)

    async def _cancel_open_orders(
        self, symbol: str | None, priority: Priority
    ) -> tuple[list[OrderKey], int]:
        """The orders `cancelOpenOrders` cancelled, and the earliest venue time (ms) its rows
        give for it (their `updateTime`; 0 when none does)."""
        params = [("symbol", symbol)] if symbol else []
        try:
            data = await self.rest.request("POST", CANCEL_OPEN_ORDERS, params, priority=priority)
        except AlreadyGone:
            return [], 0  # nothing open on that symbol is not an error
        rows = _items(data, "orders")
        keys = [(str(o.get("symbol") or symbol or ""), order_id_str(o["orderId"])) for o in rows]
        times = [t for o in rows if isinstance(t := o.get("updateTime"), int) and t > 0]
        return keys, min(times, default=0)

    @malformed_is_unknown
    async def cancel_order(
        self, symbol: str, order_id: str, *, priority: Priority = Priority.KILL
    ) -> CancelAck:
        """Cancel one order. Raises `AlreadyGone` when it is not open.

        Near the error lock on `cancel`, the id goes through `cancelOrders` with `process=1`,
        where "gone" is an entry in a success, not one more error. An OCO leg answered "gone"
        is checked against the open lists: a leg the venue would not cancel by id has its
        list cancelled through `oco/cancel`.
        """
        if self.errors.near(CANCEL):
            result = await self.cancel_orders(symbol, [order_id], priority=priority)
            if result.failed:
                raise result.failed[0][1]
            if result.gone:
                raise AlreadyGone(
                    "order not open", venue=self.venue, account=self.account, endpoint=CANCEL
                )
            return CancelAck(cancelled=((symbol, order_id),))
        # The leg's list as it was when the cancel went: the stream may show the list gone
        # (with its leg) and forget it before the answer comes.
        sent_list = self._leg_list.get(order_id)
        sent_legs = self._list_legs.get(sent_list, ()) if sent_list is not None else ()
        placed = self._list_time.get(sent_list, 0) if sent_list is not None else 0
        asked = time.monotonic()
        try:
            await self.rest.request(
                "POST", CANCEL, [("orderId", order_id), ("symbol", symbol)], priority=priority
            )
        except AlreadyGone:
            if not may_be_refused_leg(self, order_id):
                raise
            rescued = await settle_legs(self, symbol, {order_id}, priority, batch=True)
            if not rescued:
                raise
            return CancelAck(
                cancelled=tuple((symbol, leg) for leg in rescued[1]),
                lists_cancelled=tuple(self._list_key(x, symbol) for x in rescued[0]),
            )
        list_id = self._leg_list.get(order_id, sent_list)
        if list_id is None:
            return CancelAck(cancelled=((symbol, order_id),))
        self.learned.learn("leg_id_cancels_list", True)  # it took a leg's id
        if sent_list is not None:  # its leg was open when the venue took this
            saw_open_after_cancel_all(self, [(sent_list, placed)], asked)
        # The list went with its leg, and so did its other legs.
        legs = self._list_legs.get(list_id) or sent_legs or (order_id,)
        return CancelAck(
            cancelled=tuple((symbol, leg) for leg in legs),
            lists_cancelled=(self._list_key(list_id, symbol),),
        )

    @malformed_is_unknown
    async def cancel_orders(
        self, symbol: str, order_ids: Sequence[str], *, priority: Priority = Priority.KILL
    ) -> BatchResult:
        """`cancelOrders` with `process=1`, in chunks of `batch_cancel_max`, concurrently.

        OCO legs among the ids: if the venue answers one "gone" while its list is still open
        (it would not cancel a list by a leg's id), the list is cancelled through `oco/cancel`
        and the account remembers to plan lists that way.
        """
        ids = list(dict.fromkeys(order_ids))
        chunks = [ids[i : i + BATCH_CANCEL_MAX] for i in range(0, len(ids), BATCH_CANCEL_MAX)]
        sent = await cancel_in_groups(
            chunks, lambda chunk: self._cancel_chunk(symbol, chunk, priority)
        )
        cancelled, gone = list(sent.cancelled), list(sent.gone)
        # "Gone" may hide an OCO leg the venue would not cancel by id, one of a list placed
        # since our last read of the lists too: check them against a fresh read.
        legs_said_gone = {i for i in gone if may_be_refused_leg(self, i)}
        legs_cancelled = {i for i in cancelled if i in self._leg_list}
        if legs_cancelled:
            # The venue cancelled a leg by its id: its list went with it, or the next read
            # shows the other leg (and the planner sends it again).
            self.learned.learn("leg_id_cancels_list", True)
            legs_said_gone = {i for i in legs_said_gone if i in self._leg_list}
        if legs_said_gone:
            settled = await settle_legs(self, symbol, legs_said_gone, priority, batch=True)
            if settled:
                rescued = set(settled[1])
                gone = [i for i in gone if i not in rescued]
                cancelled.extend(i for i in settled[1] if i not in cancelled)
        return BatchResult(tuple(cancelled), tuple(gone), sent.failed)

    @malformed_is_unknown
    async def _cancel_chunk(
        self, symbol: str, chunk: Sequence[str], priority: Priority
    ) -> BatchResult:
        # Looked up before it is sent: a leg's stream event may forget its list first.
        legs = {i: lid for i in chunk if (lid := self._leg_list.get(i)) is not None}
        placed = {lid: self._list_time.get(lid, 0) for lid in legs.values()}
        asked = time.monotonic()
        data = await self.rest.request(
            "POST",
            CANCEL_ORDERS,
            [("orderIds", ",".join(chunk)), ("process", "1"), ("symbol", symbol)],
            priority=priority,
        )
        result = batch_result(data, chunk, self.venue, self.account)
        # A leg it cancelled was open when the venue took this.
        shown = {legs[i] for i in result.cancelled if i in legs}
        saw_open_after_cancel_all(self, [(lid, placed[lid]) for lid in shown], asked)
        return result

    @malformed_is_unknown
    async def cancel_order_list(
        self, symbol: str, list_id: str, *, priority: Priority = Priority.KILL
    ) -> CancelAck:
        """`oco/cancel` by one leg's id: it cancels the whole OCO.

        Near the error lock on `oco/cancel` (each list already gone adds an error there), a
        batch cancel of the legs goes instead when the venue is known to take leg ids.
        """
        legs = self._list_legs.get(list_id)
        if legs is None:
            lists, complete = await open_oco_lists(self, priority)
            index_lists(self, lists, complete)
            legs = self._list_legs.get(list_id)
        if not legs:
            raise AlreadyGone(
                f"no open OCO list {list_id}",
                venue=self.venue,
                account=self.account,
                endpoint=f"POST {OCO_CANCEL}",
            )
        symbol = self._list_symbol.get(list_id, symbol)
        if self.errors.near(OCO_CANCEL) and self.learned.leg_id_cancels_list:
            result = await self.cancel_orders(symbol, list(legs), priority=priority)
            if result.failed:
                raise result.failed[0][1]
            return CancelAck(
                cancelled=tuple((symbol, leg) for leg in result.cancelled + result.gone),
                lists_cancelled=((symbol, list_id),),
            )
        await oco_cancel(self, legs[0], priority)
        return CancelAck(
            cancelled=tuple((symbol, leg) for leg in legs), lists_cancelled=((symbol, list_id),)
        )

    # -- readiness -----------------------------------------------------------------------------
    @malformed_is_unknown
    async def account_permissions(self) -> dict[str, object]:
        """May this key trade and cancel spot? `GET /openApi/v1/account/apiPermissions`
        (BingX "Query API KEY permissions", background), for readiness checks only.

        The answer lists permission codes: 1 spot trading, 2 read, 3 perpetual futures
        trading, 4 universal transfer, 5 withdraw, 7 sub-account transfer."""
        data = await self.rest.request("GET", API_PERMISSIONS, priority=Priority.BACKGROUND)
        codes = [int(c) for c in data["permissions"]]
        return {
            "can_trade": API_PERMISSION_SPOT_TRADING in codes,
            "permissions": [API_PERMISSION_NAMES.get(c, str(c)) for c in codes],
            "detail": "no SPOT_TRADING permission",
        }

    def rate_headroom(self) -> dict[str, object]:
        """For readiness: the least headroom among this account's per-second budgets (0..1),
        how long a throttle or a ban holds them, and whether our IP is banned (a 418)."""
        sliding = [*self.budgets.values(), *dict.fromkeys(self.ip_budgets.values())]
        now = sliding[0].clock()
        group = self.group_budget  # every request's (a throttle of no one API blocks it)
        blocked = max(
            0.0, group.blocked_until - group.clock(), *(b.blocked_until - now for b in sliding)
        )
        banned_s = self.charges.banned_for()
        used = max(b.in_window() / b.limit for b in sliding)
        return {
            "headroom": max(0.0, 1.0 - used),
            "blocked_s": max(blocked, banned_s),
            "banned": banned_s > 0,
        }

    # -- dead man's switch -----------------------------------------------------------------
    @malformed_is_unknown
    async def arm_dead_mans_switch(self, timeout_s: int) -> DeadMansSwitchState:
        """`cancelAllAfter` ACTIVATE: everything is cancelled `timeout_s` (10-120) from now."""
        low, high = CAPABILITIES.dead_mans_switch_range_s or (10, 120)
        if not low <= timeout_s <= high:
            raise Fatal(
                f"cancelAllAfter timeOut must be {low}-{high} s, not {timeout_s}",
                venue=self.venue,
                account=self.account,
            )
        return await self._cancel_all_after([("timeOut", str(timeout_s)), ("type", "ACTIVATE")])

    @malformed_is_unknown
    async def disarm_dead_mans_switch(self) -> DeadMansSwitchState:
        """`cancelAllAfter` CLOSE."""
        return await self._cancel_all_after([("type", "CLOSE")])

    async def _cancel_all_after(self, params: list[tuple[str, str]]) -> DeadMansSwitchState:
        data = await self.rest.request("POST", CANCEL_ALL_AFTER, params)
        return dead_mans_switch_state(data, self.venue, self.account)

    # -- user-data stream ------------------------------------------------------------------
    @malformed_is_unknown
    async def create_listen_key(self, *, priority: Priority = Priority.BACKGROUND) -> str:
        """`POST userDataStream`: a key valid for 1 h."""
        data = await self.rest.request("POST", USER_DATA_STREAM, priority=priority)
        key = data.get("listenKey") if isinstance(data, dict) else None
        if not key:
            raise Transient("no listenKey in the answer", venue=self.venue, account=self.account)
        return str(key)

    @malformed_is_unknown
    async def extend_listen_key(self, key: str) -> bool:
        """`PUT userDataStream`: False when the venue no longer knows the key (404)."""
        try:
            await self.rest.request(
                "PUT",
                USER_DATA_STREAM,
                [("listenKey", key)],
                priority=Priority.BACKGROUND,
            )
        except VenueError as exc:
            if exc.http_status == 404:
                return False
            raise
        return True

    def user_stream(self) -> AsyncIterator[StreamEvent]:
        """Connect one user-data stream and yield normalised events until it ends."""
        return stream_events(self)

    def _order_events(self, data: dict[str, Any]) -> list[StreamEvent]:
        """The events one `spot.executionReport` payload means; `Transient` if unreadable."""
        return order_events(self, data)
