"""The lower bound on time to flat: what no client can beat on a given workload.

A kill is proved flat when every account in scope has had its cancels acknowledged and then
shown an empty open-orders snapshot. With a round trip of R per request, any client needs at
least:

1. **One cancel wave.** All of a wave's requests may be in flight at once, so a wave costs one
   round trip, R. The fewest requests that cover an account follow from the venue's
   capabilities alone (the same facts the planner uses):

   * a venue whose cancel-all can omit the symbol (BingX): one request for the whole account;
   * else one cancel-all per group of `cancel_all_max_symbols` symbols with open orders
     (Binance 1, MEXC 5): `ceil(symbols / max)` requests;
   * plus, where the venue's cancel-all is not known to cover order lists (BingX OCO), the
     lists: by their legs' ids in batch cancels (`batch_cancel_max` ids a request, two legs a
     list; the fewest requests) unless the connector learned that the venue refuses leg ids,
     else one `oco/cancel` per list. A connector that has learned the cancel-all covers lists
     needs none. For the rate-limit span, lists may go down three paths at once (a batch of
     up to five lists of one symbol, `oco/cancel`, a single cancel of one leg), each with its
     own budget: the bound counts the lists all three together can carry in a window, per UID
     and per IP, with the fullest batches first. A batch names one symbol, so lists spread
     one to a symbol take a batch each.

   The client is assumed to know which symbols have open orders before the alert (a warm
   tracker, as the daemon keeps): a client that must first look costs one more round.

2. **Rate limits may stretch the wave.** A venue counts weight in fixed windows aligned to its
   clock (`limit` weight per `window_s`). N requests of total weight G in one bucket need
   `k = ceil(G / limit)` distinct windows. The luckiest client sends its first burst at the
   very end of one window and its last at the very start of the k-th, so the wave's sends span
   at least `(k - 2) * window_s` (zero when k <= 2). Per-account buckets (BingX per UID) fill
   from one account's requests; per-IP buckets (BingX per IP and API, its IP groups) from every
   account of the venue, since they all leave from our one IP. The longest span counts. Assuming
   perfect window alignment makes this a bound, not a typical figure: it is below what any
   real client, ours included, gets on average.

3. **One verification round.** After the last acknowledgement, one snapshot round (its reads
   in parallel, each in its own bucket), R. Its reads spend buckets too: where accounts share a
   per-IP read budget (BingX openOrders and oco/openOrderList, 2/s per IP each), N accounts'
   verification reads span windows of their own. An account's read can leave only after its
   own cancels are acknowledged, but other accounts' reads may overlap later cancels, so the
   two spans count as the longer of them, not their sum.

    bound = max over buckets (cancel span, verification span) + R (cancel wave)
            + R (verification)

An account with nothing open needs only the verification round, R. The limits are the venues'
documented ones as the simulator enforces them: BingX as corrected on 2026-12-06 (cancel-all,
batch cancel and oco/cancel 2/s per UID; 3/s per IP on trade endpoints, 2/s on the others).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from killswitch.exchanges.base import Capabilities
from killswitch.exchanges.paths import PathCapabilities


@dataclass(frozen=True, slots=True)
class AccountLoad:
    """What one account has open when the alert arrives."""

    venue: str
    symbols: int  # symbols with at least one open order
    orders: int  # open orders, list legs included
    lists: int = 0  # open order lists
    # Lists per symbol, where known: a batch cancel names one symbol, so lists spread one to a
    # symbol take a batch each. Unknown (empty): the luckiest spread, every batch full.
    lists_by_symbol: tuple[int, ...] = ()

    @property
    def empty(self) -> bool:
        return self.orders == 0 and self.lists == 0


@dataclass(frozen=True, slots=True)
class Bucket:
    """One rate-limit window a request spends in: `limit` weight per `window_s`. A `per_ip`
    bucket is filled by every account of the venue (they share our IP)."""

    name: str
    limit: int
    window_s: float
    per_ip: bool = False


# (bucket, weight) pairs each planned request kind spends, per venue. Sources: reference
# exchange-apis.md §1.6 (Binance REQUEST_WEIGHT 6000/min per IP, cancels weight 1), §2.5 (MEXC
# 500 per 10 s per endpoint), §3.2/§3.5 corrected 2026-12-06 (BingX per UID: cancelOpenOrders,
# cancelOrders, oco/cancel 2/s; per IP and API: 3/s in group 3, 2/s in group 2; 1000 per 10 s
# per IP group).
_BN_WEIGHT = Bucket("binance request weight", 6000, 60.0)
_MX_CANCEL_ALL = Bucket("mexc DELETE /api/v3/openOrders", 500, 10.0)
_BX_CANCEL_ALL_UID = Bucket("bingx uid cancelOpenOrders", 2, 1.0)
_BX_CANCEL_ALL_IP = Bucket("bingx ip cancelOpenOrders", 3, 1.0, per_ip=True)
_BX_BATCH_UID = Bucket("bingx uid cancelOrders", 2, 1.0)
_BX_BATCH_IP = Bucket("bingx ip cancelOrders", 3, 1.0, per_ip=True)
_BX_GROUP3 = Bucket("bingx ip group 3", 1000, 10.0, per_ip=True)
_BX_OCO_UID = Bucket("bingx uid oco/cancel", 2, 1.0)
_BX_OCO_IP = Bucket("bingx ip oco/cancel", 2, 1.0, per_ip=True)
_BX_GROUP2 = Bucket("bingx ip group 2", 1000, 10.0, per_ip=True)
# OCO lists a window can take down the three paths together, where leg ids are taken: batches
# (each up to `batch_cancel_max` / 2 lists, all of one symbol: `cancelOrders` names its symbol)
# beside one list per `oco/cancel` and per single leg cancel. (batches, single lists) a window:
# per UID 2 batches + 2 oco/cancel + 5 single cancels; per IP 3 + 2 + 3.
LIST_PATHS: Mapping[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "bingx": ((2, 2 + 5), (3, 2 + 3)),
}

REQUEST_BUCKETS: Mapping[str, Mapping[str, tuple[tuple[Bucket, int], ...]]] = {
    "binance": {"cancel_all": ((_BN_WEIGHT, 1),), "cancel_list": ((_BN_WEIGHT, 1),)},
    "mexc": {"cancel_all": ((_MX_CANCEL_ALL, 1),)},
    "bingx": {
        "cancel_all": ((_BX_CANCEL_ALL_UID, 1), (_BX_CANCEL_ALL_IP, 1), (_BX_GROUP3, 1)),
        "cancel_legs": ((_BX_BATCH_UID, 1), (_BX_BATCH_IP, 1), (_BX_GROUP3, 1)),
        "cancel_list": ((_BX_OCO_UID, 1), (_BX_OCO_IP, 1), (_BX_GROUP2, 1)),
    },
}
LEGS_PER_LIST = 2  # BingX lists are OCOs
# The reads one verification snapshot of an account spends, per venue, where they share a
# budget with other accounts (per IP); Binance's and MEXC's reads are far inside their budgets.
_BX_OPEN_ORDERS_IP = Bucket("bingx ip openOrders", 2, 1.0, per_ip=True)
_BX_OCO_LIST_IP = Bucket("bingx ip oco/openOrderList", 2, 1.0, per_ip=True)
VERIFY_BUCKETS: Mapping[str, tuple[tuple[Bucket, int], ...]] = {
    "bingx": ((_BX_OPEN_ORDERS_IP, 1), (_BX_OCO_LIST_IP, 1), (_BX_GROUP2, 2)),
}


def cancel_requests(load: AccountLoad, caps: Capabilities) -> dict[str, int]:
    """The fewest cancel requests that cover `load`, by kind (`cancel_all`, `cancel_legs`,
    `cancel_list`)."""
    if load.empty:
        return {}
    out: dict[str, int] = {}
    if caps.cancel_all_without_symbol:
        out["cancel_all"] = 1
    elif load.symbols:
        out["cancel_all"] = math.ceil(load.symbols / max(1, caps.cancel_all_max_symbols))
    if load.lists and caps.has_order_lists and not caps.cancel_all_covers_lists:
        by_legs = (
            isinstance(caps, PathCapabilities)
            and caps.list_legs_by_batch is not False
            and caps.batch_cancel_max > 1
        )
        if by_legs:
            out["cancel_legs"] = math.ceil(load.lists * LEGS_PER_LIST / caps.batch_cancel_max)
        else:
            out["cancel_list"] = load.lists
    return out


def windows_span_s(total_weight: int, bucket: Bucket) -> float:
    """The shortest time over which `total_weight` can be sent through `bucket`'s windows."""
    windows = math.ceil(total_weight / bucket.limit) if total_weight > 0 else 0
    return max(0, windows - 2) * bucket.window_s


