"""Review 74's findings in the fixes of review 67.

A failed kill was resolved (dropped from `status`'s UNRESOLVED and `killswitch_failed_kills`) by
any later `kill_done` flat over a containing scope, though that kill could have proved the
account flat before the failed one left orders open there. Now only a kill launched after the
failed one ended resolves it.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from killswitch.exchanges.base import Fatal
from killswitch.journal import Journal
from killswitch.kill.config import Account
from killswitch.kill.engine import Engine
from killswitch.kill.record import AccountState, KillState
from killswitch.model import AccountRef, Mode, Scope, Trigger
from tests.conftest import eventually
from tests.fakes import FakeExchange
from tests.unit.test_engine import QUICK

A = AccountRef("binance", "a")


async def test_a_flat_proved_before_a_failure_does_not_resolve_it(tmp_path: Path) -> None:
    a = FakeExchange(account="a")
    b = FakeExchange(account="b")
    a.place("BTCUSDT", "x-", n=3)
    b.place("BTCUSDT", "y-", n=3)
    held = asyncio.Event()
    b.hold("snapshot", held)  # the cancel over everything stays running on b
    engine = Engine(
        [
            Account(A, a, symbols=("BTCUSDT",)),
            Account(AccountRef("binance", "b"), b, symbols=("BTCUSDT",)),
        ],
        Journal(tmp_path / "journal.jsonl"),
        QUICK,
        rng=random.Random(7),
    )
    await engine.start()
    try:
        await engine.submit(Trigger("C", "op", Mode.CANCEL, "all", Scope()))
        everything = engine.kill_for("C")
        assert everything is not None
        await eventually(lambda: everything.accounts[A].state is AccountState.FLAT)
        left = a.place("BTCUSDT", "z-", n=2)  # after C's look at a; a now refuses cancels
        for method in ("cancel_all", "cancel_order", "cancel_orders"):
            a.fail(method, Fatal("refused", venue="binance"), times=1000)
        await engine.submit(Trigger("F", "op", Mode.CANCEL, "a only", Scope.of(accounts=["a"])))
        failed = engine.kill_for("F")
        assert failed is not None
        await failed.finished.wait()
        assert failed.state is KillState.FAILED
        held.set()
        await everything.finished.wait()
        assert everything.state is KillState.FLAT
        assert set(left) <= a.open_ids()
        assert [k["kill_id"] for k in engine.status()["failed_kills"]] == ["F"]  # type: ignore[index, union-attr]
        # A cancel launched after F ended, over a scope containing F's, does resolve it.
        a.faults.clear()
        await engine.submit(Trigger("G", "op", Mode.CANCEL, "again", Scope()))
        again = engine.kill_for("G")
        assert again is not None
        await again.finished.wait()
        assert again.state is KillState.FLAT
        assert engine.status()["failed_kills"] == []
    finally:
        await engine.stop()


def test_a_failed_kill_pushed_out_of_the_list_is_still_counted(tmp_path: Path) -> None:
    """Review 74: the 21st unresolved failed kill pushed the oldest out, with no word of it."""
    from killswitch.journal.state import FAILED_KEPT

    journal = Journal(tmp_path / "journal.jsonl")
    journal.open()
    for n in range(FAILED_KEPT + 1):
        summary = {"kill_id": f"f{n}", "kind": "trigger", "scope": Scope().to_json()}
        journal.append("kill_done", trigger_id=f"f{n}", state="failed", summary=summary)
    assert len(journal.state.failed) == FAILED_KEPT
    assert journal.state.failed_dropped == 1
    journal.close()
