"""Review 30, item 7: one transient refusal of MEXC's no-symbol open-orders read was remembered
as the venue's rule.

Whether `GET /api/v3/openOrders` answers without a symbol is unverified (reference §2.3), so
the connector asks without one and, if MEXC refuses, reads the symbols it knows. It took any
non-auth 4xx as that refusal and remembered it for good: after one 404 from a proxy or a
passing 400, every later unscoped snapshot read only known symbols and was incomplete, so no
unscoped kill could be proven flat again. Now only the venue's own words for a missing symbol
("Mandatory parameter 'symbol'...") are remembered; any other refusal costs that one read.
"""

from __future__ import annotations

from killswitch.sim.book import OrderSpec
from killswitch.sim.faults import Fault, FaultKind
from tests.fixtures.mexc import mexc_sim

OPEN_ORDERS = "/api/v3/openOrders"


async def test_a_passing_4xx_on_the_no_symbol_read_is_not_the_venues_rule() -> None:
    async with mexc_sim() as (sim, connect):
        exchange = connect("acct0", symbols_hint=["BTCUSDT"])
        await exchange.start()
        sim.seed(sim.accounts["acct0"], [OrderSpec("BTCUSDT"), OrderSpec("LTCUSDT")])
        sim.faults.add(
            Fault(FaultKind.ERROR_BEFORE, endpoint=OPEN_ORDERS, http_status=404, count=1)
        )
        first = await exchange.snapshot()
        assert not first.complete, "a read we could not make proves nothing"
        second = await exchange.snapshot()
        assert second.complete, "the no-symbol read was never asked again"
        assert {o.symbol for o in second.orders} == {"BTCUSDT", "LTCUSDT"}
        assert exchange.capabilities.open_orders_without_symbol is True


async def test_the_venues_own_symbol_required_answer_is_remembered() -> None:
    async with mexc_sim(open_orders_requires_symbol=True) as (sim, connect):
        exchange = connect("acct0", symbols_hint=["BTCUSDT"])
        await exchange.start()
        sim.seed(sim.accounts["acct0"], [OrderSpec("BTCUSDT")])
        assert not (await exchange.snapshot()).complete
        assert exchange.capabilities.open_orders_without_symbol is False
        asked = sim.counters[f"requests GET {OPEN_ORDERS}"]
        await exchange.snapshot()
        assert sim.counters[f"requests GET {OPEN_ORDERS}"] == asked + 1  # per symbol only