def _spend(
    load: AccountLoad, caps: Capabilities, account: int, spent: dict[tuple[Bucket, int], int]
) -> None:
    buckets = REQUEST_BUCKETS.get(load.venue, {})
    wanted = cancel_requests(load, caps)
    if "cancel_legs" in wanted and load.venue in LIST_PATHS:
        del wanted["cancel_legs"]  # lists go down every path at once: `_lists_span_s`
    for kind, count in wanted.items():
        for bucket, weight in buckets.get(kind, ()):
            key = (bucket, -1 if bucket.per_ip else account)
            spent[key] = spent.get(key, 0) + weight * count


def rate_span_s(load: AccountLoad, caps: Capabilities) -> float:
    """How far rate limits at best stretch this account's cancel wave alone, in seconds."""
    spent: dict[tuple[Bucket, int], int] = {}
    _spend(load, caps, 0, spent)
    span = max((windows_span_s(w, b) for (b, _), w in spent.items()), default=0.0)
    return max(span, _lists_span_s([load], {load.venue: caps}))


def _batch_units(load: AccountLoad, per_batch: int) -> list[int]:
    """The lists each batch can carry: per symbol, full batches and what is left."""
    units: list[int] = []
    for count in load.lists_by_symbol or (load.lists,):
        full, rest = divmod(count, per_batch)
        units += [per_batch] * full + ([rest] if rest else [])
    return units


