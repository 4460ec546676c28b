"""BingX open-order reads: one no-symbol read under the 2,000-row cap, else per symbol.

Functions of the connector (`ReadsHost`), moved out of `BingxExchange` as they were."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from killswitch.exchanges.base import (
    AlreadyGone,
    Fatal,
    OutcomeUnknown,
    VenueError,
)
from killswitch.exchanges.bingx.errors import read_found_nothing
from killswitch.exchanges.bingx.parse import _gather, _items
from killswitch.exchanges.bingx.rest import RestHost
from killswitch.exchanges.bingx.venue import (
    MAX_SYMBOL_READS,
    OPEN_ORDERS,
    OPEN_ORDERS_MAX,
    PER_SYMBOL_READS_FIRST,
)
from killswitch.exchanges.budget import Priority

log = logging.getLogger(__name__)


class ReadsHost(RestHost, Protocol):
    """What the open-order reads use of the connector (`BingxExchange`)."""

    async def venue_symbols(self, priority: Priority = Priority.KILL) -> tuple[str, ...]: ...


async def open_order_rows(
    ex: ReadsHost, symbols: list[str] | None, priority: Priority
) -> tuple[list[dict[str, Any]], bool]:
    """Open-order rows and whether they are surely all of them."""
    if symbols is not None and len(symbols) > PER_SYMBOL_READS_FIRST:
        # One no-symbol read covers them all when it is under the cap: one request
        # against the 2/s per-IP budget instead of one a symbol.
        rows = await open_orders(ex, None, priority)
        if len(rows) < OPEN_ORDERS_MAX:
            asked = set(symbols)
            return [row for row in rows if str(row.get("symbol")) in asked], True
    if symbols is not None:
        batches = await _gather([open_orders(ex, s, priority) for s in symbols])
        capped = [s for s, b in zip(symbols, batches, strict=True) if len(b) >= OPEN_ORDERS_MAX]
        if capped:
            log.warning(
                "bingx openOrders capped account=%s symbols=%s: snapshot incomplete",
                ex.account,
                capped,
            )
        return [row for batch in batches for row in batch], not capped
    rows = await open_orders(ex, None, priority)
    if len(rows) < OPEN_ORDERS_MAX:
        return rows, True
    # The no-symbol read hit its cap: what it left out may be on any symbol. Read each
    # symbol seen, and each the venue lists, on its own; or say the read is incomplete.
    seen = list(dict.fromkeys(str(row.get("symbol") or "") for row in rows))
    complete = True
    try:
        listed = await ex.venue_symbols(priority)
    except VenueError as exc:
        log.warning("bingx symbol list unreadable account=%s: %s", ex.account, exc)
        listed, complete = (), False
    wanted = list(dict.fromkeys([*seen, *listed]))
    if len(wanted) > MAX_SYMBOL_READS:
        log.warning(
            "bingx openOrders capped account=%s: %d symbols to read, over %d: incomplete",
            ex.account,
            len(wanted),
            MAX_SYMBOL_READS,
        )
        wanted, complete = [s for s in seen if s][:MAX_SYMBOL_READS], False
    log.warning(
        "bingx openOrders hit its cap account=%s: reading %d symbols",
        ex.account,
        len(wanted),
    )
    per_symbol, each_complete = await open_order_rows(ex, [s for s in wanted if s], priority)
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for row in [*rows, *per_symbol]:
        merged[(str(row.get("symbol")), str(row.get("orderId")))] = row
    return list(merged.values()), complete and each_complete


async def open_orders(
    ex: ReadsHost, symbol: str | None, priority: Priority
) -> list[dict[str, Any]]:
    params = [("symbol", symbol)] if symbol else []
    try:
        data = await ex.rest.request("GET", OPEN_ORDERS, params, priority=priority)
    except AlreadyGone as exc:  # a read has nothing to be "gone": we cannot read this
        raise OutcomeUnknown(exc.msg, venue=ex.venue, account=ex.account) from exc
    except Fatal as exc:
        if read_found_nothing(exc, symbol or None):
            return []
        raise
    return _items(data, "orders", read=True)
