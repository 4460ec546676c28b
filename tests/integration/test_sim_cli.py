"""`killswitch sim --config example.toml` as a real subprocess, used as an operator would: wait
for its JSON lines, then place and list orders with nothing but aiohttp and each venue's
documented signing (computed here, not with the project's code), then SIGTERM."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import signal
import sys
import time
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from yarl import URL

EXAMPLE = Path(__file__).parents[2] / "src" / "killswitch" / "sim" / "example.toml"
KILLSWITCH = Path(sys.executable).parent / "killswitch"
# The throwaway Ed25519 private key quoted in the example file's comment for Binance mm-2.
BINANCE_ED25519_PRIVATE = "A5oIUTUTzR+WSVJKdmuuIZROweN9yrHFjiiy02yZuOc="


@dataclass
class Running:
    """The `killswitch sim` process, its stderr lines so far, and the task collecting them."""

    proc: asyncio.subprocess.Process
    stderr: list[bytes]
    drainer: asyncio.Task[None]

    async def exit_code(self) -> int:
        code = await self.proc.wait()
        await self.drainer
        return code


@dataclass
class Sim(Running):
    venues: dict[str, dict[str, Any]]


async def start_sim(config: Path, *argv: str) -> Running:
    proc = await asyncio.create_subprocess_exec(
        str(KILLSWITCH),
        "sim",
        "--config",
        str(config),
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stderr: list[bytes] = []

    async def drain() -> None:
        assert proc.stderr is not None
        async for line in proc.stderr:
            stderr.append(line)

    return Running(proc, stderr, asyncio.get_running_loop().create_task(drain()))


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    running = await start_sim(EXAMPLE)
    proc = running.proc
    try:
        venues = {}
        assert proc.stdout is not None
        async with asyncio.timeout(60):
            for _ in range(3):
                line = await proc.stdout.readline()
                assert line, b"".join(running.stderr).decode()
                info = orjson.loads(line)
                venues[info["venue"]] = info
        yield Sim(proc, running.stderr, running.drainer, venues)
    finally:
        if proc.returncode is None:
            proc.kill()
        await running.exit_code()


def example() -> dict[str, Any]:
    return tomllib.loads(EXAMPLE.read_text())


def account(venue: str, name: str) -> dict[str, str]:
    accounts: list[dict[str, str]] = example()["venues"][venue]["accounts"]
    return next(a for a in accounts if a["name"] == name)


def hmac_hex(secret: str, payload: str) -> str:
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def query(params: list[tuple[str, str]]) -> str:
    return "&".join(f"{k}={quote(v, safe='')}" for k, v in params)


def now_ms() -> str:
    return str(int(time.time() * 1000))


async def call(
    http: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str]
) -> tuple[int, Any]:
    async with http.request(method, URL(url, encoded=True), headers=headers) as resp:
        return resp.status, orjson.loads(await resp.read())


async def binance(
    http: aiohttp.ClientSession,
    sim: Sim,
    method: str,
    path: str,
    params: list[tuple[str, str]],
    *,
    name: str = "mm-1",
) -> tuple[int, Any]:
    acct = account("binance", name)
    q = query([*params, ("timestamp", now_ms())])
    if acct.get("key_type") == "ed25519":
        key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(BINANCE_ED25519_PRIVATE))
        signature = quote(base64.b64encode(key.sign(q.encode())).decode(), safe="")
    else:
        signature = hmac_hex(acct["secret"], q)  # query string then (empty) body
    url = f"{sim.venues['binance']['rest_url']}{path}?{q}&signature={signature}"
    return await call(http, method, url, {"X-MBX-APIKEY": acct["api_key"]})


async def mexc(
    http: aiohttp.ClientSession, sim: Sim, method: str, path: str, params: list[tuple[str, str]]
) -> tuple[int, Any]:
    acct = account("mexc", "mm-1")
    q = query([*params, ("timestamp", now_ms())])
    url = f"{sim.venues['mexc']['rest_url']}{path}?{q}&signature={hmac_hex(acct['secret'], q)}"
    headers = {"X-MEXC-APIKEY": acct["api_key"], "Content-Type": "application/json"}
    return await call(http, method, url, headers)


async def bingx(
    http: aiohttp.ClientSession, sim: Sim, method: str, path: str, params: list[tuple[str, str]]
) -> tuple[int, Any]:
    acct = account("bingx", "mm-1")
    params = [*params, ("timestamp", now_ms())]
    # BingX signs the values before URL-encoding, in the order sent.
    signature = hmac_hex(acct["secret"], "&".join(f"{k}={v}" for k, v in params))
    url = f"{sim.venues['bingx']['rest_url']}{path}?{query(params)}&signature={signature}"
    return await call(http, method, url, {"X-BX-APIKEY": acct["api_key"]})


async def test_the_example_serves_three_venues_and_describes_them(sim: Sim) -> None:
    assert sorted(sim.venues) == ["binance", "bingx", "mexc"]
    for name, info in sim.venues.items():
        assert info["rest_url"].startswith("http://127.0.0.1:")
        assert info["ws_url"].startswith("ws://127.0.0.1:")
        expected = [
            {"name": a["name"], "api_key": a["api_key"], "key_type": a.get("key_type", "hmac")}
            for a in example()["venues"][name]["accounts"]
        ]
        assert info["accounts"] == expected
        assert all("secret" not in a for a in info["accounts"])


async def test_orders_are_placed_and_listed_with_plain_http_and_documented_signing(
    sim: Sim,
) -> None:
    async with aiohttp.ClientSession() as http:
        status, placed = await binance(
            http,
            sim,
            "POST",
            "/api/v3/order",
            [
                ("symbol", "BTCUSDT"),
                ("side", "BUY"),
                ("type", "LIMIT"),
                ("timeInForce", "GTC"),
                ("quantity", "0.01"),
                ("price", "60000"),
                ("newClientOrderId", "cli-test-1"),
            ],
        )
        assert status == 200, placed
        assert isinstance(placed["orderId"], int)
        status, listed = await binance(
            http, sim, "GET", "/api/v3/openOrders", [("symbol", "BTCUSDT")]
        )
        assert status == 200, listed
        client_ids = {o["clientOrderId"] for o in listed}
        assert {"cli-test-1", "strat7-bid-1"} <= client_ids
        assert placed["orderId"] in {o["orderId"] for o in listed}
        status, lists = await binance(http, sim, "GET", "/api/v3/openOrderList", [])
        assert status == 200, lists
        assert [lst["listClientOrderId"] for lst in lists] == ["strat7-oco-1"]

        status, placed = await mexc(
            http,
            sim,
            "POST",
            "/api/v3/order",
            [
                ("symbol", "MXUSDT"),
                ("side", "SELL"),
                ("type", "LIMIT"),
                ("quantity", "10"),
                ("price", "3.1"),
                ("newClientOrderId", "cli-test-2"),
            ],
        )
        assert status == 200, placed
        assert isinstance(placed["orderId"], str)
        status, listed = await mexc(http, sim, "GET", "/api/v3/openOrders", [("symbol", "MXUSDT")])
        assert status == 200, listed
        assert {"cli-test-2", "strat7-mx-1"} <= {o["clientOrderId"] for o in listed}
        assert placed["orderId"] in {o["orderId"] for o in listed}

        status, placed = await bingx(
            http,
            sim,
            "POST",
            "/openApi/spot/v1/trade/order",
            [
                ("symbol", "BTC-USDT"),
                ("side", "BUY"),
                ("type", "LIMIT"),
                ("quantity", "0.001"),
                ("price", "60000"),
                ("newClientOrderId", "cli_test_3"),
            ],
        )
        assert status == 200, placed
        assert placed["code"] == 0, placed
        order_id = placed["data"]["orderId"]
        assert isinstance(order_id, int)
        assert len(str(order_id)) == 19
        status, listed = await bingx(
            http, sim, "GET", "/openApi/spot/v1/trade/openOrders", [("symbol", "BTC-USDT")]
        )
        assert status == 200, listed
        assert listed["code"] == 0, listed
        assert order_id in {o["orderId"] for o in listed["data"]["orders"]}
        assert len(listed["data"]["orders"]) == 2  # the seeded strat7_bx_1 and ours


async def test_the_example_ed25519_key_signs_binance_requests(sim: Sim) -> None:
    async with aiohttp.ClientSession() as http:
        status, listed = await binance(http, sim, "GET", "/api/v3/openOrders", [], name="mm-2")
        assert status == 200, listed
        assert len(listed) == 24  # the generated workload: 12 orders on each of two symbols
        assert all(o["clientOrderId"].startswith("desk2-") for o in listed)


async def test_a_bad_signature_is_refused_with_the_venue_error(sim: Sim) -> None:
    async with aiohttp.ClientSession() as http:
        url = f"{sim.venues['binance']['rest_url']}/api/v3/openOrders?timestamp={now_ms()}"
        status, body = await call(
            http,
            "GET",
            f"{url}&signature={'0' * 64}",
            {"X-MBX-APIKEY": account("binance", "mm-1")["api_key"]},
        )
        assert (status, body["code"]) == (400, -1022)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_a_stop_signal_shuts_it_down_cleanly(sim: Sim, signum: signal.Signals) -> None:
    sim.proc.send_signal(signum)
    async with asyncio.timeout(30):
        code = await sim.exit_code()
    assert code == 0
    assert any(b"sim stopped" in line for line in sim.stderr)
    assert sim.proc.stdout is not None
    assert await sim.proc.stdout.read() == b""  # stdout carries the JSON lines and nothing else


async def test_a_bad_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE.read_text().replace("latency_ms = 30", "latency_ms = -30", 1))
    running = await start_sim(bad)
    async with asyncio.timeout(30):
        code = await running.exit_code()
    assert code == 2
    assert f"{bad}: venues.binance.latency_ms:".encode() in b"".join(running.stderr)


async def test_secrets_never_reach_its_output(sim: Sim) -> None:
    sim.proc.send_signal(signal.SIGTERM)
    assert sim.proc.stdout is not None
    async with asyncio.timeout(30):
        await sim.exit_code()
    output = b"".join(sim.stderr) + orjson.dumps(sim.venues)
    for venue in example()["venues"].values():
        for acct in venue["accounts"]:
            assert acct["secret"].encode() not in output