def _list_windows(units: Sequence[int], batches: int, singles: int) -> int:
    """The fewest 1 s windows that take every list: each window `batches` batches (the fullest
    first) and `singles` lists one by one."""
    ordered = sorted(units, reverse=True)
    total, windows = sum(ordered), 0
    while total > 0:
        windows += 1
        if sum(ordered[: batches * windows]) + singles * windows >= total:
            break
    return windows


def _lists_span_s(loads: Sequence[AccountLoad], capabilities: Mapping[str, Capabilities]) -> float:
    """How far the lists' paths stretch the wave: per UID, and per IP over every account."""
    span = 0.0
    shared: dict[str, list[int]] = {}
    for load in loads:
        caps = capabilities[load.venue]
        paths = LIST_PATHS.get(load.venue)
        if paths is None or "cancel_legs" not in cancel_requests(load, caps):
            continue
        units = _batch_units(load, max(1, caps.batch_cancel_max // LEGS_PER_LIST))
        span = max(span, max(0, _list_windows(units, *paths[0]) - 2) * 1.0)
        shared.setdefault(load.venue, []).extend(units)
    for venue, units in shared.items():
        span = max(span, max(0, _list_windows(units, *LIST_PATHS[venue][1]) - 2) * 1.0)
    return span


@dataclass(frozen=True, slots=True)
class Bound:
    """The lower bound and how it is made up."""

    seconds: float
    round_trip_s: float
    rate_span_s: float
    requests: int  # cancel requests over all accounts
    rounds: int  # sequential round trips (cancel wave + verification)

    @property
    def ms(self) -> float:
        return self.seconds * 1000.0


def lower_bound(
    loads: Sequence[AccountLoad],
    capabilities: Mapping[str, Capabilities],
    round_trip_s: float,
) -> Bound:
    """The least time to flat any client needs for `loads` (see the module docstring)."""
    spent: dict[tuple[Bucket, int], int] = {}
    requests = 0
    any_cancel = False
    for i, load in enumerate(loads):
        caps = capabilities[load.venue]
        wanted = cancel_requests(load, caps)
        requests += sum(wanted.values())
        any_cancel = any_cancel or bool(wanted)
        _spend(load, caps, i, spent)
    rounds = 2 if any_cancel else 1
    span = max((windows_span_s(w, b) for (b, _), w in spent.items()), default=0.0)
    span = max(span, _lists_span_s(loads, capabilities))
    read: dict[Bucket, int] = {}
    for load in loads:
        for bucket, weight in VERIFY_BUCKETS.get(load.venue, ()):
            read[bucket] = read.get(bucket, 0) + weight
    span = max([span, *(windows_span_s(w, b) for b, w in read.items())])
    return Bound(span + rounds * round_trip_s, round_trip_s, span, requests, rounds)


def loads_of(
    books: Iterable[tuple[str, Iterable[tuple[str, str | None]]]],
) -> list[AccountLoad]:
    """Account loads from books: per account its venue and (symbol, list id or None) per order."""
    out = []
    for venue, orders in books:
        rows = list(orders)
        lists = {(symbol, list_id) for symbol, list_id in rows if list_id is not None}
        by_symbol = Counter(symbol for symbol, _ in lists)
        out.append(
            AccountLoad(
                venue=venue,
                symbols=len({symbol for symbol, _ in rows}),
                orders=len(rows),
                lists=len(lists),  # a list is its symbol and id: ids may be per symbol
                lists_by_symbol=tuple(sorted(by_symbol.values(), reverse=True)),
            )
        )
    return out
