"""The sim config: what a valid file builds, and how each mistake is reported by field name."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from killswitch.sim.faults import FaultKind
from killswitch.sim.server import (
    SimCluster,
    SimConfigError,
    build_venue,
    field_path,
    load_config,
    parse_config,
    seed_venue,
)
from tests.fixtures.sim import TinySim

EXAMPLE = Path(__file__).parents[2] / "src" / "killswitch" / "sim" / "example.toml"

TINY = """
host = "127.0.0.1"
seed = 5

[venues.tiny]
dialect = "tests.fixtures.sim:TinySim"
latency_ms = 30
jitter_ms = 8
rate_limit_scale = 2.5
symbols = ["BTCUSDT"]

[[venues.tiny.accounts]]
name = "a"
api_key = "key-a"
secret = "secret-a"

[[venues.tiny.accounts]]
name = "b"
api_key = "key-b"
secret = "secret-b"
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(SimConfigError) as info:
        SimCluster.from_toml(text, "test.toml")
    assert str(info.value).startswith("test.toml: ")
    return info.value.errors


def test_a_venue_gets_its_settings_accounts_and_latency_fault() -> None:
    config = parse_config(TINY)
    sim = build_venue("tiny", config.venues["tiny"], config)
    assert isinstance(sim, TinySim)
    assert sim.settings.host == "127.0.0.1"
    assert sim.settings.seed == 5
    assert sim.settings.rate_limit_scale == 2.5
    assert sim.settings.symbols == ["BTCUSDT"]
    assert sorted(sim.accounts) == ["a", "b"]
    assert sim.account_for_key("key-b") is sim.accounts["b"]
    [latency] = sim.faults.faults
    assert latency.kind is FaultKind.LATENCY
    assert (latency.latency_ms, latency.jitter_ms) == (30, 8)


def test_seed_orders_lists_and_generators_land_in_their_accounts() -> None:
    text = (
        TINY
        + """
[[venues.tiny.orders]]
account = "a"
symbol = "BTCUSDT"
side = "SELL"
price = "64250.5"
quantity = "0.015"
client_order_id = "strat7-1"

[[venues.tiny.lists]]
account = "b"
list_client_order_id = "L1"
legs = [{ symbol = "ETHUSDT", price = "4000" }, { symbol = "ETHUSDT", price = "3000" }]

[[venues.tiny.generate]]
account = "b"
symbols = ["SOLUSDT", "XRPUSDT"]
per_symbol = 6
list_fraction = 0.34
client_id_prefix = "gen-"
"""
    )
    config = parse_config(text)
    sim = build_venue("tiny", config.venues["tiny"], config)
    assert seed_venue(sim, config.venues["tiny"]) == (1 + 8, 1 + 2)
    [order] = sim.book(sim.accounts["a"]).open_orders()
    assert (order.symbol, order.side, str(order.price), str(order.orig_qty)) == (
        "BTCUSDT",
        "SELL",
        "64250.5",
        "0.015",
    )
    assert order.client_order_id == "strat7-1"
    b = sim.book(sim.accounts["b"])
    assert len(b.open_orders()) == 2 + 12
    assert {lst.list_client_order_id for lst in b.open_lists()} >= {"L1"}
    assert sum(o.client_order_id.startswith("gen-") for o in b.open_orders()) == 12


def test_the_same_seed_generates_the_same_workload() -> None:
    text = TINY + (
        '[[venues.tiny.generate]]\naccount = "a"\nsymbols = ["X"]\nper_symbol = 20\n'
        "list_fraction = 0.5\n"
    )

    def prices() -> list[str]:
        config = parse_config(text)
        sim = build_venue("tiny", config.venues["tiny"], config)
        seed_venue(sim, config.venues["tiny"])
        return [str(o.price) for o in sim.book(sim.accounts["a"]).open_orders()]

    assert prices() == prices()


def test_describe_lists_urls_and_accounts_without_secrets() -> None:
    cluster = SimCluster.from_toml(TINY)
    [info] = cluster.describe()
    assert info["venue"] == "tiny"
    assert info["dialect"] == "tiny"
    assert info["accounts"] == [
        {"name": "a", "api_key": "key-a", "key_type": "hmac"},
        {"name": "b", "api_key": "key-b", "key_type": "hmac"},
    ]
    assert "secret-a" not in repr(info)
    assert sorted(cluster.secrets()) == ["secret-a", "secret-b"]


async def test_a_cluster_serves_and_stops_every_venue() -> None:
    text = TINY + TINY.split('host = "127.0.0.1"\nseed = 5\n')[1].replace("tiny", "tiny2")
    async with SimCluster.from_toml(text) as cluster:
        urls = [v["rest_url"] for v in cluster.describe()]
        assert len(set(urls)) == 2
        assert all(u.startswith("http://127.0.0.1:") for u in urls)
    await cluster.stop()  # twice is fine


