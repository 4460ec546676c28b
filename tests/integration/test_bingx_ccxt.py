"""An unmodified ccxt client against the BingX simulator: load_markets with default options
(wallets capital config, USDT-M swap contracts, coin-M contracts, spot symbols; no hand-set
markets), then place, list and cancel, with only its URLs changed."""

from __future__ import annotations

import aiohttp
import ccxt.async_support as ccxt
import pytest

from killswitch.sim.bingx import CAPITAL_CONFIG, CSWAP_CONTRACTS, SWAP_CONTRACTS
from tests.fixtures.bingx import ACCOUNT_KEYS, bingx_venue, bx_call
from tests.fixtures.ccxt_urls import point_at


@pytest.mark.parametrize("variant", [None, "strictest", "most_permissive"])
async def test_ccxt_loads_markets_places_lists_and_cancels_on_the_bingx_sim(
    variant: str | None,
) -> None:
    # ccxt raises on 100204 "No data": its reading of an empty read is an empty list, so the
    # strictest variant's `empty_read = "no_data"` is left out here (the daemon reads both).
    async with bingx_venue(1, variant=variant, empty_read="empty") as (sim, _):
        api_key, secret = ACCOUNT_KEYS["bx0"]
        exchange = ccxt.bingx({"apiKey": api_key, "secret": secret})
        point_at(exchange, sim.base_url)
        try:
            markets = await exchange.load_markets()
            assert {"BTC/USDT", "ETH/USDT"} <= set(markets)
            btc = markets["BTC/USDT"]
            assert (btc["id"], btc["spot"], btc["active"]) == ("BTC-USDT", True, True)
            assert {"BTC", "USDT"} <= set(exchange.currencies)  # wallets capital/config/getall
            placed = await exchange.create_order("BTC/USDT", "limit", "buy", 1, 100)
            other = await exchange.create_order("ETH/USDT", "limit", "sell", 2, 3000)
            book = sim.book(sim.accounts["bx0"])
            assert {o.order_id for o in book.open_orders(None)} == {placed["id"], other["id"]}
            listed = await exchange.fetch_open_orders("BTC/USDT")
            # ccxt 4.5.90 maps RUNNING to open but passes WORKING through unread
            shown = "open" if sim.behaviour.open_status == "NEW" else "WORKING"
            assert [(o["id"], o["symbol"], o["status"]) for o in listed] == [
                (placed["id"], "BTC/USDT", shown)
            ]
            cancelled = await exchange.cancel_order(placed["id"], "BTC/USDT")
            assert (cancelled["id"], cancelled["status"]) == (placed["id"], "canceled")
            assert [o.order_id for o in book.open_orders(None)] == [other["id"]]
            swept = await exchange.cancel_all_orders("ETH/USDT")
            assert [(o["id"], o["status"]) for o in swept] == [(other["id"], "canceled")]
            # No symbol: every open order of the account. Two openOrders calls in all, so
            # ccxt's own pacing never meets the strict 2/s per-IP limit.
            assert await exchange.fetch_open_orders() == []
            assert book.open_orders(None) == []
        finally:
            await exchange.close()
        assert sim.counters["signature_failures"] == 0
        assert sim.earned_throttles() == {}
        paths = {entry.get("path") for entry in sim.request_log}
        assert {
            "/openApi/wallets/v1/capital/config/getall",
            "/openApi/swap/v2/quote/contracts",
            "/openApi/cswap/v1/market/contracts",
            "/openApi/spot/v1/common/symbols",
        } <= paths


async def test_the_capital_config_is_signed_and_lists_the_coins_of_the_listed_symbols() -> None:
    async with (
        bingx_venue(1, symbols=["BTC-USDT", "ETH-BTC"]) as (sim, _),
        aiohttp.ClientSession() as session,
    ):
        status, _, body = await bx_call(session, sim, "GET", CAPITAL_CONFIG)
        assert (status, body["code"]) == (200, 0)
        assert [coin["coin"] for coin in body["data"]] == ["BTC", "USDT", "ETH"]
        assert body["data"][0]["networkList"][0]["network"] == "BTC"
        forged = "timestamp=1&signature=" + "0" * 64
        status, _, body = await bx_call(session, sim, "GET", CAPITAL_CONFIG, query=forged)
        assert (status, body["code"]) == (401, 100001)
        for path in (SWAP_CONTRACTS, CSWAP_CONTRACTS):  # public: no key, no signature
            async with session.get(f"{sim.base_url}{path}") as resp:
                assert (resp.status, (await resp.json())["data"]) == (200, [])
