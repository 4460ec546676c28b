"""build_exchange: venue name to connector, one typed constructor per venue."""

from __future__ import annotations

from pathlib import Path

import pytest

from killswitch.exchanges.binance import BinanceExchange
from killswitch.exchanges.bingx import BingxExchange
from killswitch.exchanges.factory import CONNECTORS, build_exchange, connector_class
from killswitch.exchanges.mexc import MexcExchange
from killswitch.model import VENUES

URLS = {"rest_url": "http://127.0.0.1:9", "ws_url": "ws://127.0.0.1:9"}


def test_unknown_venue_is_refused_with_the_known_names() -> None:
    with pytest.raises(ValueError, match="unknown venue 'kraken'; known: binance, bingx, mexc"):
        build_exchange("kraken", account="a", api_key="k", api_secret="s", **URLS)


def test_every_venue_of_the_model_has_a_connector_entry() -> None:
    assert set(CONNECTORS) == set(VENUES)


def test_venue_name_is_case_insensitive() -> None:
    assert connector_class(" MEXC ") is MexcExchange


@pytest.mark.parametrize(
    ("venue", "cls"),
    [("binance", BinanceExchange), ("mexc", MexcExchange), ("bingx", BingxExchange)],
)
def test_each_venue_builds_its_own_connector(venue: str, cls: type) -> None:
    exchange = build_exchange(venue, account="a", api_key="k", api_secret="s", **URLS)
    assert type(exchange) is cls
    assert (exchange.venue, exchange.account) == (venue, "a")


def test_bingx_keeps_what_it_learned_in_the_file_it_is_given(tmp_path: Path) -> None:
    path = tmp_path / "learned-bingx-a.json"
    first = build_exchange(
        "bingx", account="a", api_key="k", api_secret="s", learned_path=path, **URLS
    )
    assert isinstance(first, BingxExchange)
    first.learned.learn("cancel_all_covers_lists", False)
    again = build_exchange(
        "bingx", account="a", api_key="k", api_secret="s", learned_path=path, **URLS
    )
    assert isinstance(again, BingxExchange)
    assert again.learned_paths()["cancel_all_covers_lists"] is False


def test_mexc_knows_the_configured_symbols_from_the_start() -> None:
    # What its read without a symbol is checked against (reference §2.3: unverified).
    exchange = build_exchange(
        "mexc", account="a", api_key="k", api_secret="s", symbols=["BTCUSDT"], **URLS
    )
    assert isinstance(exchange, MexcExchange)
    assert exchange.known_symbols == {"BTCUSDT"}
