"""Review 30, item 8: the per-IP budgets were keyed by the REST base URL, not by our IP.

Binance counts REQUEST_WEIGHT per client IP and lists api, api1..api4 and api-gcp as
interchangeable hosts (reference §1.1, §1.6), and `rest_url` is set per account: two accounts
on api.binance.com and api1.binance.com from one host got two 6,000/min budgets, and could
earn a 429 (then a 418) together. Now a named host is keyed by venue and registrable domain
(binance.com); an IP-literal host keeps its URL, so simulators on 127.0.0.1:port stay apart.
"""

from __future__ import annotations

import pytest

from killswitch.exchanges.binance import BinanceExchange
from killswitch.exchanges.bingx import BingxExchange
from killswitch.exchanges.connector import ip_scope_of
from killswitch.exchanges.mexc import MexcExchange

WS = "wss://ws-api.binance.com/ws-api/v3"


def binance(account: str, rest_url: str) -> BinanceExchange:
    return BinanceExchange(
        account=account, api_key=f"key-{account}", api_secret="s", rest_url=rest_url, ws_url=WS
    )


async def test_two_binance_hosts_behind_one_ip_spend_one_weight_budget() -> None:
    a = binance("a", "https://api.binance.com")
    b = binance("b", "https://api1.binance.com/")
    try:
        assert a.budget is b.budget
    finally:
        await a.close()
        await b.close()


async def test_bingx_and_mexc_accounts_on_one_domain_share_their_ip_budgets() -> None:
    x = BingxExchange(
        account="x",
        api_key="kx",
        api_secret="s",
        rest_url="https://open-api.bingx.com",
        ws_url="wss://open-api-ws.bingx.com/market",
    )
    y = BingxExchange(
        account="y",
        api_key="ky",
        api_secret="s",
        rest_url="https://OPEN-API.bingx.com:443",
        ws_url="wss://open-api-ws.bingx.com/market",
    )
    m = MexcExchange(
        account="m",
        api_key="km",
        api_secret="s",
        rest_url="https://api.mexc.com",
        ws_url="wss://wbs-api.mexc.com/ws",
    )
    n = MexcExchange(
        account="n",
        api_key="kn",
        api_secret="s",
        rest_url="https://www.mexc.com",
        ws_url="wss://wbs-api.mexc.com/ws",
    )
    try:
        assert all(x.ip_budgets[p] is y.ip_budgets[p] for p in x.ip_budgets)
        assert m.endpoint_budgets is n.endpoint_budgets
    finally:
        for ex in (x, y, m, n):
            await ex.close()


@pytest.mark.parametrize(
    ("venue", "url", "scope"),
    [
        ("binance", "https://api.binance.com", "binance binance.com"),
        ("binance", "https://api-gcp.binance.com/", "binance binance.com"),
        ("binance", "https://testnet.binance.vision", "binance binance.vision"),
        ("bingx", "https://open-api.bingx.io", "bingx bingx.io"),
        ("mexc", "https://api.mexc.co.uk", "mexc mexc.co.uk"),
        # IP literals and bare names: keyed by the URL, as before (one sim, one budget).
        ("binance", "http://127.0.0.1:8801", "http://127.0.0.1:8801"),
        ("binance", "http://127.0.0.1:8802/", "http://127.0.0.1:8802"),
        ("bingx", "http://[::1]:9000", "http://[::1]:9000"),
        ("mexc", "http://localhost:9000", "http://localhost:9000"),
    ],
)
def test_ip_scope_is_the_venue_and_registrable_domain_of_a_named_host(
    venue: str, url: str, scope: str
) -> None:
    assert ip_scope_of(venue, url.rstrip("/")) == scope


def test_the_same_domain_on_two_venues_is_two_scopes() -> None:
    assert ip_scope_of("binance", "https://api.example.com") != ip_scope_of(
        "mexc", "https://api.example.com"
    )
