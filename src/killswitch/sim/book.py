"""The simulator's order book for one venue account: orders, order lists, and their events.

Venue-neutral: ids are minted by the venue dialect's id factory (one counter for the venue, or
one per symbol as on Binance, where two symbols can hold the same order id), orders are keyed by
(symbol, order id), statuses use Binance's names (NEW, PARTIALLY_FILLED, FILLED, CANCELED) and
each dialect renders them in its own words. Every change, whoever caused it, is published to
the account's listeners (the user-data streams).
"""

from __future__ import annotations

import enum
import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal

OPEN_STATUSES = frozenset({"NEW", "PARTIALLY_FILLED"})


class BookEventKind(enum.StrEnum):
    NEW = "NEW"
    TRADE = "TRADE"
    CANCELED = "CANCELED"
    LIST_STATUS = "LIST_STATUS"


@dataclass(slots=True)
class SimOrder:
    order_id: str
    client_order_id: str
    symbol: str
    side: str
    order_type: str
    price: Decimal
    orig_qty: Decimal
    time_ms: int
    executed_qty: Decimal = Decimal(0)
    cum_quote_qty: Decimal = Decimal(0)
    status: str = "NEW"
    time_in_force: str = "GTC"
    stop_price: Decimal = Decimal(0)
    list_id: str | None = None
    update_time_ms: int = 0
    cancel_client_order_id: str = ""  # the cancel request's own id (Binance `c` on cancel)

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    def copy(self) -> SimOrder:
        """A snapshot for an event (`dataclasses.replace` is several times slower)."""
        return SimOrder(
            self.order_id,
            self.client_order_id,
            self.symbol,
            self.side,
            self.order_type,
            self.price,
            self.orig_qty,
            self.time_ms,
            self.executed_qty,
            self.cum_quote_qty,
            self.status,
            self.time_in_force,
            self.stop_price,
            self.list_id,
            self.update_time_ms,
            self.cancel_client_order_id,
        )


@dataclass(slots=True)
class SimOrderList:
    list_id: str
    list_client_order_id: str
    symbol: str
    contingency_type: str  # OCO, OTO
    order_ids: list[str]
    time_ms: int
    open: bool = True


@dataclass(frozen=True, slots=True)
class BookEvent:
    """A change to the book. `order` is a copy taken at the time of the change."""

    kind: BookEventKind
    time_ms: int
    order: SimOrder | None = None
    order_list: SimOrderList | None = None
    last_qty: Decimal = Decimal(0)
    last_price: Decimal = Decimal(0)


@dataclass(frozen=True, slots=True)
class OrderSpec:
    """What a client asks to place."""

    symbol: str
    side: str = "BUY"
    order_type: str = "LIMIT"
    price: Decimal = Decimal("1")
    quantity: Decimal = Decimal("1")
    client_order_id: str = ""
    time_in_force: str = "GTC"
    stop_price: Decimal = Decimal(0)


Listener = Callable[[BookEvent], None]

OrderKey = tuple[str, str]
"""(symbol, order id): an order's identity in the book. Binance numbers orders per symbol."""


class UnknownOrder(KeyError):
    """The order or list is not open in this book."""


class AmbiguousOrder(UnknownOrder):
    """A bare order id that several symbols share: the caller must say which symbol."""


class OrderRef(str):
    """An order id that remembers its symbol: the ids a per-symbol book mints (`SimOrder.order_id`
    on Binance) and what iterating `SimBook.orders` yields.

    It compares, hashes and prints as the bare id, so code written for ids keeps working; the
    book's methods read its symbol, so handing it back names exactly one order.
    """

    symbol: str

    def __new__(cls, symbol: str, order_id: str) -> OrderRef:
        ref = super().__new__(cls, order_id)
        ref.symbol = symbol
        return ref


