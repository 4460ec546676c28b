"""Review 60: MEXC as it really is.

1. MEXC's error table names more refusals of one symbol than we knew: 30000 "suspended
   transaction for the symbol", 30016 "trading disabled", 30020 "no permission for the
   symbol", 730001 "Pair not found" (mexcdevelop/apidocs, "Error Code"). Unknown, they read as
   an unknown outcome: a five-symbol cancel naming such a symbol was re-read and re-sent whole
   until the deadline, and the other four symbols' orders were never cancelled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from killswitch.model import Scope
from killswitch.sim import mexc as sim_mexc
from killswitch.sim.book import OrderSpec
from killswitch.sim.mexc import MexcSim
from tests.fixtures.mexc import mexc_sim
from tests.review.helpers import kill_states

HALTED = "CXUSDT"  # sorts among the others: in the first cancel of five
LIVE = ["CAUSDT", "CBUSDT", "CCUSDT", "CDUSDT", "CZUSDT", "CYUSDT"]


@pytest.mark.parametrize(
    ("code", "msg"),
    [
        (30000, "suspended transaction for the symbol"),
        (30016, "trading disabled"),
        (30020, "no permission for the symbol"),
        (730001, "Pair not found"),
    ],
)
async def test_symbols_sharing_a_cancel_with_one_the_venue_will_not_trade_are_cancelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, msg: str
) -> None:
    cancel = MexcSim._cancel_open_orders

    async def refused(
        self: MexcSim, request: web.Request, account: Any, params: dict[str, str]
    ) -> web.Response:
        if HALTED in params.get("symbol", "").split(","):
            raise sim_mexc.MexcError(code, msg)
        return await cancel(self, request, account, params)

    monkeypatch.setattr(MexcSim, "_cancel_open_orders", refused)
    configured = sorted([*LIVE, HALTED])
    async with mexc_sim(accounts=1, symbols=configured) as (sim, connect):
        exchange = connect("acct0", symbols_hint=configured)
        await exchange.start()
        book = sim.book(sim.accounts["acct0"])
        for symbol in configured:
            book.place(OrderSpec(symbol))
        await kill_states(tmp_path, exchange, configured, [Scope.of(["mexc"])])
        assert sorted({o.symbol for o in book.open_orders()}) == [HALTED]
