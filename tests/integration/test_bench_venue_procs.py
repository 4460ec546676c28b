"""The time-to-flat bench's venues: one venue served by a child process, driven over a pipe, and
the simulator's request log stamps (arrival, handler start, answer) the bench reads."""

from __future__ import annotations

import sys
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from venue_procs import Venues  # noqa: E402

MEXC = """
host = "127.0.0.1"
seed = 7

[venues.mexc]
latency_ms = 5

[[venues.mexc.accounts]]
name = "mm-1"
api_key = "mx0vbenchkey"
secret = "0123456789abcdef0123456789abcdef"
"""


async def _drive(venues: Venues) -> None:
    venue = venues.venues["mexc"]
    rows = venue.seed_generated("mm-1", ["AAAUSDT", "BBBUSDT"], 3, 0.0, "t_")
    assert sorted(rows) == [("AAAUSDT", None)] * 3 + [("BBBUSDT", None)] * 3
    assert venue.open_counts("mm-1") == (6, 0)
    venue.clear_log()
    async with aiohttp.ClientSession() as session:
        headers = {"X-MEXC-APIKEY": "mx0vbenchkey"}
        async with session.get(f"{venue.base_url}/api/v3/openOrders", headers=headers) as resp:
            await resp.read()
    (entry,) = venue.log()
    assert entry["account"] == "mm-1"
    # stamped on arrival, then when the handler started (after the latency), then answered
    assert entry["mono"] <= entry["start"] <= entry["answered"]
    assert venue.pop_counter("no such counter") == 0
    venue.reset_limits()
    assert venue.describe()["rest_url"] == venue.base_url


async def test_a_venue_in_its_own_process() -> None:
    venues = Venues({"mexc": MEXC}, in_process=False)
    await venues.start()
    try:
        await _drive(venues)
    finally:
        await venues.stop()


async def test_a_venue_in_this_process() -> None:
    venues = Venues({"mexc": MEXC}, in_process=True)
    await venues.start()
    try:
        await _drive(venues)
    finally:
        await venues.stop()


BINANCE = """
host = "127.0.0.1"

[venues.binance]
latency_ms = 5

[[venues.binance.accounts]]
name = "mm-1"
api_key = "key-1"
secret = "secret-1"
"""


async def test_a_ws_api_answer_is_stamped_when_it_leaves() -> None:
    venues = Venues({"binance": BINANCE}, in_process=False)
    await venues.start()
    try:
        venue = venues.venues["binance"]
        venue.clear_log()
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(venue.describe()["ws_api_url"]) as ws,
        ):
            await ws.send_json({"id": 1, "method": "ping"})
            answer = await ws.receive_json()
        assert (answer["id"], answer["status"]) == (1, 200)
        (entry,) = [e for e in venue.log() if e["method"] == "WS"]
        assert entry["path"] == "ping"
        assert entry["mono"] <= entry["start"] <= entry["answered"]
    finally:
        await venues.stop()