class OrdersById(Mapping[str, SimOrder]):
    """The open orders seen by bare id: the book's old shape, kept for callers written before
    orders were keyed by (symbol, id).

    Iteration yields each open order's id as an `OrderRef` (an id that two symbols share comes
    twice, so `len` is the number of open orders, and each ref passed back to the book names
    its own order); `id in view` is true when any symbol has it open; `view[id]` raises
    `AmbiguousOrder` for a plain id that several symbols hold. New code should read
    `SimBook.open`, keyed by (symbol, id).
    """

    __slots__ = ("_book",)

    def __init__(self, book: SimBook) -> None:
        self._book = book

    def __getitem__(self, ref: str | OrderKey) -> SimOrder:
        key = self._book.key_of(ref, open_only=True)
        order = self._book.open.get(key) if key is not None else None
        if order is None:
            raise UnknownOrder(ref)
        return order

    def __contains__(self, ref: object) -> bool:
        book = self._book
        if isinstance(ref, tuple):
            return ref in book.open
        if isinstance(ref, OrderRef):
            return (ref.symbol, str(ref)) in book.open
        if not isinstance(ref, str):
            return False
        return any((symbol, ref) in book.open for symbol in book.symbols_of_id.get(ref, ()))

    def __iter__(self) -> Iterator[str]:
        return (OrderRef(symbol, order_id) for symbol, order_id in self._book.open)

    def __len__(self) -> int:
        return len(self._book.open)


