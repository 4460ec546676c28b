"""Answers in Binance's spot v3 shape, which MEXC's spot v3 copies: an open-orders row, and
the account read's trading permissions. Ids stay strings and never go through a float."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from killswitch.model import Order


def text_id(value: object) -> str:
    """An order or list id as a string; a float is refused, as it may have lost digits."""
    if isinstance(value, float):
        raise TypeError("an order id arrived as a float; it may have lost digits")
    return str(value)


def order_from_row(row: Mapping[str, Any]) -> Order:
    """An open-orders row as an `Order` (`orderListId` -1: not in a list)."""

    def text(key: str, default: str = "0") -> str:  # prices and quantities default to 0
        return str(row.get(key, default))

    list_id = row.get("orderListId")
    return Order(
        symbol=str(row["symbol"]),
        order_id=text_id(row["orderId"]),
        client_order_id=str(row.get("clientOrderId") or ""),
        side=text("side", ""),
        order_type=text("type", ""),
        price=text("price"),
        orig_qty=text("origQty"),
        executed_qty=text("executedQty"),
        status=text("status", "NEW"),
        list_id=None if list_id in (None, -1, "-1", "") else text_id(list_id),
        time_ms=int(row.get("time") or 0),
    )


def trading_permissions(account: Mapping[str, Any]) -> dict[str, object]:
    """What `GET /api/v3/account` says of the key, for readiness: `can_trade` is the venue's
    `canTrade`, `permissions` its list."""
    return {
        "can_trade": bool(account["canTrade"]),
        "permissions": [str(p) for p in account.get("permissions") or ()],
        "account_type": str(account.get("accountType", "")),
    }
