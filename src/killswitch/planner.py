"""Plan the fewest cancel requests that cover a scope on one account: a pure function.

Inputs are what we know (the tracker's view, a venue snapshot, the configured symbols) and what
the venue can do (`Capabilities`); the output is a list of `CancelRequest`s. No I/O, no clock.

Rules, in the order they are tried:

* a client-order-id prefix narrows the scope below "whole symbol": cancel exactly the matching
  orders (batch by id where the venue has it, else one by one) and the lists whose legs match;
* a scope over every symbol on a venue whose cancel-all can omit the symbol: one cancel-all;
* otherwise one cancel-all per group of at most `cancel_all_max_symbols` symbols, over the union
  of every symbol we know of in scope (tracker, snapshot, configuration), never only the tracked.

Where a venue's cancel-all does not cover order lists, every list in scope is cancelled
explicitly as well. A symbol-scoped kill never uses a cancel-all without a symbol.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from killswitch.exchanges.base import Capabilities
from killswitch.model import Order, OrderList, Scope, Snapshot


class RequestKind(enum.StrEnum):
    """What a planned request does on the venue."""

    CANCEL_ALL = "cancel_all"  # cancel-all on `symbols`
    CANCEL_ALL_ACCOUNT = "cancel_all_account"  # cancel-all without a symbol: the whole account
    CANCEL_ORDER = "cancel_order"  # one order by id
    CANCEL_ORDERS = "cancel_orders"  # a batch of ids on one symbol
    CANCEL_LIST = "cancel_list"  # one order list


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """One request to send. `symbols` are venue-native; ids are the venue's."""

    kind: RequestKind
    symbols: tuple[str, ...] = ()
    order_ids: tuple[str, ...] = ()
    list_id: str | None = None

    def describe(self) -> dict[str, object]:
        """Return the request as an event field (no secrets: ids and symbols only)."""
        out: dict[str, object] = {"kind": self.kind.value, "symbols": list(self.symbols)}
        if self.order_ids:
            out["order_ids"] = list(self.order_ids)
        if self.list_id is not None:
            out["list_id"] = self.list_id
        return out


def in_scope(scope: Scope, snapshot: Snapshot) -> Snapshot:
    """Return the part of `snapshot` that `scope` covers (account coverage is the caller's)."""
    return Snapshot(
        orders=tuple(o for o in snapshot.orders if scope.covers_order(o)),
        lists=tuple(lst for lst in snapshot.lists if scope.covers_list(lst)),
        server_time_ms=snapshot.server_time_ms,
        complete=snapshot.complete,
    )


def plan(
    scope: Scope,
    tracked: Snapshot | None,
    snapshot: Snapshot | None,
    configured_symbols: Iterable[str],
    capabilities: Capabilities,
    *,
    already: Iterable[CancelRequest] = (),
) -> list[CancelRequest]:
    """Return the fewest requests that cancel everything in `scope` we know of.

    `already` lists requests sent in this wave: what they cover is not planned again, so a
    second call with a fresh snapshot adds only the symbols, orders and lists the first missed.
    """
    sources = [s for s in (tracked, snapshot) if s is not None]
    orders = _unique_orders(o for s in sources for o in s.orders)
    lists = _unique_lists(lst for s in sources for lst in s.lists)
    sent = list(already)
    if scope.client_order_id_prefix is not None:
        return _plan_by_id(scope, orders, lists, capabilities, sent)
    return _plan_by_symbol(scope, orders, lists, configured_symbols, capabilities, sent)


def _plan_by_symbol(
    scope: Scope,
    orders: Sequence[Order],
    lists: Sequence[OrderList],
    configured_symbols: Iterable[str],
    caps: Capabilities,
    sent: Sequence[CancelRequest],
) -> list[CancelRequest]:
    account_wide_sent = any(r.kind is RequestKind.CANCEL_ALL_ACCOUNT for r in sent)
    covered = {s for r in sent if r.kind is RequestKind.CANCEL_ALL for s in r.symbols}
    lists_sent = {r.list_id for r in sent if r.kind is RequestKind.CANCEL_LIST}
    requests: list[CancelRequest] = []
    if not scope.symbols and caps.cancel_all_without_symbol:
        if not account_wide_sent:
            requests.append(CancelRequest(RequestKind.CANCEL_ALL_ACCOUNT))
    else:
        known = {o.symbol for o in orders} | {lst.symbol for lst in lists}
        known.update(configured_symbols)
        wanted = sorted(s for s in known if scope.covers_symbol(s) and s not in covered and s != "")
        step = max(1, caps.cancel_all_max_symbols)
        requests.extend(
            CancelRequest(RequestKind.CANCEL_ALL, symbols=tuple(wanted[i : i + step]))
            for i in range(0, len(wanted), step)
        )
    if caps.has_order_lists and not caps.cancel_all_covers_lists:
        requests.extend(
            CancelRequest(RequestKind.CANCEL_LIST, symbols=(lst.symbol,), list_id=lst.list_id)
            for lst in sorted(lists, key=lambda x: (x.symbol, x.list_id))
            if scope.covers_list(lst) and lst.list_id not in lists_sent
        )
    return requests


def _plan_by_id(
    scope: Scope,
    orders: Sequence[Order],
    lists: Sequence[OrderList],
    caps: Capabilities,
    sent: Sequence[CancelRequest],
) -> list[CancelRequest]:
    ids_sent = {i for r in sent for i in r.order_ids}
    lists_sent = {r.list_id for r in sent if r.kind is RequestKind.CANCEL_LIST}
    requests: list[CancelRequest] = []
    list_ids: set[str] = set()
    if caps.has_order_lists:
        for lst in sorted(lists, key=lambda x: (x.symbol, x.list_id)):
            if not scope.covers_list(lst):
                continue
            list_ids.add(lst.list_id)
            if lst.list_id not in lists_sent:
                requests.append(
                    CancelRequest(
                        RequestKind.CANCEL_LIST, symbols=(lst.symbol,), list_id=lst.list_id
                    )
                )
    by_symbol: dict[str, list[str]] = {}
    for order in orders:
        if not scope.covers_order(order) or order.order_id in ids_sent:
            continue
        if order.list_id is not None and order.list_id in list_ids:
            continue  # its list is cancelled as a whole
        by_symbol.setdefault(order.symbol, []).append(order.order_id)
    for symbol in sorted(by_symbol):
        ids = sorted(by_symbol[symbol])
        if caps.batch_cancel_max > 1 and len(ids) > 1:
            step = caps.batch_cancel_max
            requests.extend(
                CancelRequest(RequestKind.CANCEL_ORDERS, (symbol,), tuple(ids[i : i + step]))
                for i in range(0, len(ids), step)
            )
        else:
            requests.extend(CancelRequest(RequestKind.CANCEL_ORDER, (symbol,), (i,)) for i in ids)
    return requests


def _unique_orders(orders: Iterable[Order]) -> list[Order]:
    seen: dict[str, Order] = {}
    for order in orders:
        seen.setdefault(order.order_id, order)
    return list(seen.values())


def _unique_lists(lists: Iterable[OrderList]) -> list[OrderList]:
    seen: dict[str, OrderList] = {}
    for lst in lists:
        seen.setdefault(lst.list_id, lst)
    return list(seen.values())
