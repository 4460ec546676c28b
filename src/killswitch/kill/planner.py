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

Where the connector says what each request kind costs and what it has learned
(`PathCapabilities`, BingX), plans are chosen by their time under the limits, not by request
count:

* account-wide: one cancel-all without symbol while anything it covers may be open; OCO lists
  by their legs' ids in batches (one batch cancel takes many ids, at the same 2/s as one
  `oco/cancel`) and by `oco/cancel` side by side, or list by list once the account has shown
  that leg ids are refused. While it is unknown whether the cancel-all covers lists, lists wait
  for the read after it (that read teaches the connector the answer), unless sending them at
  once costs no time: on a venue where the cancel-all alone would do, they would only queue;
* symbol-scoped and by prefix: each symbol goes to the request kind (cancel-all of the symbol,
  batch by ids, single cancels) that keeps the longest queue shortest; each kind has its own
  budget on the venue, so they run side by side. A symbol whose orders may not all be known
  (no snapshot yet, or an incomplete one) is always cancelled whole.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from killswitch.exchanges.base import Capabilities
from killswitch.exchanges.paths import PathCapabilities
from killswitch.model import (
    UNREAD_CLIENT_ID,
    ListKey,
    Order,
    OrderKey,
    OrderList,
    Scope,
    Snapshot,
)


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
    """Return the part of `snapshot` that `scope` covers (account coverage is the caller's).

    An order or list on a symbol in scope whose client id the read did not show may be covered
    by a client-id prefix or not: the part in scope is then incomplete, never proof of flat.
    """
    items: tuple[Order | OrderList, ...] = (*snapshot.orders, *snapshot.lists)
    undecided = tuple(x for x in items if scope.undecided(x))
    return Snapshot(
        orders=tuple(o for o in snapshot.orders if scope.covers_order(o)),
        lists=tuple(lst for lst in snapshot.lists if scope.covers_list(lst)),
        server_time_ms=snapshot.server_time_ms,
        complete=snapshot.complete and not undecided,
        undecided=undecided,
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
    if isinstance(capabilities, PathCapabilities) and capabilities.rates:
        view = _View(
            first_look=snapshot is None,
            complete=snapshot is not None and snapshot.complete,
        )
        if scope.client_order_id_prefix is not None:
            return _timed_by_id(scope, orders, lists, capabilities, sent)
        return _timed_by_symbol(scope, orders, lists, configured_symbols, capabilities, sent, view)
    if scope.client_order_id_prefix is not None:
        return _plan_by_id(scope, orders, lists, capabilities, sent)
    return _plan_by_symbol(scope, orders, lists, configured_symbols, capabilities, sent)


@dataclass(frozen=True, slots=True)
class _View:
    """What the planner is looking at: the tracker alone (`first_look`, before any read), or
    a venue snapshot, which may be `complete` or cut short."""

    first_look: bool
    complete: bool


def _timed_by_symbol(
    scope: Scope,
    orders: Sequence[Order],
    lists: Sequence[OrderList],
    configured_symbols: Iterable[str],
    caps: PathCapabilities,
    sent: Sequence[CancelRequest],
    view: _View,
) -> list[CancelRequest]:
    account_wide_sent = any(r.kind is RequestKind.CANCEL_ALL_ACCOUNT for r in sent)
    in_scope_lists = [lst for lst in lists if scope.covers_list(lst)]
    list_keys = {lst.key for lst in in_scope_lists}
    plain = [o for o in orders if scope.covers_order(o) and _list_of(o) not in list_keys]
    coverage = caps.lists_coverage if caps.has_order_lists else True
    requests: list[CancelRequest] = []
    lists_by_cancel_all = False
    if not scope.symbols and caps.cancel_all_without_symbol:
        # Anything the cancel-all covers may still be open: not yet read, read short, seen.
        wanted = view.first_look or not view.complete or bool(plain)
        wanted = wanted or (bool(in_scope_lists) and coverage is True)
        if wanted and not account_wide_sent:
            requests.append(CancelRequest(RequestKind.CANCEL_ALL_ACCOUNT))
        lists_by_cancel_all = coverage is True and (wanted or account_wide_sent)
        if in_scope_lists and not lists_by_cancel_all:
            lists_now = _list_requests(in_scope_lists, caps, sent, requests)
            # Coverage unknown: the read after the cancel-all answers it, so lists wait for
            # it, unless sending them now costs no time (all within the limits' burst).
            waiting = coverage is None and (view.first_look or account_wide_sent)
            if not waiting or plan_time_s([*requests, *lists_now], caps) == 0:
                requests.extend(lists_now)
        return requests
    covered = {s for r in sent if r.kind is RequestKind.CANCEL_ALL for s in r.symbols}
    keys_sent = _keys_sent(sent)
    known = {o.symbol for o in orders} | {lst.symbol for lst in lists}
    known.update(configured_symbols)
    by_symbol: dict[str, list[str]] = {}
    for order in plain:
        if order.key not in keys_sent:
            by_symbol.setdefault(order.symbol, []).append(order.order_id)
    unknown_possible = view.first_look or not view.complete
    symbols = sorted(
        s
        for s in known
        if s
        and scope.covers_symbol(s)
        and s not in covered
        and (s in by_symbol or unknown_possible)
    )
    must_whole = {s for s in symbols if unknown_possible and s not in by_symbol}
    requests.extend(_assign(symbols, by_symbol, must_whole, caps))
    whole = {s for r in requests if r.kind is RequestKind.CANCEL_ALL for s in r.symbols} | covered
    if in_scope_lists:
        rest = [lst for lst in in_scope_lists if not (coverage is True and lst.symbol in whole)]
        requests.extend(_list_requests(rest, caps, sent, requests))
    return requests


def _timed_by_id(
    scope: Scope,
    orders: Sequence[Order],
    lists: Sequence[OrderList],
    caps: PathCapabilities,
    sent: Sequence[CancelRequest],
) -> list[CancelRequest]:
    in_scope_lists = [lst for lst in lists if caps.has_order_lists and scope.covers_list(lst)]
    list_keys = {lst.key for lst in in_scope_lists}
    keys_sent = _keys_sent(sent)
    by_symbol: dict[str, list[str]] = {}
    for order in orders:
        if not scope.covers_order(order) or order.key in keys_sent:
            continue
        if _list_of(order) in list_keys:
            continue  # its list is cancelled as a whole, below
        by_symbol.setdefault(order.symbol, []).append(order.order_id)
    requests = _assign(sorted(by_symbol), by_symbol, set(), caps, whole_allowed=False)
    requests.extend(_list_requests(in_scope_lists, caps, sent, requests))
    return requests


def _assign(
    symbols: Sequence[str],
    by_symbol: dict[str, list[str]],
    must_whole: set[str],
    caps: PathCapabilities,
    *,
    whole_allowed: bool = True,
) -> list[CancelRequest]:
    """Give each symbol the request kind that keeps the slowest kind's queue shortest."""
    load = {RequestKind.CANCEL_ALL: 0, RequestKind.CANCEL_ORDERS: 0, RequestKind.CANCEL_ORDER: 0}

    def span(extra: RequestKind, n: int) -> float:
        return max(
            _kind_time(caps, kind, count + (n if kind is extra else 0))
            for kind, count in load.items()
        )

    step = max(1, caps.batch_cancel_max)
    out: list[CancelRequest] = []
    busiest = sorted(symbols, key=lambda s: (-len(by_symbol.get(s, ())), s))
    for symbol in busiest:
        ids = sorted(by_symbol.get(symbol, ()))
        options: list[tuple[float, int, RequestKind, int]] = []
        if whole_allowed:
            options.append((span(RequestKind.CANCEL_ALL, 1), 0, RequestKind.CANCEL_ALL, 1))
        if ids and symbol not in must_whole:
            if caps.batch_cancel_max > 1 and len(ids) > 1:
                batches = -(-len(ids) // step)
                options.append(
                    (
                        span(RequestKind.CANCEL_ORDERS, batches),
                        1,
                        RequestKind.CANCEL_ORDERS,
                        batches,
                    )
                )
            options.append(
                (span(RequestKind.CANCEL_ORDER, len(ids)), 2, RequestKind.CANCEL_ORDER, len(ids))
            )
        if not options:
            continue
        _, _, kind, n = min(options)
        load[kind] += n
        if kind is RequestKind.CANCEL_ALL:
            out.append(CancelRequest(RequestKind.CANCEL_ALL, (symbol,)))
        elif kind is RequestKind.CANCEL_ORDERS:
            out.extend(
                CancelRequest(RequestKind.CANCEL_ORDERS, (symbol,), tuple(ids[i : i + step]))
                for i in range(0, len(ids), step)
            )
        else:
            out.extend(CancelRequest(RequestKind.CANCEL_ORDER, (symbol,), (i,)) for i in ids)
    order = {s: i for i, s in enumerate(sorted(symbols))}
    return sorted(out, key=lambda r: (order.get(r.symbols[0], 0), r.kind.value, r.order_ids))


def _list_requests(
    lists: Sequence[OrderList],
    caps: PathCapabilities,
    sent: Sequence[CancelRequest],
    planned: Sequence[CancelRequest] = (),
) -> list[CancelRequest]:
    """Lists by their legs' ids in batches (one request for several lists of a symbol, and no
    error answer for a list already gone), and by `oco/cancel` side by side where that ends
    sooner: the two have budgets of their own. Only `oco/cancel` once the account showed that
    leg ids are refused. `planned` are this plan's other requests (they load the same kinds)."""
    lists_sent = _lists_sent(sent)
    keys_sent = _keys_sent(sent)
    todo = [
        lst
        for lst in sorted(lists, key=lambda x: x.key)
        if lst.key not in lists_sent and not {(lst.symbol, i) for i in lst.order_ids} <= keys_sent
    ]
    if not todo:
        return []

    def one_by_one(chunk: Sequence[OrderList]) -> list[CancelRequest]:
        return [
            CancelRequest(RequestKind.CANCEL_LIST, symbols=(x.symbol,), list_id=x.list_id)
            for x in chunk
        ]

    if caps.list_legs_by_batch is False or caps.batch_cancel_max < 2:
        return one_by_one(todo)
    # Units: the lists one batch can take (its legs' ids, on one symbol).
    units: list[list[OrderList]] = []
    for symbol in sorted({x.symbol for x in todo}):
        unit: list[OrderList] = []
        for lst in (x for x in todo if x.symbol == symbol):
            if unit and sum(len(x.order_ids) for x in unit) + len(lst.order_ids) > (
                caps.batch_cancel_max
            ):
                units.append(unit)
                unit = []
            unit.append(lst)
        if unit:
            units.append(unit)
    load = {RequestKind.CANCEL_ORDERS: 0, RequestKind.CANCEL_LIST: 0, RequestKind.CANCEL_ORDER: 0}
    for request in planned:
        if request.kind in load:
            load[request.kind] += 1

    def span(kind: RequestKind, n: int) -> float:
        return max(_kind_time(caps, k, c + (n if k is kind else 0)) for k, c in load.items())

    out: list[CancelRequest] = []
    for unit in units:
        # A batch of the unit's legs; its lists one by one; or one leg of each by a single
        # cancel (a third budget, where leg ids are not known to be refused). Ties go left.
        options = [
            (span(RequestKind.CANCEL_ORDERS, 1), 0, RequestKind.CANCEL_ORDERS),
            (span(RequestKind.CANCEL_LIST, len(unit)), 1, RequestKind.CANCEL_LIST),
            (span(RequestKind.CANCEL_ORDER, len(unit)), 2, RequestKind.CANCEL_ORDER),
        ]
        _, _, kind = min(options)
        if kind is RequestKind.CANCEL_ORDERS:
            load[kind] += 1
            ids = tuple(i for x in unit for i in x.order_ids)
            out.append(CancelRequest(kind, (unit[0].symbol,), ids))
        elif kind is RequestKind.CANCEL_LIST:
            load[kind] += len(unit)
            out.extend(one_by_one(unit))
        else:
            load[kind] += len(unit)
            out.extend(CancelRequest(kind, (x.symbol,), x.order_ids[:1]) for x in unit)
    return out


def _kind_time(caps: PathCapabilities, kind: RequestKind, n: int) -> float:
    rate = caps.rate(kind.value)
    if rate is None:
        return float(n)
    return rate.time_s(n)


def plan_time_s(requests: Sequence[CancelRequest], caps: Capabilities) -> float:
    """How long `requests` take to send under the connector's budgets (kinds in parallel);
    0 for a venue whose connector does not say."""
    if not isinstance(caps, PathCapabilities):
        return 0.0
    counts: dict[RequestKind, int] = {}
    for request in requests:
        counts[request.kind] = counts.get(request.kind, 0) + 1
    merged = {k: v for k, v in counts.items() if k is not RequestKind.CANCEL_ALL_ACCOUNT}
    if RequestKind.CANCEL_ALL_ACCOUNT in counts:  # the same endpoint as per-symbol cancel-all
        merged[RequestKind.CANCEL_ALL] = (
            merged.get(RequestKind.CANCEL_ALL, 0) + counts[RequestKind.CANCEL_ALL_ACCOUNT]
        )
    return max((_kind_time(caps, k, n) for k, n in merged.items()), default=0.0)


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
    lists_sent = _lists_sent(sent)
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
            for lst in sorted(lists, key=lambda x: x.key)
            if scope.covers_list(lst) and lst.key not in lists_sent
        )
    return requests


def _plan_by_id(
    scope: Scope,
    orders: Sequence[Order],
    lists: Sequence[OrderList],
    caps: Capabilities,
    sent: Sequence[CancelRequest],
) -> list[CancelRequest]:
    keys_sent = _keys_sent(sent)
    lists_sent = _lists_sent(sent)
    requests: list[CancelRequest] = []
    list_keys: set[ListKey] = set()
    if caps.has_order_lists:
        for lst in sorted(lists, key=lambda x: x.key):
            if not scope.covers_list(lst):
                continue
            list_keys.add(lst.key)
            if lst.key not in lists_sent:
                requests.append(
                    CancelRequest(
                        RequestKind.CANCEL_LIST, symbols=(lst.symbol,), list_id=lst.list_id
                    )
                )
    by_symbol: dict[str, list[str]] = {}
    for order in orders:
        if not scope.covers_order(order) or order.key in keys_sent:
            continue
        if _list_of(order) in list_keys:
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


def _keys_sent(sent: Sequence[CancelRequest]) -> set[OrderKey]:
    """The (symbol, id) of every order a request by id already covers (one symbol each)."""
    return {(r.symbols[0], i) for r in sent if r.symbols for i in r.order_ids}


def _list_key(request: CancelRequest) -> ListKey | None:
    """The (symbol, list id) a list cancel names; None for any other request."""
    if request.kind is not RequestKind.CANCEL_LIST or request.list_id is None:
        return None
    return (request.symbols[0] if request.symbols else "", request.list_id)


def _lists_sent(sent: Sequence[CancelRequest]) -> set[ListKey]:
    """The (symbol, list id) of every list a list cancel already covers."""
    return {key for key in map(_list_key, sent) if key is not None}


def _list_of(order: Order) -> ListKey | None:
    """The (symbol, list id) of the list `order` is a leg of, if any: a list is known by its
    symbol and id, since Binance may number lists per symbol, as it numbers orders."""
    return None if order.list_id is None else (order.symbol, order.list_id)


def _unique_orders(orders: Iterable[Order]) -> list[Order]:
    # By (symbol, id): Binance numbers orders per symbol, so an id alone is not an order.
    # The first source wins, but a client id one source did not read another may show.
    seen: dict[OrderKey, Order] = {}
    for order in orders:
        known = seen.get(order.key)
        if known is None:
            seen[order.key] = order
        elif known.client_order_id == UNREAD_CLIENT_ID:
            seen[order.key] = replace(known, client_order_id=order.client_order_id)
    return list(seen.values())


def _unique_lists(lists: Iterable[OrderList]) -> list[OrderList]:
    seen: dict[ListKey, OrderList] = {}
    for lst in lists:
        seen.setdefault(lst.key, lst)
    return list(seen.values())


# -- shaping what is sent ---------------------------------------------------------------------


def biggest_first(requests: list[CancelRequest], tracked: Snapshot | None) -> list[CancelRequest]:
    """Order requests by how many known orders each covers, most first."""
    if tracked is None:
        return requests
    per_symbol: dict[str, int] = {}
    for order in tracked.orders:
        per_symbol[order.symbol] = per_symbol.get(order.symbol, 0) + 1

    def weight(request: CancelRequest) -> int:
        if request.kind is RequestKind.CANCEL_ALL_ACCOUNT:
            return len(tracked.orders) + 1
        if request.order_ids:
            return len(request.order_ids)
        return sum(per_symbol.get(sym, 0) for sym in request.symbols)

    return sorted(requests, key=weight, reverse=True)


def coverage(request: CancelRequest, known: Mapping[OrderKey, Order]) -> set[OrderKey]:
    """The orders of `known` that `request` was meant to cancel."""
    if request.order_ids:
        symbol = request.symbols[0] if request.symbols else ""
        return {(symbol, i) for i in request.order_ids}
    if request.kind is RequestKind.CANCEL_ALL:
        wanted = set(request.symbols)
        return {o.key for o in known.values() if o.symbol in wanted}
    if request.kind is RequestKind.CANCEL_ALL_ACCOUNT:
        return set(known)
    wanted_list = _list_key(request)
    return {o.key for o in known.values() if _list_of(o) == wanted_list}


def lists_by_their_own(caps: Capabilities) -> Capabilities:
    """`caps` with no cancel-all believed to cover order lists: each list is cancelled by a
    request of its own."""
    if isinstance(caps, PathCapabilities):
        return replace(caps, cancel_all_covers_lists=False, lists_coverage=False)
    return replace(caps, cancel_all_covers_lists=False)


def still_to_send(
    request: CancelRequest, snapshot: Snapshot, caps: Capabilities
) -> CancelRequest | None:
    """What of `request` is still to send, after an unknown outcome, given a fresh read of
    the venue in scope; None when nothing it covers is open."""
    open_keys = {o.key for o in snapshot.orders}
    kind = request.kind
    if kind is RequestKind.CANCEL_ALL:
        left = tuple(s for s in request.symbols if s in snapshot.symbols())
        return CancelRequest(kind, symbols=left) if left else None
    if kind is RequestKind.CANCEL_ALL_ACCOUNT:
        # Lists the venue's cancel-all does not cover have requests of their own.
        covers_lists = caps.cancel_all_covers_lists
        rest = [o for o in snapshot.orders if covers_lists or o.list_id is None]
        return request if rest else None
    if kind is RequestKind.CANCEL_LIST:
        return request if _list_key(request) in {x.key for x in snapshot.lists} else None
    symbol = request.symbols[0] if request.symbols else ""
    ids = tuple(i for i in request.order_ids if (symbol, i) in open_keys)
    if not ids:
        return None
    if len(ids) == 1:
        return CancelRequest(RequestKind.CANCEL_ORDER, request.symbols, ids)
    return CancelRequest(kind, request.symbols, ids)
