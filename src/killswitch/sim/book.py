"""The simulator's order book for one venue account: orders, order lists, and their events.

Venue-neutral: ids are minted by the venue dialect's id factory, statuses use Binance's names
(NEW, PARTIALLY_FILLED, FILLED, CANCELED) and each dialect renders them in its own words. Every
change, whoever caused it, is published to the account's listeners (the user-data streams).
"""

from __future__ import annotations

import enum
import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterable
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


class UnknownOrder(KeyError):
    """The order or list is not open in this book."""


@dataclass(slots=True)
class SimBook:
    """The open orders and lists of one account, plus a bounded history for queries."""

    new_order_id: Callable[[], str]
    new_list_id: Callable[[], str]
    now_ms: Callable[[], int]
    history_limit: int = 100_000
    orders: dict[str, SimOrder] = field(default_factory=dict)  # open only
    lists: dict[str, SimOrderList] = field(default_factory=dict)  # open only
    closed: OrderedDict[str, SimOrder] = field(default_factory=OrderedDict)
    closed_lists: OrderedDict[str, SimOrderList] = field(default_factory=OrderedDict)
    by_client_id: dict[str, str] = field(default_factory=dict)
    listeners: list[Listener] = field(default_factory=list)
    _client_seq: itertools.count[int] = field(default_factory=itertools.count)

    # -- listeners -------------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self.listeners:
            self.listeners.remove(listener)

    def _publish(self, event: BookEvent) -> None:
        for listener in list(self.listeners):
            listener(event)

    # -- queries ---------------------------------------------------------------------------
    def open_orders(self, symbols: Iterable[str] | None = None) -> list[SimOrder]:
        if symbols is None:
            return list(self.orders.values())
        wanted = set(symbols)
        return [o for o in self.orders.values() if o.symbol in wanted]

    def open_lists(self, symbols: Iterable[str] | None = None) -> list[SimOrderList]:
        if symbols is None:
            return list(self.lists.values())
        wanted = set(symbols)
        return [lst for lst in self.lists.values() if lst.symbol in wanted]

    def get(self, order_id: str) -> SimOrder | None:
        return self.orders.get(order_id) or self.closed.get(order_id)

    def get_by_client_id(self, client_order_id: str) -> SimOrder | None:
        order_id = self.by_client_id.get(client_order_id)
        return self.get(order_id) if order_id is not None else None

    def get_list(self, list_id: str) -> SimOrderList | None:
        return self.lists.get(list_id) or self.closed_lists.get(list_id)

    def symbols(self) -> set[str]:
        return {o.symbol for o in self.orders.values()}

    # -- changes ---------------------------------------------------------------------------
    def place(
        self, spec: OrderSpec, *, list_id: str | None = None, publish: bool = True
    ) -> SimOrder:
        now = self.now_ms()
        order_id = self.new_order_id()
        client_id = spec.client_order_id or f"sim{next(self._client_seq)}x{order_id[-6:]}"
        order = SimOrder(
            order_id=order_id,
            client_order_id=client_id,
            symbol=spec.symbol,
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
        self.orders[order_id] = order
        self.by_client_id[client_id] = order_id
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

    def cancel(self, order_id: str, *, cancel_client_order_id: str = "") -> list[SimOrder]:
        """Cancel one open order; a list leg cancels its whole list. Returns what went."""
        order = self.orders.get(order_id)
        if order is None:
            raise UnknownOrder(order_id)
        if order.list_id is not None and order.list_id in self.lists:
            return self.cancel_list(order.list_id, cancel_client_order_id=cancel_client_order_id)
        return [self._close(order, "CANCELED", cancel_client_order_id)]

    def cancel_list(self, list_id: str, *, cancel_client_order_id: str = "") -> list[SimOrder]:
        order_list = self.lists.pop(list_id, None)
        if order_list is None:
            raise UnknownOrder(list_id)
        gone = [
            self._close(self.orders[oid], "CANCELED", cancel_client_order_id)
            for oid in order_list.order_ids
            if oid in self.orders
        ]
        self._finish_list(order_list)
        return gone

    def cancel_symbols(
        self, symbols: Iterable[str] | None, *, include_lists: bool = True
    ) -> list[SimOrder]:
        """Cancel every open order on `symbols` (all symbols when None)."""
        wanted = None if symbols is None else set(symbols)
        gone: list[SimOrder] = []
        for order in list(self.orders.values()):
            if order.order_id not in self.orders:
                continue  # went with its list
            if wanted is not None and order.symbol not in wanted:
                continue
            if order.list_id is not None and order.list_id in self.lists:
                if include_lists:
                    gone.extend(self.cancel_list(order.list_id))
                continue
            gone.append(self._close(order, "CANCELED", ""))
        return gone

    def fill(self, order_id: str, quantity: Decimal | None = None) -> SimOrder:
        """Fill an open order, wholly or in part. A filled list leg ends its OCO siblings."""
        order = self.orders.get(order_id)
        if order is None:
            raise UnknownOrder(order_id)
        remaining = order.orig_qty - order.executed_qty
        qty = remaining if quantity is None else min(quantity, remaining)
        now = self.now_ms()
        order.executed_qty += qty
        order.cum_quote_qty += qty * order.price
        order.update_time_ms = now
        if order.executed_qty >= order.orig_qty:
            order.status = "FILLED"
            self.orders.pop(order_id)
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
                if oid in self.orders:
                    self._close(self.orders[oid], "EXPIRED", "")
            self._finish_list(order_list)
        return order

    def _close(self, order: SimOrder, status: str, cancel_client_order_id: str) -> SimOrder:
        now = self.now_ms()
        self.orders.pop(order.order_id, None)
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
        self.closed[order.order_id] = order
        while len(self.closed) > self.history_limit:
            old_id, old = self.closed.popitem(last=False)
            # A client id may have been reused by a newer order: unmap only our own.
            if self.by_client_id.get(old.client_order_id) == old_id:
                del self.by_client_id[old.client_order_id]


def _copy_list(order_list: SimOrderList) -> SimOrderList:
    return replace(order_list, order_ids=list(order_list.order_ids))