def test_the_example_file_is_valid_and_names_three_venues_with_two_accounts_each() -> None:
    config = load_config(EXAMPLE)
    assert list(config.venues) == ["binance", "mexc", "bingx"]
    for venue in config.venues.values():
        assert len(venue.accounts) == 2
        assert venue.latency_ms == 30
        assert venue.jitter_ms > 0
        assert venue.orders or venue.generate
    assert config.venues["binance"].lists
    assert config.venues["bingx"].lists
    assert {a.key_type for a in config.venues["binance"].accounts} == {"hmac", "ed25519"}


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ((), ""),
        (("venues", "binance", "accounts", 0, "secret"), "venues.binance.accounts[0].secret"),
        (("venues", "x", "legs", 1), "venues.x.legs[1]"),
    ],
)
def test_field_paths_read_like_toml(path: tuple[int | str, ...], text: str) -> None:
    assert field_path(path) == (text or "(file)")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("latency_ms = 30", "latency_ms = -1"), "venues.tiny.latency_ms:"),
        (("latency_ms = 30", "latncy_ms = 30"), "venues.tiny.latncy_ms:"),
        (("rate_limit_scale = 2.5", "rate_limit_scale = 0"), "venues.tiny.rate_limit_scale:"),
        (('api_key = "key-b"', ""), "venues.tiny.accounts[1].api_key:"),
        (('api_key = "key-b"', 'api_key = "key-a"'), "venues.tiny.accounts:"),
        (('secret = "secret-b"', 'secret = "secret-b"\nkey_type = "rsa"'), "accounts[1].key_type"),
        (
            ('secret = "secret-b"', 'secret = "not a key"\nkey_type = "ed25519"'),
            "venues.tiny.accounts[1].secret: an Ed25519 public key",
        ),
        (
            ('dialect = "tests.fixtures.sim:TinySim"', 'dialect = "kraken"'),
            "venues.tiny: unknown dialect 'kraken'",
        ),
        (
            ('dialect = "tests.fixtures.sim:TinySim"', 'dialect = "no.such.module:Sim"'),
            "venues.tiny.dialect: cannot import",
        ),
        (
            ('dialect = "tests.fixtures.sim:TinySim"', 'dialect = "tests.fixtures.sim:running"'),
            "is not a SimVenue subclass",
        ),
        (("symbols = [", "options = { nonsense = 1 }\nsymbols = ["), "venues.tiny: TinySim"),
        (('host = "127.0.0.1"', "host = "), "not valid TOML"),
    ],
)
def test_each_mistake_is_reported_with_its_field(change: tuple[str, str], expected: str) -> None:
    old, new = change
    assert old in TINY
    errors = errors_of(TINY.replace(old, new, 1))
    assert any(expected in line for line in errors), errors


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('[[venues.tiny.orders]]\nsymbol = "X"\n', "venues.tiny: orders[0].account: required"),
        (
            '[[venues.tiny.orders]]\naccount = "zz"\nsymbol = "X"\n',
            "orders[0].account: no account 'zz'",
        ),
        ('[[venues.tiny.orders]]\naccount = "a"\n', "venues.tiny.orders[0].symbol:"),
        (
            '[[venues.tiny.orders]]\naccount = "a"\nsymbol = "X"\nprice = "-1"\n',
            "venues.tiny.orders[0].price:",
        ),
        (
            '[[venues.tiny.lists]]\naccount = "a"\nlegs = [{ symbol = "X" }]\n',
            "venues.tiny.lists[0].legs:",
        ),
        (
            '[[venues.tiny.lists]]\naccount = "a"\nlegs = [{ symbol = "X" }, { symbol = "Y" }]\n',
            "same symbol",
        ),
        ('[[venues.tiny.generate]]\naccount = "a"\nsymbols = []\n', "generate[0].symbols:"),
        ('[[venues.tiny.faults]]\nkind = "meteor"\n', "venues.tiny.faults[0].kind:"),
        ('[[venues.tiny.faults]]\nkind = "stall"\naccount = "q"\n', "faults[0].account"),
    ],
)
def test_seed_and_fault_mistakes_name_the_entry(extra: str, expected: str) -> None:
    errors = errors_of(TINY + extra)
    assert any(expected in line for line in errors), errors


def test_a_file_without_venues_is_refused() -> None:
    assert any(line.startswith("venues:") for line in errors_of('host = "127.0.0.1"\n'))


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(SimConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


STORM = """
host = "127.0.0.1"

[venues.binance]
latency_ms = 30

[[venues.binance.accounts]]
name = "a"
api_key = "key-a"
secret = "secret-a"

[[venues.binance.faults]]
kind = "rate_limit"
retry_after_s = 5
count = 1
"""


async def test_requests_in_flight_when_a_429_leaves_are_no_strikes_in_a_served_sim() -> None:
    """Review 39: a sim served from its TOML banned (418) a client for the requests it had in
    flight when a 429 left, all sent within a millisecond before any 429 came back: every one
    served inside the wait was a strike. A request served within the latency, plus the grace
    (`ban_grace_s`, 50 ms unless set), after the 429 was sent before it: refused, no strike."""
    cluster = SimCluster.from_toml(STORM, "storm.toml")
    await cluster.start()
    try:
        sim = cluster.venues["binance"]
        async with aiohttp.ClientSession() as session:

            async def ping() -> int:
                async with session.get(f"{sim.base_url}/api/v3/ping") as resp:
                    return resp.status

            statuses = await asyncio.gather(*(ping() for _ in range(5)))
            assert statuses == [429] * 5
            assert [t.strikes for t in sim.bans.values()] == [0]
            await asyncio.sleep(0.2)  # the client has the 429 now: sending is ignoring it
            assert await ping() == 429
            assert [t.strikes for t in sim.bans.values()] == [1]
        assert not [k for k in sim.counters if "418" in k]
    finally:
        await cluster.stop()