@dataclass(slots=True, kw_only=True)
class SimBook:
    """The open orders and lists of one account, plus a bounded history for queries.

    Orders are keyed by (symbol, order id): on Binance two symbols can have the same order id.
    A venue mints ids with one counter (`new_order_id`: MEXC, BingX) or one per symbol
    (`new_symbol_order_id`: Binance). Methods that take an order id also take its `symbol`;
    without it, the bare id must name one order (`AmbiguousOrder` otherwise).
    """

    new_list_id: Callable[[], str]
    now_ms: Callable[[], int]
    new_order_id: Callable[[], str] | None = None
    new_symbol_order_id: Callable[[str], str] | None = None
    history_limit: int = 100_000
    open: dict[OrderKey, SimOrder] = field(default_factory=dict)  # open orders only
    lists: dict[str, SimOrderList] = field(default_factory=dict)  # open only
    closed: OrderedDict[OrderKey, SimOrder] = field(default_factory=OrderedDict)
    closed_lists: OrderedDict[str, SimOrderList] = field(default_factory=OrderedDict)
    # Client ids: per (symbol, client id), and by bare client id (the newest order with it).
    by_symbol_client_id: dict[tuple[str, str], OrderKey] = field(default_factory=dict)
    by_client_id: dict[str, OrderKey] = field(default_factory=dict)
    # Bare id -> the symbols holding an order with it (open or in history).
    symbols_of_id: dict[str, list[str]] = field(default_factory=dict)
    listeners: list[Listener] = field(default_factory=list)
    orders: OrdersById = field(init=False)
    _client_seq: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        if (self.new_order_id is None) == (self.new_symbol_order_id is None):
            raise ValueError("give exactly one of new_order_id and new_symbol_order_id")
        self.orders = OrdersById(self)

    # -- listeners -------------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self.listeners:
            self.listeners.remove(listener)

    def _publish(self, event: BookEvent) -> None:
        for listener in list(self.listeners):
            listener(event)

    # -- lookups ---------------------------------------------------------------------------
    def key_of(
        self, ref: str | OrderKey, symbol: str | None = None, *, open_only: bool = False
    ) -> OrderKey | None:
        """The (symbol, id) key `ref` names, or None when no order has it.

        `ref` is a key, or a bare id with its `symbol`, or a bare id alone, which must name
        one order: among open orders first, then history. Raises `AmbiguousOrder` otherwise.
        """
        if isinstance(ref, tuple):
            return ref
        if symbol is not None:
            return (symbol, ref)
        if isinstance(ref, OrderRef):
            return (ref.symbol, str(ref))
        symbols = self.symbols_of_id.get(ref)
        if not symbols:
            return None
        if len(symbols) == 1:
            return (symbols[0], ref)
        live = [s for s in symbols if (s, ref) in self.open]
        if len(live) == 1:
            return (live[0], ref)
        if not live and open_only:
            return None
        raise AmbiguousOrder(f"order id {ref} is on {sorted(symbols)}: name the symbol")

    # -- queries ---------------------------------------------------------------------------
    def open_orders(self, symbols: Iterable[str] | None = None) -> list[SimOrder]:
        if symbols is None:
            return list(self.open.values())
        wanted = set(symbols)
        return [o for o in self.open.values() if o.symbol in wanted]

    def open_lists(self, symbols: Iterable[str] | None = None) -> list[SimOrderList]:
        if symbols is None:
            return list(self.lists.values())
        wanted = set(symbols)
        return [lst for lst in self.lists.values() if lst.symbol in wanted]

    def get(self, order_id: str | OrderKey, symbol: str | None = None) -> SimOrder | None:
        """The order (open or in history) with this id on `symbol`, or None."""
        key = self.key_of(order_id, symbol)
        if key is None:
            return None
        return self.open.get(key) or self.closed.get(key)

    def get_by_client_id(self, client_order_id: str, symbol: str | None = None) -> SimOrder | None:
        """The newest order with this client id (on `symbol` when given), or None."""
        if symbol is not None:
            key = self.by_symbol_client_id.get((symbol, client_order_id))
        else:
            key = self.by_client_id.get(client_order_id)
        return self.get(key) if key is not None else None

    def get_list(self, list_id: str) -> SimOrderList | None:
        return self.lists.get(list_id) or self.closed_lists.get(list_id)

    def legs(self, order_list: SimOrderList) -> list[SimOrder]:
        """The legs of a list (open or in history), in list order."""
        found = (self.get((order_list.symbol, oid)) for oid in order_list.order_ids)
        return [o for o in found if o is not None]

    def symbols(self) -> set[str]:
        return {o.symbol for o in self.open.values()}

    # -- changes ---------------------------------------------------------------------------
    def place(
        self, spec: OrderSpec, *, list_id: str | None = None, publish: bool = True
    ) -> SimOrder:
        now = self.now_ms()
        symbol = spec.symbol
        order_id: str
        if self.new_symbol_order_id is not None:
            # An id that repeats across symbols carries its symbol: handed back to the book
            # as a bare id, it still names this order.
            order_id = OrderRef(symbol, self.new_symbol_order_id(symbol))
        else:
            assert self.new_order_id is not None
            order_id = self.new_order_id()
        client_id = spec.client_order_id or f"sim{next(self._client_seq)}x{order_id[-6:]}"
        order = SimOrder(
            order_id=order_id,
            client_order_id=client_id,
            symbol=symbol,
            side=spec.side,
            order_type=spec.order_type,
            price=spec.price,
            orig_qty=spec.quantity,
            time_ms=now,
            update_time_ms=now,
            time_in_force=spec.time_in_force,
            stop_price=spec.stop_price,
            list_id=list_id,
        )
        key = (symbol, order_id)
        self.open[key] = order
        self.by_client_id[client_id] = key
        self.by_symbol_client_id[(symbol, client_id)] = key
        holders = self.symbols_of_id.get(order_id)
        if holders is None:
            self.symbols_of_id[order_id] = [symbol]
        elif symbol not in holders:
            holders.append(symbol)
        if publish and self.listeners:
            self._publish(BookEvent(BookEventKind.NEW, now, order=order.copy()))
        return order

    def place_list(
        self,
        legs: list[OrderSpec],
        *,
        contingency_type: str = "OCO",
        list_client_order_id: str = "",
    ) -> SimOrderList:
        if not legs:
            raise ValueError("an order list needs legs")
        if len({leg.symbol for leg in legs}) != 1:
            raise ValueError("an order list's legs share one symbol")
        now = self.now_ms()
        list_id = self.new_list_id()
        orders = [self.place(leg, list_id=list_id, publish=False) for leg in legs]
        order_list = SimOrderList(
            list_id=list_id,
            list_client_order_id=list_client_order_id or f"simlist{list_id}",
            symbol=legs[0].symbol,
            contingency_type=contingency_type,
            order_ids=[o.order_id for o in orders],
            time_ms=now,
        )
        self.lists[list_id] = order_list
        if self.listeners:
            for order in orders:
                self._publish(BookEvent(BookEventKind.NEW, now, order=order.copy()))
            self._publish(
                BookEvent(BookEventKind.LIST_STATUS, now, order_list=_copy_list(order_list))
            )
        return order_list

    def _open_order(self, order_id: str | OrderKey, symbol: str | None) -> SimOrder:
        key = self.key_of(order_id, symbol, open_only=True)
        order = self.open.get(key) if key is not None else None
        if order is None:
            raise UnknownOrder(order_id if symbol is None else (symbol, order_id))
        return order

    def cancel(
        self,
        order_id: str | OrderKey,
        *,
        symbol: str | None = None,
        cancel_client_order_id: str = "",
    ) -> list[SimOrder]:
        """Cancel one open order; a list leg cancels its whole list. Returns what went."""
        order = self._open_order(order_id, symbol)
        if order.list_id is not None and order.list_id in self.lists:
            return self.cancel_list(order.list_id, cancel_client_order_id=cancel_client_order_id)
        return [self._close(order, "CANCELED", cancel_client_order_id)]

    def cancel_list(self, list_id: str, *, cancel_client_order_id: str = "") -> list[SimOrder]:
        order_list = self.lists.pop(list_id, None)
        if order_list is None:
            raise UnknownOrder(list_id)
        symbol = order_list.symbol
        gone = [
            self._close(self.open[(symbol, oid)], "CANCELED", cancel_client_order_id)
            for oid in order_list.order_ids
            if (symbol, oid) in self.open
        ]
        self._finish_list(order_list)
        return gone

    def cancel_symbols(
        self, symbols: Iterable[str] | None, *, include_lists: bool = True
    ) -> list[SimOrder]:
        """Cancel every open order on `symbols` (all symbols when None)."""
        wanted = None if symbols is None else set(symbols)
        gone: list[SimOrder] = []
        for key, order in list(self.open.items()):
            if key not in self.open:
                continue  # went with its list
            if wanted is not None and order.symbol not in wanted:
                continue
            if order.list_id is not None and order.list_id in self.lists:
                if include_lists:
                    gone.extend(self.cancel_list(order.list_id))
                continue
            gone.append(self._close(order, "CANCELED", ""))
        return gone

    def fill(
        self,
        order_id: str | OrderKey,
        quantity: Decimal | None = None,
        *,
        symbol: str | None = None,
    ) -> SimOrder:
        """Fill an open order, wholly or in part. A filled list leg ends its OCO siblings."""
        order = self._open_order(order_id, symbol)
        key = (order.symbol, order.order_id)
        remaining = order.orig_qty - order.executed_qty
        qty = remaining if quantity is None else min(quantity, remaining)
        now = self.now_ms()
        order.executed_qty += qty
        order.cum_quote_qty += qty * order.price
        order.update_time_ms = now
        if order.executed_qty >= order.orig_qty:
            order.status = "FILLED"
            self.open.pop(key)
            self._remember(order)
        else:
            order.status = "PARTIALLY_FILLED"
        if self.listeners:
            self._publish(
                BookEvent(
                    BookEventKind.TRADE,
                    now,
                    order=order.copy(),
                    last_qty=qty,
                    last_price=order.price,
                )
            )
        if order.status == "FILLED" and order.list_id is not None and order.list_id in self.lists:
            order_list = self.lists.pop(order.list_id)
            for oid in order_list.order_ids:
                sibling = self.open.get((order_list.symbol, oid))
                if sibling is not None:
                    self._close(sibling, "EXPIRED", "")
            self._finish_list(order_list)
        return order

    def _close(self, order: SimOrder, status: str, cancel_client_order_id: str) -> SimOrder:
        now = self.now_ms()
        self.open.pop((order.symbol, order.order_id), None)
        order.status = status
        order.update_time_ms = now
        order.cancel_client_order_id = cancel_client_order_id or f"cancel{order.order_id[-8:]}"
        self._remember(order)
        if self.listeners:
            self._publish(BookEvent(BookEventKind.CANCELED, now, order=order.copy()))
        return order

    def _finish_list(self, order_list: SimOrderList) -> None:
        order_list.open = False
        self.closed_lists[order_list.list_id] = order_list
        while len(self.closed_lists) > self.history_limit:
            self.closed_lists.popitem(last=False)
        self._publish(
            BookEvent(BookEventKind.LIST_STATUS, self.now_ms(), order_list=_copy_list(order_list))
        )

    def _remember(self, order: SimOrder) -> None:
        self.closed[(order.symbol, order.order_id)] = order
        while len(self.closed) > self.history_limit:
            old_key, old = self.closed.popitem(last=False)
            # A client id may have been reused by a newer order: unmap only our own.
            if self.by_client_id.get(old.client_order_id) == old_key:
                del self.by_client_id[old.client_order_id]
            client_key = (old.symbol, old.client_order_id)
            if self.by_symbol_client_id.get(client_key) == old_key:
                del self.by_symbol_client_id[client_key]
            if old_key not in self.open:
                holders = self.symbols_of_id.get(old.order_id)
                if holders is not None and old.symbol in holders:
                    holders.remove(old.symbol)
                    if not holders:
                        del self.symbols_of_id[old.order_id]


def _copy_list(order_list: SimOrderList) -> SimOrderList:
    return replace(order_list, order_ids=list(order_list.order_ids))
