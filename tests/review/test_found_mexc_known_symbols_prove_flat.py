"""Review: on a MEXC account whose `openOrders` needs a symbol, an account-wide kill reads only
the symbols it knows, and that read proves flat.

After the no-symbol read is refused, the connector sets `open_orders_without_symbol=False`.
`Waves._snapshot_symbols` then passes the known symbols (configured, tracked, seen) explicitly,
and `MexcExchange.snapshot(symbols)` marks a read of given symbols complete. An order on a
symbol nobody configured or tracked is never read, and the kill ends CONFIRMED with it open
(DESIGN "No false flat": "never only what we happen to have tracked").
"""

from __future__ import annotations

import random
from pathlib import Path

from killswitch.journal import Journal
from killswitch.kill.config import Account
from killswitch.kill.engine import Engine
from killswitch.kill.record import KillState
from killswitch.model import AccountRef, Mode, Scope, Trigger
from killswitch.sim.book import OrderSpec
from tests.fixtures.mexc import mexc_sim
from tests.unit.test_engine import QUICK


async def test_an_account_wide_mexc_kill_is_not_flat_with_an_order_on_an_unknown_symbol(
    tmp_path: Path,
) -> None:
    async with mexc_sim(accounts=1, open_orders_requires_symbol=True) as (sim, connect):
        exchange = connect("acct0")
        await exchange.start()
        book = sim.book(sim.accounts["acct0"])
        book.place(OrderSpec("BTCUSDT", client_order_id="a1"))
        hidden = book.place(OrderSpec("ETHUSDT", client_order_id="a2")).order_id

        ref = AccountRef("mexc", "acct0")
        engine = Engine(
            [Account(ref, exchange, symbols=("BTCUSDT",))],
            Journal(tmp_path / "journal.jsonl"),
            QUICK,
            rng=random.Random(7),
        )
        await engine.start()
        try:
            await engine.submit(Trigger("k1", "test", Mode.KILL, "drawdown", Scope.of(["mexc"])))
            kill = engine.kill_for("k1")
            assert kill is not None
            await kill.finished.wait()
            still_open = hidden in book.orders
            assert not (kill.state in (KillState.FLAT, KillState.CONFIRMED) and still_open), (
                f"kill {kill.state} with ETHUSDT order {hidden} open"
            )
        finally:
            await engine.stop()
