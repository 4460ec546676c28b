"""Client ids a venue's read did not show, filled in where a client-id prefix needs them.

BingX's documented openOrders row has no `clientOrderID` (reference §3.3), so a read may give
`UNREAD_CLIENT_ID`: whether a prefix covers such an order cannot be told, and a read holding one
proves nothing flat (`Scope.undecided`). A prefix kill would then end failed with the order
named but never cancelled. The ids come first from the tracker, which saw them on the stream
where it carries them, then from the venue, asked order by order (`Exchange.client_ids`). A
client id never changes, so either answer holds for the order's life.
"""

from __future__ import annotations

from dataclasses import replace

from killswitch.kill.config import Account
from killswitch.model import UNREAD_CLIENT_ID, OrderKey, Scope, Snapshot


async def fill_client_ids(scope: Scope, snapshot: Snapshot, account: Account) -> Snapshot:
    """`snapshot` with the client ids of its orders on symbols in a prefix `scope` that its
    read did not show, where the tracker or the venue can tell them; unchanged otherwise."""
    if scope.client_order_id_prefix is None:
        return snapshot
    unread = [
        o
        for o in snapshot.orders
        if o.client_order_id == UNREAD_CLIENT_ID and scope.covers_symbol(o.symbol)
    ]
    if not unread:
        return snapshot
    known: dict[OrderKey, str] = {}
    if account.tracker is not None:
        seen = {o.key: o.client_order_id for o in account.tracker.as_snapshot().orders}
        known = {
            o.key: seen[o.key]
            for o in unread
            if seen.get(o.key, UNREAD_CLIENT_ID) != UNREAD_CLIENT_ID
        }
    missing = [o for o in unread if o.key not in known]
    if missing:
        known |= await account.exchange.client_ids(missing)
    if not known:
        return snapshot
    orders = tuple(
        replace(o, client_order_id=known[o.key])
        if o.client_order_id == UNREAD_CLIENT_ID and o.key in known
        else o
        for o in snapshot.orders
    )
    return replace(snapshot, orders=orders)
