"""Review: a prefix-scoped kill on BingX ends flat with in-scope OCO lists open, when
`oco/openOrderList` answers in the flat-legs shape (docs-v3, JKorf; the simulator's default).

That shape carries no `listClientOrderId` (reference §3.3), so `parse_oco_page` builds each
list with `list_client_order_id=""`; `Scope.covers_list` then finds the list out of a scope
whose prefix is on the list's client id, the kill plans nothing and the empty in-scope snapshot
"proves" flat. A list whose scope membership the read cannot show is unknown, not out of scope
(DESIGN "Venue behaviours the docs leave open": correct under every answer, never turns an
answer it cannot read into "nothing open").
"""

from __future__ import annotations

from pathlib import Path

import aiohttp

from killswitch.kill.record import KillState
from killswitch.model import Mode, Scope, Trigger
from killswitch.sim.bingx import BingxSim
from tests.fixtures.bingx import bingx_venue, bx_call, oco_params
from tests.review.bingx_rig import bingx_engine
from tests.unit.test_engine import QUICK

SPOT = "/openApi/spot/v1"


def oco(list_client_id: str, *, above: str = "", below: str = "") -> dict[str, str]:
    """`oco/order`'s parameters: an OCO on ETH-USDT with these client ids (BingX's: digits)."""
    ids = {
        "listClientOrderId": list_client_id,
        "aboveClientOrderId": above,
        "belowClientOrderId": below,
    }
    return oco_params(**{k: v for k, v in ids.items() if v})


async def post(sim: BingxSim, path: str, params: dict[str, str]) -> None:
    async with aiohttp.ClientSession() as session:
        _, _, body = await bx_call(session, sim, "POST", f"{SPOT}/{path}", params)
    assert body["code"] == 0, body


async def test_a_prefix_kill_is_not_flat_while_an_oco_list_of_that_prefix_is_open(
    tmp_path: Path,
) -> None:
    async with bingx_venue(accounts=1, oco_list_shape="legs") as (sim, make):
        exchange = make("bx0")
        await exchange.start()
        await post(sim, "oco/order", oco("770001"))
        book = sim.book(sim.accounts["bx0"])
        assert len(book.lists) == 1

        async with bingx_engine(exchange, tmp_path / "journal.jsonl", QUICK, seed=7) as engine:
            scope = Scope.of(venues=["bingx"], client_order_id_prefix="7700")
            await engine.submit(Trigger("k1", "test", Mode.KILL, "desk 7 breach", scope))
            kill = engine.kill_for("k1")
            assert kill is not None
            await kill.done.wait()
            assert not (kill.state in (KillState.FLAT, KillState.CONFIRMED) and book.lists), (
                f"kill {kill.state} with OCO list 770001 open"
            )


async def test_a_prefix_no_bingx_list_id_can_start_with_decides_such_lists_out_of_scope(
    tmp_path: Path,
) -> None:
    # Review 95: BingX takes only digits for an OCO list's client id (and its legs'): a prefix
    # with another character ("ksdrill_", "strat7_") can match no list the flat shape shows,
    # yet every such list was undecided, and a prefix kill (the live drill's) never ended flat
    # while one was open on a symbol in scope.
    async with bingx_venue(accounts=1, oco_list_shape="legs") as (sim, make):
        exchange = make("bx0")
        await exchange.start()
        await post(sim, "oco/order", oco("770002", above="11", below="12"))
        ours = {"symbol": "ETH-USDT", "side": "BUY", "type": "LIMIT", "price": "100"}
        await post(sim, "trade/order", {**ours, "quantity": "1", "newClientOrderId": "strat7_1"})
        book = sim.book(sim.accounts["bx0"])
        async with bingx_engine(exchange, tmp_path / "journal.jsonl", QUICK, seed=7) as engine:
            scope = Scope.of(venues=["bingx"], client_order_id_prefix="strat7_")
            await engine.submit(Trigger("k2", "test", Mode.KILL, "desk 7 breach", scope))
            kill = engine.kill_for("k2")
            assert kill is not None
            await kill.done.wait()
            assert kill.state in (KillState.FLAT, KillState.CONFIRMED), kill.state
            assert len(book.lists) == 1, "the list is out of scope: left working"
            assert [o.client_order_id for o in book.open_orders()] == ["11", "12"]
