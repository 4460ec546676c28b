"""An unmodified ccxt client against the MEXC simulator: load_markets with default options
(spot exchangeInfo, contract detail, capital config), then place, list and cancel."""

from __future__ import annotations

import ccxt.async_support as ccxt

from tests.fixtures.ccxt_urls import point_at
from tests.fixtures.mexc import mexc_sim


async def test_ccxt_loads_markets_places_lists_and_cancels_on_the_mexc_sim() -> None:
    async with mexc_sim(1) as (sim, _):
        acct = sim.accounts["acct0"]
        exchange = ccxt.mexc({"apiKey": acct.api_key, "secret": acct.secret})
        point_at(exchange, sim.base_url)
        try:
            markets = await exchange.load_markets()
            assert {"BTC/USDT", "ETH/USDT"} <= set(markets)
            assert markets["BTC/USDT"]["id"] == "BTCUSDT"
            placed = await exchange.create_order("BTC/USDT", "limit", "buy", 1, 100)
            listed = await exchange.fetch_open_orders("BTC/USDT")
            assert [o["id"] for o in listed] == [placed["id"]]
            cancelled = await exchange.cancel_order(placed["id"], "BTC/USDT")
            assert cancelled["status"] == "canceled"
            assert await exchange.fetch_open_orders("BTC/USDT") == []
        finally:
            await exchange.close()
        paths = {entry.get("path") for entry in sim.request_log}
        assert {"/api/v3/exchangeInfo", "/api/v1/contract/detail"} <= paths
