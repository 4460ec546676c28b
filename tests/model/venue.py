"""The model's venues: ground truth for the checker, and the connectors the engine talks to.

A `VenueAccount` is one account on a venue as the exchange itself sees it. It keeps one
simulator `SimBook` per symbol (the simulator's own book logic), so an account whose venue
numbers orders per symbol (Binance) holds the same order id on two symbols, as the real venue
does. Every order ever placed has an `OrderFact`: who placed it, when (the history's step
counter), and whether it is open or how it ended. The checker judges the engine against these
facts, never against the engine's own bookkeeping.

A `ModelConnector` is the `Exchange` the engine of one life of the daemon uses. It answers from
the account's books, after a per-account latency (virtual time), and raises the faults scripted
on the account: a 5xx before or after the request was applied (`OutcomeUnknown`), a 429, a
`Transient` refusal, a `Fatal` answer. When its life ends (a crash), it refuses everything.

Where the venue caps a read (`page_cap`: BingX's no-symbol open-orders read stops at 2,000
rows), the connector reports what it read with `complete=False`: what a correct connector says
of a page it could not finish.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import killswitch.model
from killswitch.exchanges.base import (
    AlreadyGone,
    BatchResult,
    CancelAck,
    Capabilities,
    DeadMansSwitchState,
    Fatal,
    OutcomeUnknown,
    RateLimited,
    Transient,
    VenueError,
)
from killswitch.model import (
    AccountRef,
    ExecType,
    ListEvent,
    Order,
    OrderEvent,
    OrderList,
    Snapshot,
    StreamEvent,
    StreamSubscribed,
)
from killswitch.sim.book import BookEvent, BookEventKind, OrderSpec, SimBook, UnknownOrder

OrderKey = tuple[str, str]
ListKey = tuple[str, str]  # (symbol, list id), as an order is (symbol, order id)

# Acks name (symbol, id) keys since orders are keyed by both; an older engine wants bare ids.
KEYED_ACKS = hasattr(killswitch.model, "OrderKey")


HAS_COMPLETE = "complete" in Snapshot.__dataclass_fields__


def _acked(keys: Sequence[OrderKey]) -> tuple[Any, ...]:
    return tuple(keys) if KEYED_ACKS else tuple(order_id for _, order_id in keys)


@dataclass(slots=True)
class OrderFact:
    """One order as the venue knows it, for the whole history."""

    ref: AccountRef
    symbol: str
    order_id: str
    client_order_id: str
    placed_seq: int
    list_id: str | None = None
    list_client_order_id: str = ""
    leg_client_order_ids: tuple[str, ...] = ()
    closed_seq: int | None = None
    closed_by: str | None = None  # "engine" (a cancel request) or "owner"
    stream_epoch: int = 0  # the account's stream epoch when the order was placed
    faults_at_place: int = 0  # faults the account had answered when the order was placed
    life_at_place: int = 0  # the daemon life running when the order was placed (0: down)

    @property
    def key(self) -> OrderKey:
        return (self.symbol, self.order_id)

    @property
    def list_key(self) -> ListKey | None:
        """The order's list, as the venue knows it: by symbol and id (ids may repeat across
        symbols where the venue numbers per symbol)."""
        return None if self.list_id is None else (self.symbol, self.list_id)

    @property
    def is_open(self) -> bool:
        return self.closed_seq is None

    def describe(self) -> str:
        leg = f" list={self.list_id}({self.list_client_order_id})" if self.list_id else ""
        return f"{self.ref}:{self.symbol}#{self.order_id} cid={self.client_order_id!r}{leg}"


@dataclass(slots=True)
class Fault:
    """The next `times` calls of `method` (or of any cancel, method "cancel") raise `kind`."""

    method: str
    kind: str  # 5xx | 429 | transient | fatal | stall (hangs, then 5xx)
    applied: bool = False  # 5xx after the venue applied the request
    times: int = 1
    retry_after_s: float = 1.0

    def error(self, ref: AccountRef) -> VenueError:
        where = {"venue": ref.venue, "account": ref.account, "endpoint": self.method}
        if self.kind in ("5xx", "stall"):
            return OutcomeUnknown("HTTP 503", http_status=503, **where)  # type: ignore[arg-type]
        if self.kind == "429":
            return RateLimited(
                "Too many requests", retry_after_s=self.retry_after_s, http_status=429, **where
            )
        if self.kind == "transient":
            return Transient("connection reset", **where)  # type: ignore[arg-type]
        return Fatal("Invalid API-key, IP, or permissions", code=-2015, **where)  # type: ignore[arg-type]


STALL_S = 100.0

_CANCELS = frozenset({"cancel_all", "cancel_order", "cancel_orders", "cancel_order_list"})


class VenueAccount:
    """One account on a venue: books per symbol, order facts, scripted faults, streams."""

    def __init__(
        self,
        ref: AccountRef,
        capabilities: Capabilities,
        symbols: Sequence[str],
        *,
        ids_per_symbol: bool,
        page_cap: int | None,
        clock: Callable[[], int],
    ) -> None:
        self.ref = ref
        self.capabilities = capabilities
        self.symbols = tuple(symbols)
        self.page_cap = page_cap
        self.latency_s = 0.0
        self.faults: list[Fault] = []
        self.faults_fired = 0
        self.facts: dict[OrderKey, OrderFact] = {}
        # (symbol, list id) -> list client id, leg client ids
        self.list_facts: dict[ListKey, tuple[str, tuple[str, ...]]] = {}
        self.stream_epoch = 0  # bumped whenever the stream may have lost events
        self.stream_silent = False
        self.seq: Callable[[], int] = lambda: 0
        self.life: Callable[[], int] = lambda: 0
        self.on_engine_cancel: Callable[[OrderFact], None] | None = None
        self._queues: list[asyncio.Queue[StreamEvent | None]] = []
        self._canceller: list[str] = []  # who is cancelling right now (engine | owner)
        self.ids_per_symbol = ids_per_symbol
        # The next order id per symbol (one shared counter unless the venue numbers per symbol).
        self._next_id = dict.fromkeys(self.symbols, 1000)
        # Order lists likewise: numbered per symbol where orders are, so two symbols' books
        # hold lists of the same id; one shared counter otherwise.
        shared = itertools.count(1)
        self.books: dict[str, SimBook] = {}
        for symbol in self.symbols:
            lists = itertools.count(1) if ids_per_symbol else shared
            book = SimBook(
                new_order_id=lambda symbol=symbol: self._mint(symbol),  # type: ignore[misc]
                new_list_id=lambda lists=lists: str(next(lists)),  # type: ignore[misc]
                now_ms=clock,
            )
            book.subscribe(self._on_book)
            self.books[symbol] = book

    def _mint(self, symbol: str) -> str:
        key = symbol if self.ids_per_symbol else self.symbols[0]
        order_id = self._next_id[key]
        self._next_id[key] += 1
        return str(order_id)

    def align_ids(self) -> None:
        """Per-symbol numbering: let every symbol's next order take the same id (the venue's
        ids are increasing per symbol, not dense, so any symbol may reach any id)."""
        if self.ids_per_symbol:
            top = max(self._next_id.values())
            self._next_id = dict.fromkeys(self._next_id, top)

    # -- the history's hand: placing and owners' cancels -----------------------------------
    def place(self, symbol: str, client_order_id: str) -> OrderFact:
        order = self.books[symbol].place(OrderSpec(symbol, client_order_id=client_order_id))
        return self.facts[(symbol, order.order_id)]

    def place_list(self, symbol: str, list_cid: str, leg_cids: tuple[str, str]) -> list[OrderFact]:
        legs = [
            OrderSpec(symbol, "SELL", "LIMIT_MAKER", Decimal(200), client_order_id=leg_cids[0]),
            OrderSpec(symbol, "SELL", "STOP_LOSS_LIMIT", Decimal(50), client_order_id=leg_cids[1]),
        ]
        order_list = self.books[symbol].place_list(legs, list_client_order_id=list_cid)
        return [self.facts[(symbol, oid)] for oid in order_list.order_ids]

    def owner_cancel(self, key: OrderKey) -> None:
        self._canceller.append("owner")
        try:
            self.books[key[0]].cancel(key[1])
        except UnknownOrder:
            pass
        finally:
            self._canceller.pop()

    def fill(self, key: OrderKey) -> None:
        """The market fills an order; a filled list leg expires its siblings."""
        self._canceller.append("market")
        try:
            self.books[key[0]].fill(key[1])
        except UnknownOrder:
            pass
        finally:
            self._canceller.pop()

    def open_facts(self) -> list[OrderFact]:
        return [f for f in self.facts.values() if f.is_open]

    # -- streams ---------------------------------------------------------------------------
    def drop_streams(self) -> None:
        """Every connected user stream fails now (events not yet delivered are lost)."""
        self.stream_epoch += 1
        for queue in list(self._queues):
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(None)

    def set_silent(self, silent: bool) -> None:
        """A silent stream stays connected and delivers nothing."""
        if silent != self.stream_silent:
            self.stream_epoch += 1
        self.stream_silent = silent

    async def stream(self, alive: Callable[[], bool]) -> AsyncIterator[StreamEvent]:
        if not alive():
            raise Transient("connection refused", venue=self.ref.venue, account=self.ref.account)
        queue: asyncio.Queue[StreamEvent | None] = asyncio.Queue()
        self._queues.append(queue)
        try:
            yield StreamSubscribed()
            while True:
                item = await queue.get()
                if item is None or not alive():
                    raise Transient("stream dropped", venue=self.ref.venue)
                yield item
        finally:
            if queue in self._queues:
                self._queues.remove(queue)

    def _on_book(self, event: BookEvent) -> None:
        if event.kind is BookEventKind.LIST_STATUS:
            lst = event.order_list
            assert lst is not None
            if (lst.symbol, lst.list_id) not in self.list_facts:
                legs = tuple(
                    o.client_order_id
                    for oid in lst.order_ids
                    if (o := self.books[lst.symbol].get(oid)) is not None
                )
                self.list_facts[(lst.symbol, lst.list_id)] = (lst.list_client_order_id, legs)
                for oid in lst.order_ids:
                    fact = self.facts[(lst.symbol, oid)]
                    fact.list_client_order_id = lst.list_client_order_id
                    fact.leg_client_order_ids = legs
            if self.capabilities.has_order_lists:
                self._publish(
                    ListEvent(
                        symbol=lst.symbol,
                        list_id=lst.list_id,
                        list_client_order_id=lst.list_client_order_id,
                        is_open=lst.open,
                        order_ids=tuple(lst.order_ids),
                        event_time_ms=event.time_ms,
                    )
                )
            return
        order = event.order
        assert order is not None
        key = (order.symbol, order.order_id)
        if event.kind is BookEventKind.NEW:
            self.facts[key] = OrderFact(
                self.ref,
                order.symbol,
                order.order_id,
                order.client_order_id,
                self.seq(),
                list_id=order.list_id,
                stream_epoch=self.stream_epoch,
                faults_at_place=self.faults_fired,
                life_at_place=self.life(),
            )
        elif not order.is_open:
            fact = self.facts[key]
            if fact.closed_seq is None:
                fact.closed_seq = self.seq()
                fact.closed_by = self._canceller[-1] if self._canceller else "engine"
                if fact.closed_by == "engine" and self.on_engine_cancel is not None:
                    self.on_engine_cancel(fact)
        exec_type = {
            BookEventKind.NEW: ExecType.NEW,
            BookEventKind.TRADE: ExecType.TRADE,
            BookEventKind.CANCELED: ExecType.CANCELED,
        }[event.kind]
        self._publish(
            OrderEvent(
                symbol=order.symbol,
                order_id=order.order_id,
                client_order_id=order.client_order_id,
                exec_type=exec_type,
                status=order.status,
                is_open=order.is_open,
                event_time_ms=event.time_ms,
                list_id=order.list_id,
            )
        )

    def _publish(self, event: StreamEvent) -> None:
        if self.stream_silent:
            return
        for queue in self._queues:
            queue.put_nowait(event)

    # -- faults ----------------------------------------------------------------------------
    def take_fault(self, method: str) -> Fault | None:
        for fault in self.faults:
            wanted = fault.method == method or (fault.method == "cancel" and method in _CANCELS)
            if wanted and fault.times > 0:
                fault.times -= 1
                self.faults_fired += 1
                return fault
        return None

    def heal(self) -> None:
        self.faults.clear()


def _order(book: SimBook, order_id: str) -> Order:
    o = book.get(order_id)
    assert o is not None
    return Order(
        symbol=o.symbol,
        order_id=o.order_id,
        client_order_id=o.client_order_id,
        side=o.side,
        order_type=o.order_type,
        price=str(o.price),
        orig_qty=str(o.orig_qty),
        status=o.status,
        list_id=o.list_id,
    )


@dataclass(slots=True)
class ModelConnector:
    """The `Exchange` one life of the daemon uses for one account."""

    va: VenueAccount
    alive: bool = True
    calls: int = 0
    venue: str = field(init=False)
    account: str = field(init=False)
    capabilities: Capabilities = field(init=False)

    def __post_init__(self) -> None:
        self.venue = self.va.ref.venue
        self.account = self.va.ref.account
        self.capabilities = self.va.capabilities

    async def start(self) -> None:
        return

    async def close(self) -> None:
        self.alive = False

    async def server_time_ms(self) -> int:
        return 0

    async def resync_clock(self) -> None:
        return

    async def _enter(self, method: str) -> Fault | None:
        if not self.alive:
            raise Transient("process is dead", venue=self.venue)
        self.calls += 1
        if self.va.latency_s > 0:
            await asyncio.sleep(self.va.latency_s)
        if not self.alive:
            raise Transient("process is dead", venue=self.venue)
        fault = self.va.take_fault(method)
        if fault is not None and fault.kind == "stall":
            await asyncio.sleep(STALL_S)  # a request that hangs past any deadline
        return fault

    async def snapshot(
        self, symbols: Sequence[str] | None = None, *, priority: object = None
    ) -> Snapshot:
        fault = await self._enter("snapshot")
        if fault is not None:
            raise fault.error(self.va.ref)
        acc = self.va
        wanted = acc.symbols if symbols is None else tuple(s for s in symbols if s in acc.books)
        facts = sorted(
            (f for f in acc.facts.values() if f.is_open and f.symbol in wanted),
            key=lambda f: f.placed_seq,
        )
        complete = True
        if symbols is None and acc.page_cap is not None and len(facts) > acc.page_cap:
            facts = facts[: acc.page_cap]
            complete = False
        orders = tuple(_order(acc.books[f.symbol], f.order_id) for f in facts)
        lists: list[OrderList] = []
        for symbol in wanted:
            book = acc.books[symbol]
            for x in book.open_lists():
                lists.append(
                    OrderList(
                        symbol=x.symbol,
                        list_id=x.list_id,
                        list_client_order_id=x.list_client_order_id,
                        order_ids=tuple(x.order_ids),
                        client_order_ids=tuple(
                            o.client_order_id
                            for oid in x.order_ids
                            if (o := book.get(oid)) is not None
                        ),
                        contingency_type=x.contingency_type,
                    )
                )
        if not HAS_COMPLETE:
            return Snapshot(orders, tuple(lists))  # an older tree: no way to say "cut short"
        return Snapshot(orders, tuple(lists), complete=complete)

    async def cancel_all(self, symbols: Sequence[str] | None) -> CancelAck:
        fault = await self._enter("cancel_all")
        if fault is not None and not fault.applied:
            raise fault.error(self.va.ref)
        caps = self.capabilities
        if symbols is None and not caps.cancel_all_without_symbol:
            raise Fatal("cancel-all needs a symbol on this venue", venue=self.venue)
        if symbols is not None and len(symbols) > caps.cancel_all_max_symbols:
            raise Fatal("too many symbols for one cancel-all", venue=self.venue)
        acc = self.va
        wanted = acc.symbols if symbols is None else tuple(s for s in symbols if s in acc.books)
        cancelled: list[OrderKey] = []
        lists: list[tuple[str, str]] = []
        for symbol in wanted:
            book = acc.books[symbol]
            before = {x.list_id for x in book.open_lists()}
            gone = book.cancel_symbols(None, include_lists=caps.cancel_all_covers_lists)
            cancelled.extend((o.symbol, o.order_id) for o in gone)
            lists.extend(
                (symbol, i) for i in sorted(before - {x.list_id for x in book.open_lists()})
            )
        if fault is not None:
            raise fault.error(acc.ref)
        return CancelAck(cancelled=_acked(cancelled), lists_cancelled=tuple(lists))

    def _book(self, symbol: str) -> SimBook:
        book = self.va.books.get(symbol)
        if book is None:
            raise AlreadyGone("Unknown order sent.", venue=self.venue, code=-2011)
        return book

    async def cancel_order(self, symbol: str, order_id: str) -> CancelAck:
        fault = await self._enter("cancel_order")
        if fault is not None and not fault.applied:
            raise fault.error(self.va.ref)
        book = self._book(symbol)
        try:
            gone = book.cancel(order_id)
        except UnknownOrder:
            raise AlreadyGone("Unknown order sent.", venue=self.venue, code=-2011) from None
        if fault is not None:
            raise fault.error(self.va.ref)
        return CancelAck(cancelled=_acked([(o.symbol, o.order_id) for o in gone]))

    async def cancel_orders(self, symbol: str, order_ids: Sequence[str]) -> BatchResult:
        fault = await self._enter("cancel_orders")
        if fault is not None and not fault.applied:
            raise fault.error(self.va.ref)
        book = self.va.books.get(symbol)
        cancelled: list[str] = []
        missing: list[str] = []
        for order_id in order_ids:
            try:
                if book is not None:
                    cancelled.extend(o.order_id for o in book.cancel(order_id))
                else:
                    missing.append(order_id)
            except UnknownOrder:
                missing.append(order_id)
        if fault is not None:
            raise fault.error(self.va.ref)
        return BatchResult(cancelled=tuple(cancelled), gone=tuple(missing))

    async def cancel_order_list(self, symbol: str, list_id: str) -> CancelAck:
        fault = await self._enter("cancel_order_list")
        if fault is not None and not fault.applied:
            raise fault.error(self.va.ref)
        book = self._book(symbol)
        try:
            gone = book.cancel_list(list_id)
        except UnknownOrder:
            raise AlreadyGone("Unknown order list.", venue=self.venue, code=-2011) from None
        if fault is not None:
            raise fault.error(self.va.ref)
        return CancelAck(
            cancelled=_acked([(o.symbol, o.order_id) for o in gone]),
            lists_cancelled=((symbol, list_id),),
        )

    async def arm_dead_mans_switch(self, timeout_s: int) -> DeadMansSwitchState:
        raise Fatal("no dead man's switch in the model", venue=self.venue)

    async def disarm_dead_mans_switch(self) -> DeadMansSwitchState:
        return DeadMansSwitchState(active=False)

    def user_stream(self) -> AsyncIterator[StreamEvent]:
        return self.va.stream(lambda: self.alive)
