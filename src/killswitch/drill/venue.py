"""The drill's venue client: signed REST for placing the one drill order (post-only, minimum
size, far below the market), the book and the symbol rules; the connectors only cancel."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_UP, Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from yarl import URL

from killswitch.exchanges.signing import binance_ed25519_private_key
from killswitch.settings import AccountSettings
from killswitch.sim.rogue import KEY_HEADERS, PLACE_PATHS, signed_query


class DrillRefused(Exception):
    """The drill must not run; nothing was placed."""


class DrillFailed(Exception):
    """The drill ran and did not pass."""


# -- placing the drill order (the connectors only cancel; this is the one place that trades) ----

BOOK_PATHS = {
    "binance": "/api/v3/ticker/bookTicker",
    "mexc": "/api/v3/ticker/bookTicker",
    "bingx": "/openApi/spot/v1/ticker/bookTicker",
}


@dataclass(frozen=True, slots=True)
class Rules:
    """What the venue allows on a symbol (zeros where it did not say)."""

    min_qty: Decimal = Decimal(0)
    step: Decimal = Decimal(0)
    min_notional: Decimal = Decimal(0)
    tick: Decimal = Decimal(0)


class VenueClient:
    """Signed REST for the few calls a drill makes that the connectors do not have."""

    def __init__(self, account: AccountSettings, session: aiohttp.ClientSession) -> None:
        self.venue = account.venue
        self.base = account.rest_url.rstrip("/")
        self.recv_window_ms = account.recv_window_ms
        self.session = session
        self._key = account.api_key.get_secret_value()
        self._secret = account.api_secret.get_secret_value()
        self._ed25519 = None
        if account.key_type == "ed25519":
            self._ed25519 = binance_ed25519_private_key(self._secret)

    async def _get(self, path: str, params: Sequence[tuple[str, str]]) -> Any:
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params)
        url = f"{self.base}{path}" + (f"?{query}" if query else "")
        async with self.session.get(URL(url, encoded=True)) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise DrillRefused(f"GET {path}: http {resp.status} {body[:200]!r}")
        data = orjson.loads(body)
        if self.venue == "bingx":
            if not isinstance(data, dict) or data.get("code") != 0:
                raise DrillRefused(f"GET {path}: {str(data)[:200]}")
            return data.get("data")
        return data

    async def best_bid(self, symbol: str) -> Decimal:
        """The best bid from the venue's book (public)."""
        data = await self._get(BOOK_PATHS[self.venue], [("symbol", symbol)])
        row = data[0] if isinstance(data, list) and data else data
        if not isinstance(row, dict):
            raise DrillRefused("the venue's book answer has no bid")
        bid = Decimal(str(row.get("bidPrice") or "0"))
        if bid <= 0:
            raise DrillRefused("the venue's book shows no bid")
        return bid

    async def rules(self, symbol: str) -> Rules:
        """Lot, notional and tick rules of `symbol`, as far as the venue states them."""
        if self.venue == "bingx":
            data = await self._get("/openApi/spot/v1/common/symbols", [("symbol", symbol)])
            rows = data.get("symbols") if isinstance(data, dict) else None
            row = next((r for r in rows or () if r.get("symbol") == symbol), None)
            if row is None:
                raise DrillRefused(f"{symbol}: not listed by the venue")
            return Rules(
                _dec(row.get("minQty")),
                _dec(row.get("stepSize")),
                _dec(row.get("minNotional")),
                _dec(row.get("tickSize")),
            )
        data = await self._get("/api/v3/exchangeInfo", [("symbol", symbol)])
        rows = data.get("symbols") if isinstance(data, dict) else None
        row = next((r for r in rows or () if r.get("symbol") == symbol), None)
        if row is None:
            raise DrillRefused(f"{symbol}: not listed by the venue")
        filters = {f.get("filterType"): f for f in row.get("filters") or ()}
        lot = filters.get("LOT_SIZE", {})
        notional = filters.get("NOTIONAL") or filters.get("MIN_NOTIONAL") or {}
        price = filters.get("PRICE_FILTER", {})
        rules = Rules(
            _dec(lot.get("minQty")),
            _dec(lot.get("stepSize")),
            _dec(notional.get("minNotional")),
            _dec(price.get("tickSize")),
        )
        if self.venue == "mexc":  # MEXC states them as precisions, not filters
            digits = int(row.get("baseAssetPrecision") or 8)
            rules = Rules(
                max(rules.min_qty, _dec(row.get("baseSizePrecision"))),
                rules.step or Decimal(1).scaleb(-digits),
                max(rules.min_notional, _dec(row.get("quoteAmountPrecision"))),
                rules.tick or Decimal(1).scaleb(-int(row.get("quotePrecision") or 8)),
            )
        return rules

    async def place_post_only(
        self, symbol: str, quantity: Decimal, price: Decimal, client_id: str
    ) -> str:
        """Place one post-only BUY; return the venue's order id."""
        params = [("symbol", symbol), ("side", "BUY")]
        if self.venue == "bingx":
            params += [("type", "LIMIT"), ("timeInForce", "PostOnly")]
        else:
            params += [("type", "LIMIT_MAKER")]
        params += [
            ("quantity", _plain(quantity)),
            ("price", _plain(price)),
            ("newClientOrderId", client_id),
        ]
        query = signed_query(
            self.venue, params, self._secret, self._ed25519, recv_window_ms=self.recv_window_ms
        )
        url = f"{self.base}{PLACE_PATHS[self.venue]}?{query}"
        headers = {KEY_HEADERS[self.venue]: self._key}
        if self.venue == "mexc":
            headers["Content-Type"] = "application/json"
        async with self.session.post(URL(url, encoded=True), headers=headers) as resp:
            status = resp.status
            body = await resp.read()
        try:
            data = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            data = None
        if self.venue == "bingx" and isinstance(data, dict) and data.get("code") == 0:
            data = data.get("data")
        if status == 200 and isinstance(data, dict) and data.get("orderId") is not None:
            return str(data["orderId"])
        text = body[:300].decode("utf-8", "replace")
        raise DrillFailed(f"the venue did not place the drill order: http {status} {text}")


def _dec(value: object) -> Decimal:
    try:
        return Decimal(str(value)) if value not in (None, "") else Decimal(0)
    except InvalidOperation:
        return Decimal(0)


def _plain(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return text


def round_to(value: Decimal, step: Decimal, rounding: str) -> Decimal:
    if step <= 0:
        return value.quantize(Decimal("0.00000001"), rounding=rounding)
    return (value / step).quantize(Decimal(1), rounding=rounding) * step


def minimum_quantity(rules: Rules, price: Decimal) -> Decimal:
    """The smallest quantity the venue accepts at `price` (notional with 10% to spare)."""
    wanted = max(rules.min_qty, rules.min_notional * Decimal("1.1") / price)
    quantity = round_to(wanted, rules.step, ROUND_UP)
    if quantity <= 0:
        quantity = rules.step if rules.step > 0 else Decimal("0.00000001")
    return quantity
