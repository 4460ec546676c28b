"""An unmodified ccxt client against the Binance simulator: load_markets with default options
(no hand-set markets), then place, list and cancel, with only its URLs changed."""

from __future__ import annotations

import ccxt.async_support as ccxt

from tests.fixtures.binance import binance_venue
from tests.fixtures.ccxt_urls import point_at


async def test_ccxt_loads_markets_places_lists_and_cancels_on_the_binance_sim() -> None:
    async with binance_venue(1) as venue:
        acct = venue.accounts["acct0"]
        exchange = ccxt.binance({"apiKey": acct.api_key, "secret": acct.api_secret})
        point_at(exchange, venue.sim.base_url)
        try:
            markets = await exchange.load_markets()
            assert {"BTC/USDT", "ETH/USDT", "ETH/BTC"} <= set(markets)
            assert markets["BTC/USDT"]["id"] == "BTCUSDT"
            assert "BTC" in exchange.currencies  # from sapi/v1/capital/config/getall
            placed = await exchange.create_order("BTC/USDT", "limit", "buy", 1, 100)
            other = await exchange.create_order("ETH/USDT", "limit", "sell", 2, 3000)
            assert placed["id"] == other["id"]  # numbered per symbol, as Binance does
            listed = await exchange.fetch_open_orders("BTC/USDT")
            assert [(o["id"], o["symbol"]) for o in listed] == [(placed["id"], "BTC/USDT")]
            cancelled = await exchange.cancel_order(placed["id"], "BTC/USDT")
            assert cancelled["status"] == "canceled"
            assert await exchange.fetch_open_orders("BTC/USDT") == []
            (left,) = await exchange.fetch_open_orders("ETH/USDT")
            assert left["id"] == other["id"]
        finally:
            await exchange.close()
        paths = {entry.get("path") for entry in venue.sim.request_log}
        assert {
            "/api/v3/exchangeInfo",
            "/sapi/v1/capital/config/getall",
            "/fapi/v1/exchangeInfo",
            "/dapi/v1/exchangeInfo",
        } <= paths
