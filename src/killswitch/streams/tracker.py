"""Track the open orders and order lists of one account from a snapshot plus stream events.

Pure and synchronous: no I/O, O(1) per order event. The stream supervisor feeds it; the engine
reads it. Orders are keyed by (symbol, order id) and lists by (symbol, list id): Binance numbers
orders per symbol, so an id alone may name two orders [§1.6]. Three rules keep it true under the
races a user-data stream has:

* an order closed once never opens again: keys seen closed are remembered (bounded), so a late
  or duplicated NEW, or a cancel that overtook its NEW, cannot resurrect an order;
* a list whose legs are all closed is closed, even when the venue's stream has no list events
  (BingX) or the list event was lost;
* after a gap (`mark_gap`) the tracker is untrusted until a snapshot lands (`reset`), and the
  events buffered while that snapshot was read are applied on top of it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation

from killswitch.model import (
    AccountRef,
    ExecType,
    ListEvent,
    Order,
    OrderEvent,
    OrderKey,
    OrderList,
    Snapshot,
)

ListKey = tuple[str, str]
"""(symbol, list id): an order list's identity, as an order's is (symbol, order id)."""

# Venues write "no list" as -1 (Binance `g`) or 0 (MEXC `ocoId`); connectors should send None.
_NO_LIST = frozenset({"", "-1", "0"})


@dataclass(frozen=True, slots=True)
class Divergence:
    """Where a venue snapshot and the tracker disagree about open orders."""

    missing: tuple[OrderKey, ...] = ()  # open on the venue, unknown to the tracker
    extra: tuple[OrderKey, ...] = ()  # open in the tracker, not on the venue

    def __bool__(self) -> bool:
        return bool(self.missing or self.extra)

    def describe(self, limit: int = 5) -> str:
        def ids(values: tuple[OrderKey, ...]) -> str:
            shown = ",".join(f"{symbol}:{order_id}" for symbol, order_id in values[:limit])
            return shown + (f",+{len(values) - limit}" if len(values) > limit else "")

        missing, extra = self.missing, self.extra
        return f"missing={len(missing)}[{ids(missing)}] extra={len(extra)}[{ids(extra)}]"


class OrderTracker:
    """The live set of open orders and order lists of one account."""

    def __init__(
        self,
        ref: AccountRef,
        *,
        now: Callable[[], float] = time.monotonic,
        closed_memory: int = 100_000,
    ) -> None:
        self.ref = ref
        self._now = now
        self._closed_memory = closed_memory
        self._orders: dict[OrderKey, Order] = {}
        self._seen_at: dict[OrderKey, float] = {}  # local time the tracker first held each order
        self._counts: dict[str, int] = {}
        self._lists: dict[ListKey, OrderList] = {}
        self._list_of_leg: dict[OrderKey, ListKey] = {}
        self._list_symbols: dict[str, int] = {}
        self._closed: OrderedDict[OrderKey, None] = OrderedDict()
        self._closed_lists: OrderedDict[ListKey, None] = OrderedDict()
        self._trusted_since: float | None = None
        self._gap_reason: str | None = "no snapshot yet"
        self.last_event_ms = 0  # venue time of the newest event or snapshot applied
        self.events = 0  # events applied
        self.stale_events = 0  # open events for orders already closed: ignored

    # -- state -----------------------------------------------------------------------------
    def now(self) -> float:
        """The tracker's clock (monotonic seconds unless injected)."""
        return self._now()

    @property
    def trusted(self) -> bool:
        """True when the state came from a snapshot with no stream gap since."""
        return self._trusted_since is not None

    @property
    def trusted_since(self) -> float | None:
        """When the snapshot that made the tracker trusted was applied (the `now` clock)."""
        return self._trusted_since

    @property
    def gap_reason(self) -> str | None:
        """Why the tracker is not trusted; None while it is."""
        return self._gap_reason

    def mark_gap(self, reason: str) -> None:
        """The stream may have missed events: distrust the state until the next `reset`."""
        self._trusted_since = None
        self._gap_reason = reason

    def reset(self, snapshot: Snapshot, *, buffered: Sequence[OrderEvent | ListEvent] = ()) -> None:
        """Replace the state with `snapshot`, re-apply the events that arrived while it was
        read, and trust the result. Orders already seen closed stay closed."""
        self._orders.clear()
        self._seen_at.clear()
        self._counts.clear()
        self._lists.clear()
        self._list_of_leg.clear()
        self._list_symbols.clear()
        now = self._now()
        closed = self._closed
        for order in snapshot.orders:
            if (order.symbol, order.order_id) in closed:
                continue  # a snapshot read from a lagging replica: the stream knows better
            self._add(order, now)
        closed_lists = self._closed_lists
        for order_list in snapshot.lists:
            if (order_list.symbol, order_list.list_id) not in closed_lists:
                self._put_list(order_list)
        self.last_event_ms = max(self.last_event_ms, snapshot.server_time_ms)
        for event in buffered:
            self.apply(event)
        self._trusted_since = self._now()
        self._gap_reason = None

    # -- events ----------------------------------------------------------------------------
    def apply(self, event: OrderEvent | ListEvent) -> None:
        """Apply one stream event: an open order is added or updated, a closed one removed."""
        self.events += 1
        if event.event_time_ms > self.last_event_ms:
            self.last_event_ms = event.event_time_ms
        if type(event) is OrderEvent:
            self._apply_order(event)
        else:
            self._apply_list(event)  # type: ignore[arg-type]

    def _apply_order(self, event: OrderEvent) -> None:
        key = (event.symbol, event.order_id)
        if self._ends_here(event.is_open, key, self._closed, self._close):
            return
        old = self._orders.get(key)
        list_id = event.list_id if event.list_id not in _NO_LIST else None
        if old is None:
            self._add(
                Order(
                    symbol=event.symbol,
                    order_id=event.order_id,
                    client_order_id=event.client_order_id,
                    side=event.side,
                    order_type=event.order_type,
                    price=event.price,
                    orig_qty=event.orig_qty,
                    executed_qty=event.last_qty if event.exec_type is ExecType.TRADE else "0",
                    status=event.status,
                    list_id=list_id,
                    time_ms=event.event_time_ms,
                ),
                self._now(),
            )
            return
        executed = old.executed_qty
        if event.exec_type is ExecType.TRADE:
            executed = _add_qty(executed, event.last_qty)
        # On Binance a cancel's `c` is the cancel request's id; keep the order's own. An
        # amended order (REPLACED) carries its new id: a prefix scope must see that one
        # (review 59: a kill by the old prefix cancelled an order amended out of it).
        amended = event.exec_type is ExecType.REPLACED and bool(event.client_order_id)
        self._orders[key] = Order(
            symbol=old.symbol,
            order_id=event.order_id,
            client_order_id=(
                event.client_order_id if amended else old.client_order_id or event.client_order_id
            ),
            side=event.side or old.side,
            order_type=event.order_type or old.order_type,
            price=event.price,
            orig_qty=event.orig_qty,
            executed_qty=executed,
            status=event.status,
            list_id=list_id if list_id is not None else old.list_id,
            time_ms=old.time_ms,
        )
        list_key = self._list_of_leg.get(key)
        if amended and list_key is not None and (held := self._lists.get(list_key)):
            self._put_list(replace(held, client_order_ids=self._leg_client_ids(held)))

    def _apply_list(self, event: ListEvent) -> None:
        key = (event.symbol, event.list_id)
        if self._ends_here(event.is_open, key, self._closed_lists, self._close_list):
            return
        old = self._lists.get(key)
        order_list = OrderList(
            symbol=event.symbol,
            list_id=event.list_id,
            list_client_order_id=event.list_client_order_id,
            order_ids=event.order_ids or (old.order_ids if old else ()),
            client_order_ids=old.client_order_ids if old else (),
            contingency_type=old.contingency_type if old else "OCO",
        )
        self._put_list(replace(order_list, client_order_ids=self._leg_client_ids(order_list)))

    def _ends_here(
        self,
        is_open: bool,
        key: OrderKey | ListKey,
        closed: OrderedDict[OrderKey | ListKey, None],
        close: Callable[[OrderKey | ListKey], None],
    ) -> bool:
        """Whether an event for `key` (an order's or a list's) ends here: one that closes it
        (closed now), or one that opens it after it closed (stale: nothing closed reopens)."""
        if not is_open:
            close(key)
            return True
        if key in closed:
            self.stale_events += 1
            return True
        return False

    def _leg_client_ids(self, order_list: OrderList) -> tuple[str, ...]:
        """The list's legs' client ids as the stream last showed them (an amend changes a
        leg's), else as the list had them."""
        had = order_list.client_order_ids
        if len(had) != len(order_list.order_ids):
            return had
        return tuple(
            leg.client_order_id if (leg := self._orders.get((order_list.symbol, oid))) else cid
            for oid, cid in zip(order_list.order_ids, had, strict=True)
        )

    # -- bookkeeping -----------------------------------------------------------------------
    def _add(self, order: Order, now: float) -> None:
        key = (order.symbol, order.order_id)
        old = self._orders.get(key)
        self._orders[key] = order
        if old is None:
            self._seen_at[key] = now
            self._counts[order.symbol] = self._counts.get(order.symbol, 0) + 1

    def _close(self, key: OrderKey) -> None:
        self._remember_closed(self._closed, key)
        old = self._orders.pop(key, None)
        if old is None:
            return
        del self._seen_at[key]
        symbol = old.symbol
        left = self._counts[symbol] - 1
        if left:
            self._counts[symbol] = left
        else:
            del self._counts[symbol]
        list_key = self._list_of_leg.get(key)
        if list_key is None and old.list_id is not None:
            list_key = (symbol, old.list_id)
        if list_key is not None and list_key in self._lists:
            legs = self._lists[list_key].order_ids
            if not any((symbol, leg) in self._orders for leg in legs):
                self._close_list(list_key)

    def _remember_closed(
        self, closed: OrderedDict[OrderKey | ListKey, None], key: OrderKey | ListKey
    ) -> None:
        """Remember `key` (an order's or a list's) closed; the oldest beyond the memory goes."""
        closed[key] = None
        if len(closed) > self._closed_memory:
            closed.popitem(last=False)

    def _put_list(self, order_list: OrderList) -> None:
        symbol = order_list.symbol
        key = (symbol, order_list.list_id)
        old = self._lists.get(key)
        if old is not None:
            self._drop_list(old)
        self._lists[key] = order_list
        for leg in order_list.order_ids:
            self._list_of_leg[(symbol, leg)] = key
        self._list_symbols[symbol] = self._list_symbols.get(symbol, 0) + 1

    def _drop_list(self, order_list: OrderList) -> None:
        symbol = order_list.symbol
        key = (symbol, order_list.list_id)
        for leg in order_list.order_ids:
            if self._list_of_leg.get((symbol, leg)) == key:
                del self._list_of_leg[(symbol, leg)]
        left = self._list_symbols[symbol] - 1
        if left:
            self._list_symbols[symbol] = left
        else:
            del self._list_symbols[symbol]

    def _close_list(self, key: ListKey) -> None:
        self._remember_closed(self._closed_lists, key)
        old = self._lists.pop(key, None)
        if old is not None:
            self._drop_list(old)

    # -- reads -----------------------------------------------------------------------------
    def __len__(self) -> int:
        """The number of open orders (list legs included)."""
        return len(self._orders)

    # Reads take a (symbol, id) key. A bare id is accepted for callers written before orders
    # were keyed (tests): it scans, O(n), and `get` refuses an id that two symbols share.
    def __contains__(self, key: object) -> bool:
        """True when the order with this (symbol, id) key (or bare id) is open."""
        if isinstance(key, str):
            return any(order_id == key for _, order_id in self._orders)
        return key in self._orders

    def get(self, key: OrderKey | str) -> Order | None:
        """The open order with this (symbol, id) key, or None."""
        if isinstance(key, str):
            found = [o for (_, order_id), o in self._orders.items() if order_id == key]
            if len(found) > 1:
                raise LookupError(f"order id {key} is open on several symbols: give the symbol")
            return found[0] if found else None
        return self._orders.get(key)

    def get_list(self, key: ListKey) -> OrderList | None:
        """The open order list with this (symbol, list id) key, or None."""
        return self._lists.get(key)

    def is_closed(self, key: OrderKey | str) -> bool:
        """True when the tracker has seen this order close (within its bounded memory)."""
        if isinstance(key, str):
            return any(order_id == key for _, order_id in self._closed)
        return key in self._closed

    def open_orders(self) -> list[Order]:
        """Every open order."""
        return list(self._orders.values())

    def open_lists(self) -> list[OrderList]:
        """Every open order list."""
        return list(self._lists.values())

    def symbols(self) -> set[str]:
        """Symbols with an open order or order list, as the venue writes them."""
        return set(self._counts) | set(self._list_symbols)

    def count_by_symbol(self) -> dict[str, int]:
        """Open orders per symbol."""
        return dict(self._counts)

    def as_snapshot(self) -> Snapshot:
        """The tracked state in the shape of a venue snapshot."""
        return Snapshot(
            orders=tuple(self._orders.values()),
            lists=tuple(self._lists.values()),
            server_time_ms=self.last_event_ms,
        )

    # -- reconciliation --------------------------------------------------------------------
    def divergence(self, snapshot: Snapshot, *, held_before: float) -> Divergence:
        """Compare with a venue snapshot whose read started at `held_before` (the `now` clock).

        Missing: open on the venue, neither tracked nor seen closed. Extra: tracked since
        before the read started, yet not open on the venue. Either may still be an event in
        flight; `confirm` re-checks after a grace period.
        """
        venue_keys = dict.fromkeys((o.symbol, o.order_id) for o in snapshot.orders)
        orders = self._orders
        closed = self._closed
        missing = tuple(key for key in venue_keys if key not in orders and key not in closed)
        seen_at = self._seen_at
        extra = tuple(
            key for key in orders if key not in venue_keys and seen_at[key] <= held_before
        )
        return Divergence(missing=missing, extra=extra)

    def confirm(self, divergence: Divergence) -> Divergence:
        """Keep only the parts of an earlier divergence that events have not explained since."""
        orders = self._orders
        closed = self._closed
        return Divergence(
            missing=tuple(
                key for key in divergence.missing if key not in orders and key not in closed
            ),
            extra=tuple(key for key in divergence.extra if key in orders),
        )

    def adopt_lists(self, lists: Iterable[OrderList]) -> int:
        """Take list details from a snapshot for lists whose legs are all tracked open.

        Some streams (BingX) report legs but no list events; the legs prove the stream is
        whole, the snapshot supplies the grouping. Returns how many lists were adopted.
        """
        adopted = 0
        for order_list in lists:
            symbol = order_list.symbol
            key = (symbol, order_list.list_id)
            if key in self._lists or key in self._closed_lists:
                continue
            legs = order_list.order_ids
            if legs and all((symbol, leg) in self._orders for leg in legs):
                self._put_list(order_list)
                adopted += 1
        return adopted


def _add_qty(total: str, qty: str) -> str:
    try:
        return str(Decimal(total) + Decimal(qty))
    except InvalidOperation:
        return total
