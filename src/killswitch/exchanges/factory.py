"""Build a venue connector from its venue name, importing only that venue's module."""

from __future__ import annotations

import importlib
from typing import Any

from killswitch.exchanges.base import Exchange

# Imported lazily: a broken or missing venue module fails only the accounts on that venue.
CONNECTORS: dict[str, tuple[str, str]] = {
    "binance": ("killswitch.exchanges.binance", "BinanceExchange"),
    "mexc": ("killswitch.exchanges.mexc", "MexcExchange"),
    "bingx": ("killswitch.exchanges.bingx", "BingXExchange"),
}


def connector_class(venue: str) -> type[Any]:
    """Return the connector class for `venue` (case-insensitive)."""
    key = venue.strip().lower()
    if key not in CONNECTORS:
        raise ValueError(f"unknown venue {venue!r}; known: {', '.join(sorted(CONNECTORS))}")
    module_name, class_name = CONNECTORS[key]
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name, None)
    if cls is None:
        # Accept the other capitalisation of a multi-word venue (BingX vs Bingx).
        wanted = class_name.lower()
        cls = next(
            (v for k, v in vars(module).items() if k.lower() == wanted and isinstance(v, type)),
            None,
        )
    if cls is None:
        raise ImportError(f"{module_name} has no {class_name}")
    return cls


def build_exchange(venue: str, **kwargs: Any) -> Exchange:
    """Construct the connector for `venue` with the connector's keyword arguments."""
    exchange = connector_class(venue)(**kwargs)
    if not isinstance(exchange, Exchange):
        raise TypeError(f"{type(exchange).__name__} does not implement the Exchange protocol")
    return exchange
