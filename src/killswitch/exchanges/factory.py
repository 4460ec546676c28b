"""Build a venue connector from its venue name: one typed constructor call per venue."""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

from killswitch.exchanges.base import Exchange
from killswitch.exchanges.binance import BinanceExchange
from killswitch.exchanges.bingx import BingxExchange
from killswitch.exchanges.mexc import MexcExchange

Connector = type[BinanceExchange] | type[MexcExchange] | type[BingxExchange]

CONNECTORS: dict[str, Connector] = {
    "binance": BinanceExchange,
    "mexc": MexcExchange,
    "bingx": BingxExchange,
}


class _Common(TypedDict):
    """What every connector is built from (secrets already unwrapped by the caller)."""

    account: str
    api_key: str
    api_secret: str
    key_type: str
    rest_url: str
    ws_url: str
    timeout_s: float
    recv_window_ms: int


def connector_class(venue: str) -> Connector:
    """Return the connector class for `venue` (case-insensitive)."""
    key = venue.strip().lower()
    if key not in CONNECTORS:
        raise ValueError(f"unknown venue {venue!r}; known: {', '.join(sorted(CONNECTORS))}")
    return CONNECTORS[key]


def build_exchange(
    venue: str,
    *,
    account: str,
    api_key: str,
    api_secret: str,
    rest_url: str,
    ws_url: str,
    key_type: str = "hmac",
    timeout_s: float = 5.0,
    recv_window_ms: int = 5000,
    use_ws_api: bool = True,
    learned_path: Path | None = None,
) -> Exchange:
    """Construct the connector for `venue`. `use_ws_api` is Binance's (REST only when False);
    `learned_path` is where BingX keeps what it learned of the account (§3.7)."""
    cls = connector_class(venue)
    common = _Common(
        account=account,
        api_key=api_key,
        api_secret=api_secret,
        key_type=key_type,
        rest_url=rest_url,
        ws_url=ws_url,
        timeout_s=timeout_s,
        recv_window_ms=recv_window_ms,
    )
    if cls is BinanceExchange:
        return BinanceExchange(**common, use_ws_api=use_ws_api)
    if cls is BingxExchange:
        return BingxExchange(**common, learned_path=learned_path)
    return MexcExchange(**common)
