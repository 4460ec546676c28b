"""Review 97, of 95e85da: lists a read showed after a wave got requests of their own even on a
BingX account whose cancel-all does cover lists (learned so, rightly): with a desk placing new
lists as the kill cancelled, every later wave sent `oco/cancel`s beside its cancel-all, each
lost the race and earned an error, the error lock held `oco/cancel`, and the kill ended failed
with 10 lists open (before 95e85da: flat in 7.4 s). Now only a list that survived a whole wave
(shown before it and after it) gets a request of its own.

The real engine and connector against the BingX simulator; the desk is the simulator itself,
placing lists and an order just after each cancel-all acts.
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from killswitch.kill.config import EngineConfig
from killswitch.model import Mode, Scope, Trigger
from killswitch.sim.bingx import BingxSim, BxError
from killswitch.sim.book import OrderSpec
from killswitch.sim.faults import Fault, FaultKind
from tests.fixtures.bingx import bingx_venue
from tests.review.bingx_rig import bingx_engine
from tests.review.test_found_bingx_cancel_all_lesson import CANCEL_ALL, log_of, oco_legs

CONFIG = EngineConfig(
    deadline_s=30.0,
    retry_initial_s=0.05,
    retry_max_s=1.0,
    quiet_window_s=0.3,
    sweep_interval_s=3600.0,
)
# What the desk places just after each of the first three cancel-alls: lists, plain orders.
DESK = [(10, 1), (10, 1), (10, 0)]


@pytest.mark.parametrize("leg_ids", [False, True], ids=["oco-cancel", "leg-ids"])
async def test_lists_new_since_the_last_wave_are_left_to_a_covering_cancel_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, leg_ids: bool
) -> None:
    errors: dict[str, int] = {}
    placed = [0]
    cancel_all = BingxSim._cancel_open_orders

    def desk_after(self: BingxSim, account: Any, p: dict[str, str]) -> Any:
        answer = cancel_all(self, account, p)
        if placed[0] < len(DESK):
            lists, plain = DESK[placed[0]]
            base = 100 * (placed[0] + 1)
            placed[0] += 1
            orders = [OrderSpec("BTC-USDT", price=Decimal(90)) for _ in range(plain)]
            self.seed(account, orders, [oco_legs(base + i) for i in range(lists)])
        return answer

    def counted(name: str) -> Any:
        method = getattr(BingxSim, name)

        def answer(self: BingxSim, account: Any, p: dict[str, str]) -> Any:
            try:
                return method(self, account, p)
            except BxError:
                errors[name] = errors.get(name, 0) + 1
                raise

        return answer

    monkeypatch.setattr(BingxSim, "_cancel_open_orders", desk_after)
    for name in ("_oco_cancel", "_cancel", "_cancel_orders"):
        monkeypatch.setattr(BingxSim, name, counted(name))
    learned = tmp_path / "learned-bx0.json"
    learned.write_text(
        json.dumps({"cancel_all_covers_lists": True, "leg_id_cancels_list": leg_ids})
    )
    async with bingx_venue(
        accounts=1, variant="strictest", cancel_all_covers_oco=True, leg_id_cancels_list=leg_ids
    ) as (sim, make):
        book = sim.book(sim.accounts["bx0"])
        sim.seed(
            sim.accounts["bx0"],
            [OrderSpec("ETH-USDT", price=Decimal(90))],
            [oco_legs(i) for i in range(3)],
        )
        exchange = make("bx0", learned_path=learned)
        await exchange.start()
        async with bingx_engine(exchange, tmp_path / "j.jsonl", CONFIG) as engine:
            await engine.submit(Trigger("t", "test", Mode.KILL, "r97", Scope.of(venues=["bingx"])))
            kill = engine.kill_for("t")
            assert kill is not None
            async with asyncio.timeout(CONFIG.deadline_s + 30):
                await kill.done.wait()
            assert kill.flat.is_set(), (kill.state, len(book.lists))
            assert not book.lists
            assert errors == {}, "list cancels raced a cancel-all that covers lists"
            assert exchange.learned_paths()["cancel_all_covers_lists"] is True


async def test_lists_a_read_indexes_while_the_cancel_all_is_on_its_way_count_in_its_answer() -> (
    None
):
    # Review 97 F5: 95e85da looked the answer's legs up only among the lists known before the
    # cancel-all was sent; the kill's first look, read beside it, indexes the lists meanwhile.
    slow = Fault(FaultKind.LATENCY, endpoint=CANCEL_ALL, latency_ms=600.0)
    async with bingx_venue(accounts=1, variant="most_permissive", faults=[slow]) as (sim, make):
        sim.seed(sim.accounts["bx0"], [], [oco_legs(i) for i in range(3)])
        exchange = make("bx0")
        await exchange.start()
        cancel = asyncio.create_task(exchange.cancel_all(None))
        while not log_of(sim, CANCEL_ALL):  # on its way
            await asyncio.sleep(0.005)
        snapshot = await exchange.snapshot()  # the first look, answered first
        ack = await cancel
        assert len(snapshot.lists) == 3, "the look was served before the cancel-all acted"
        assert not sim.book(sim.accounts["bx0"]).lists
        assert len(ack.lists_cancelled) == 3
        assert exchange.learned_paths()["cancel_all_covers_lists"] is True
