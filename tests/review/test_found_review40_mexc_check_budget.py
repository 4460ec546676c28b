"""Review 40: the check beside MEXC's read without a symbol read every known symbol by name on
every account-wide snapshot; where lists are refused (the read's own table takes one symbol)
that was one request per known symbol: 171 reads, 513 weight, for one snapshot of an account
with 170 symbols, past the endpoint's 500 per 10 s: 429s, then a 418 ("No ban"). And one
passing 404 on a list read made every later read one symbol per request, for good.

The check now adds at most `_KILL_CHECK_READS` requests to a kill's read (past that it proves
nothing flat: review 41) and `_CHECK_READS` to a background one, taking the known symbols in
turn; only MEXC's own "bad symbol" makes reads one symbol per request for good.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from aiohttp import web

from killswitch.exchanges.base import VenueError
from killswitch.exchanges.budget import Priority
from killswitch.exchanges.mexc.reads import _CHECK_READS, _KILL_CHECK_READS
from killswitch.sim import mexc as sim_mexc
from killswitch.sim.book import OrderSpec
from killswitch.sim.faults import Fault, FaultKind
from killswitch.sim.mexc import MexcSim
from tests.fixtures.mexc import mexc_sim

OPEN_ORDERS = "/api/v3/openOrders"
SYMBOLS = [f"C{i:03d}USDT" for i in range(170)]


def _sent(sim: MexcSim) -> int:
    return sim.counters[f"requests GET {OPEN_ORDERS}"]


async def test_one_passing_404_on_a_list_read_does_not_make_reads_one_symbol_for_good() -> None:
    async with mexc_sim(accounts=1) as (sim, connect):
        exchange = connect("acct0", symbols_hint=SYMBOLS[:10])
        await exchange.start()
        sim.seed(sim.accounts["acct0"], [OrderSpec(s) for s in SYMBOLS[:5]])
        sim.faults.add(
            Fault(FaultKind.ERROR_BEFORE, endpoint=OPEN_ORDERS, http_status=404, count=1)
        )
        # a probe list beside the reads by name; one of them (whichever came first) met the 404
        with contextlib.suppress(VenueError):
            await exchange._read_symbols(SYMBOLS[:5], Priority.KILL, probe=SYMBOLS[:5])
        await exchange._read_symbols(SYMBOLS[:5], Priority.KILL, probe=SYMBOLS[:5])
        before = _sent(sim)
        await exchange._read_symbols(SYMBOLS[:5], Priority.KILL)
        # the list: it showed orders on each of its five symbols (review 42)
        assert _sent(sim) - before == 1


@pytest.mark.parametrize("lists_refused", [False, True])
async def test_an_account_wide_snapshot_adds_a_bounded_check(
    monkeypatch: pytest.MonkeyPatch, lists_refused: bool
) -> None:
    original = MexcSim._open_orders

    async def one_symbol(
        self: MexcSim, request: web.Request, account: Any, params: dict[str, str]
    ) -> web.Response:
        if "," in params.get("symbol", ""):
            raise sim_mexc.MexcError(10007, "bad symbol")  # the read's own table: one symbol
        return await original(self, request, account, params)

    if lists_refused:
        monkeypatch.setattr(MexcSim, "_open_orders", one_symbol)
    async with mexc_sim(accounts=1, symbols=SYMBOLS) as (sim, connect):
        exchange = connect("acct0", symbols_hint=SYMBOLS)
        await exchange.start()
        sim.seed(sim.accounts["acct0"], [OrderSpec(s) for s in SYMBOLS[:5]])
        # learns how lists fare: where they are taken, one answers each of five (review 42)
        await exchange._read_symbols(SYMBOLS[:5], Priority.KILL)
        for _ in range(3):
            before = _sent(sim)
            background = await exchange.snapshot(priority=Priority.BACKGROUND)
            assert _sent(sim) - before <= 1 + _CHECK_READS
            assert background.complete  # no old order left out among those it checked
            assert {o.symbol for o in background.orders} == set(SYMBOLS[:5])
            before = _sent(sim)
            kill_read = await exchange.snapshot()
            assert _sent(sim) - before <= 1 + _KILL_CHECK_READS
            # Five symbols a request cover all 170 known ones in 34; one a request do not:
            # then the read proves nothing flat (review 41).
            assert kill_read.complete is not lists_refused
            assert {o.symbol for o in kill_read.orders} == set(SYMBOLS[:5])
        assert not [k for k in sim.counters if "429" in k or "418" in k]
