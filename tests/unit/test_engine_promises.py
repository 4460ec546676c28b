"""Regression tests for the engine's promises (DESIGN.md, "What the kill promises").

Each test here reproduces one way the engine once said "done" when it was not, or lost work.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import orjson
import pytest

from killswitch.exchanges.base import Priority, RateLimited
from killswitch.journal import replay
from killswitch.kill.config import EngineConfig
from killswitch.kill.engine import Engine
from killswitch.kill.gate import Gate as _Gate
from killswitch.kill.record import KillState
from killswitch.model import AccountRef, Mode, Snapshot
from tests.fakes import BINGX_CAPS, MEXC_CAPS, FakeExchange
from tests.unit.test_engine import Rig, finished, kill_trigger, make_rig, three_venues


async def test_gate_waiter_cancelled_after_its_wake_up_does_not_strand_the_others() -> None:
    # After a 429 the gate lets one request through at a time.
    gate = _Gate(EngineConfig(probe_first=True), clock=lambda: 0.0)
    release = asyncio.get_running_loop().create_future()
    waiters: list[asyncio.Task[str]] = []

    async def held() -> None:
        await release
        # Queued before the gate's wake-up of the first waiter: that waiter is woken, then
        # cancelled before it runs, every time.
        asyncio.get_running_loop().call_soon(waiters[0].cancel)
        raise RateLimited("429", retry_after_s=1.0)

    async def quick() -> str:
        return "sent"

    first = asyncio.create_task(gate.run(held))
    await asyncio.sleep(0)
    waiters.append(asyncio.create_task(gate.run(quick)))
    behind = asyncio.create_task(gate.run(quick))
    for _ in range(3):
        await asyncio.sleep(0)
    assert not behind.done()

    release.set_result(None)
    with pytest.raises(RateLimited):
        await first
    async with asyncio.timeout(5):  # a hang here is the lost wake-up
        assert await behind == "sent"
    assert waiters[0].cancelled()


# -- over in-process fake venues -------------------------------------------------------------


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = await make_rig(tmp_path)
    yield r
    await r.engine.stop()


async def ticks(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_cancel_cut_short_by_a_graceful_stop_is_carried_out_after_the_restart(
    tmp_path: Path,
) -> None:
    venues = three_venues()
    first = await make_rig(tmp_path, venues)
    hold = asyncio.Event()
    for venue in venues.values():
        venue.hold("snapshot", hold)
        venue.hold("cancel_all", hold)
        venue.hold("cancel_order", hold)
        venue.hold("cancel_orders", hold)
        venue.hold("cancel_order_list", hold)
    await first.engine.submit(kill_trigger("c1", mode=Mode.CANCEL, venues=["mexc"]))
    await ticks()
    await first.engine.stop(grace_s=0.01)  # SIGTERM: the cancel is cut short
    assert venues["mexc"].open_ids()
    assert not any(r.get("kind") == "kill_done" for r in _records(first.journal_path))

    for venue in venues.values():
        venue.gates.clear()
    second = await make_rig(tmp_path, venues)  # start() resumes what was not finished
    try:
        assert venues["mexc"].open_ids() == set()
        await second.engine.wait_idle()  # its end is journaled just after start() returns
        done = [r for r in _records(second.journal_path) if r.get("kind") == "kill_done"]
        assert [(r["trigger_id"], r["state"]) for r in done] == [("c1", "flat")]
    finally:
        await second.engine.stop()


async def test_a_reset_racing_a_new_kill_releases_exactly_what_it_names(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    await rig.engine.submit(kill_trigger("k1", venues=["binance"]))
    await finished(rig, "k1")
    journal = rig.engine.journal
    original = journal.append_many_async
    slow = asyncio.Event()

    async def held(records: list[tuple[str, dict[str, object]]]) -> list[dict[str, object]]:
        await slow.wait()
        return await original(records)

    monkeypatch.setattr(journal, "append_many_async", held)
    submit = asyncio.create_task(rig.engine.submit(kill_trigger("k2", venues=["mexc"])))
    await ticks()
    reset = asyncio.create_task(rig.engine.reset(actor="op", reason="done"))
    await ticks()
    slow.set()
    await submit
    await reset
    await rig.engine.wait_idle()

    (event,) = rig.log.of("reset")
    named = {r["trigger_id"] for r in event["released"]}  # type: ignore[attr-defined]
    held_now = {t for t, _ in _latches(rig.engine)}
    assert named.isdisjoint(held_now)  # what it named is released
    assert named | held_now == {"k1", "k2"}  # and what it did not name is still latched
    state, _ = replay(rig.journal_path)
    assert set(state.latches) == held_now  # the journal agrees with memory


async def test_a_one_shot_cancel_never_touches_an_order_placed_after_its_flat_snapshot(
    rig: Rig,
) -> None:
    binance = rig.venues["binance"]
    await rig.engine.submit(kill_trigger("c1", mode=Mode.CANCEL, venues=["binance"]))
    kill = rig.engine.kill_for("c1")
    assert kill is not None
    await kill.done.wait()
    assert kill.state is KillState.FLAT
    (late,) = binance.place("BTCUSDT", "late")
    await kill.finished.wait()
    await rig.engine.wait_idle()
    assert late in binance.open_ids()


async def test_a_kill_whose_scope_covers_no_configured_account_is_never_flat(rig: Rig) -> None:
    await rig.engine.submit(kill_trigger("k1", accounts=["typo"]))
    kill = await finished(rig, "k1")
    assert kill.state is KillState.FAILED  # type: ignore[attr-defined]
    assert not rig.log.of("flat")
    assert rig.log.of("failed")


@dataclass
class CappedExchange(FakeExchange):
    """An all-symbols read that lists at most `cap` orders and says it may be cut short."""

    cap: int = 10

    async def snapshot(
        self, symbols: Sequence[str] | None = None, *, priority: Priority = Priority.KILL
    ) -> Snapshot:
        snap = await super().snapshot(symbols, priority=priority)
        if symbols is None and len(snap.orders) > self.cap:
            return replace(snap, orders=snap.orders[: self.cap], complete=False)
        return snap


async def test_a_snapshot_that_may_be_cut_short_is_never_proof_of_flat(tmp_path: Path) -> None:
    bingx = CappedExchange("bingx", "mm-3", BINGX_CAPS)
    bingx.place("BTC-USDT", "other-", n=20)  # listed first, and out of scope
    bingx.place("ETH-USDT", "strat7-", n=3)  # on no page of the capped read
    rig = await make_rig(tmp_path, {"bingx": bingx})
    try:
        await rig.engine.submit(kill_trigger("k1", client_order_id_prefix="strat7-"))
        kill = await finished(rig, "k1")
        assert kill.state is KillState.FAILED  # type: ignore[attr-defined]
        result = kill.accounts[AccountRef("bingx", "mm-3")]  # type: ignore[attr-defined]
        assert not result.verified
        assert not rig.log.of("flat")
        assert not rig.log.of("confirmed")
    finally:
        await rig.engine.stop()


def _records(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def _latches(engine: Engine) -> list[tuple[str, object]]:
    return [(str(x["trigger_id"]), x["scope"]) for x in engine.status()["latches"]]  # type: ignore[attr-defined]


async def test_a_probe_that_covers_the_whole_kill_is_verified_by_the_read_that_follows_it(
    tmp_path: Path,
) -> None:
    mexc = FakeExchange("mexc", "mm-2", MEXC_CAPS)
    for base in ("BTC", "ETH", "SOL"):
        mexc.place(f"{base}USDT", n=2)
    symbols = ("BTCUSDT", "ETHUSDT", "SOLUSDT")  # configured: the first wave plans from them
    rig = await make_rig(tmp_path, {"mexc": mexc}, mexc={"symbols": symbols})
    try:
        await rig.engine.submit(kill_trigger("k1"))
        kill = rig.engine.kill_for("k1")
        assert kill is not None
        await kill.done.wait()
        assert kill.state is KillState.FLAT
        assert mexc.count("cancel_all") == 1  # one request covers the three symbols: the probe
        # ... and the read that started after its acknowledgement proves flat: no second read.
        assert mexc.count("snapshot") == 1
        assert not mexc.open_keys()
    finally:
        await rig.engine.stop()


async def test_a_latch_released_before_the_resume_is_not_resumed(tmp_path: Path) -> None:
    # `start(before_resume=...)`: a replica learns of a peer's reset before anything resumes.
    venues = three_venues()
    first = await make_rig(tmp_path, venues)
    hold = asyncio.Event()
    for venue in venues.values():
        venue.gates["snapshot"] = hold  # the kill never gets past its first read
    await first.engine.submit(kill_trigger("k1"))
    await first.engine.stop(grace_s=0.0)
    for venue in venues.values():
        venue.gates.clear()
        venue.calls.clear()
        venue.place("BTCUSDT" if venue.venue != "bingx" else "BTC-USDT", n=1)

    second = await make_rig(tmp_path, venues, start=False)

    async def peer_reset() -> None:
        assert second.engine.latches().keys() == {"k1"}
        await second.engine.reset(actor="replica b", reason="peer reset", only=["k1"])

    await second.engine.start(before_resume=peer_reset)
    try:
        assert second.engine.latches() == {}
        assert not second.log.of("resumed")
        assert not [c for v in venues.values() for c in v.calls if c.method.startswith("cancel")]
        assert all(v.open_keys() for v in venues.values())
    finally:
        await second.engine.stop()
