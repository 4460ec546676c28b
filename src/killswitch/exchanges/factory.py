"""Build a venue connector from its venue name: one typed constructor call per venue."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Unpack

from killswitch.exchanges.base import Exchange
from killswitch.exchanges.binance import BinanceExchange
from killswitch.exchanges.bingx import BingxExchange
from killswitch.exchanges.connector import ConnectorArgs
from killswitch.exchanges.mexc import MexcExchange

Connector = type[BinanceExchange] | type[MexcExchange] | type[BingxExchange]

CONNECTORS: dict[str, Connector] = {
    "binance": BinanceExchange,
    "mexc": MexcExchange,
    "bingx": BingxExchange,
}


def connector_class(venue: str) -> Connector:
    """Return the connector class for `venue` (case-insensitive)."""
    key = venue.strip().lower()
    if key not in CONNECTORS:
        raise ValueError(f"unknown venue {venue!r}; known: {', '.join(sorted(CONNECTORS))}")
    return CONNECTORS[key]


def build_exchange(
    venue: str,
    *,
    use_ws_api: bool = True,
    learned_path: Path | None = None,
    listen_key_path: Path | None = None,
    symbols: Sequence[str] = (),
    **args: Unpack[ConnectorArgs],
) -> Exchange:
    """Construct the connector for `venue` from what every connector takes (`ConnectorArgs`).
    `use_ws_api` is Binance's (REST only when False); `learned_path` is where BingX keeps what
    it learned of the account (§3.7); `listen_key_path` is where MEXC keeps the listenKey it
    made, for the next process to reuse (§2.4: 60 per UID); `symbols`, the account's configured
    ones, are what MEXC checks its read without a symbol against (§2.3)."""
    cls = connector_class(venue)
    if cls is BinanceExchange:
        return BinanceExchange(**args, use_ws_api=use_ws_api)
    if cls is BingxExchange:
        return BingxExchange(**args, learned_path=learned_path)
    return MexcExchange(**args, symbols_hint=symbols, listen_key_path=listen_key_path)
