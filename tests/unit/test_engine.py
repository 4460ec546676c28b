"""The engine over in-process fake venues: waves, retries per the taxonomy, verify, latch."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from killswitch.control_client import format_status
from killswitch.exchanges.base import (
    ClockSkew,
    Fatal,
    OutcomeUnknown,
    RateLimited,
    Transient,
)
from killswitch.journal import Journal, replay
from killswitch.kill import waves
from killswitch.kill.config import Account, EngineConfig
from killswitch.kill.engine import Engine
from killswitch.kill.record import KillState, SubmitResult
from killswitch.lane import lane
from killswitch.model import AccountRef, ExecType, Mode, OrderEvent, Scope, Trigger
from tests.conftest import eventually
from tests.fakes import (
    BINGX_CAPS,
    MEXC_CAPS,
    EventLog,
    FakeClock,
    FakeExchange,
    StaticTracker,
)

QUICK = EngineConfig(
    deadline_s=10.0,
    retry_initial_s=0.1,
    retry_max_s=2.0,
    quiet_window_s=0.01,
    sweep_interval_s=3600.0,
)


@dataclass
class Rig:
    engine: Engine
    venues: dict[str, FakeExchange]
    log: EventLog
    clock: FakeClock
    journal_path: Path

    def kill(self, trigger_id: str) -> object:
        kill = self.engine.kill_for(trigger_id)
        assert kill is not None
        return kill


def three_venues() -> dict[str, FakeExchange]:
    venues = {
        "binance": FakeExchange("binance", "mm-1"),
        "mexc": FakeExchange("mexc", "mm-2", MEXC_CAPS),
        "bingx": FakeExchange("bingx", "mm-3", BINGX_CAPS),
    }
    for venue in venues.values():
        sep = "-" if venue.venue == "bingx" else ""
        for base in ("BTC", "ETH", "SOL", "XRP", "ADA", "DOGE", "TRX"):
            venue.place(f"{base}{sep}USDT", "desk1-", n=3)
    venues["binance"].place_list("BTCUSDT", "L-b", "desk1-l")
    venues["bingx"].place_list("ETH-USDT", "L-x", "desk1-l")
    return venues


async def make_rig(
    tmp_path: Path,
    venues: dict[str, FakeExchange] | None = None,
    *,
    config: EngineConfig = QUICK,
    start: bool = True,
    **kw: object,
) -> Rig:
    venues = venues if venues is not None else three_venues()
    clock = FakeClock()
    log = EventLog()
    path = tmp_path / "journal.jsonl"
    accounts = [
        Account(AccountRef(v.venue, v.account), v, **kw.get(name, {}))  # type: ignore[arg-type]
        for name, v in venues.items()
    ]
    engine = Engine(
        accounts,
        Journal(path),
        config,
        sleep=clock.sleep,
        clock=clock,
        rng=random.Random(7),
        healthy=kw.get("healthy", lambda: True),  # type: ignore[arg-type]
    )
    engine.events.add(log)
    if start:
        await engine.start()
    return Rig(engine, venues, log, clock, path)


def kill_trigger(trigger_id: str = "t1", mode: Mode = Mode.KILL, **scope: object) -> Trigger:
    return Trigger(trigger_id, "test", mode, "drawdown", Scope.of(**scope), created_ms=0)  # type: ignore[arg-type]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = await make_rig(tmp_path)
    yield r
    await r.engine.stop()


def backoffs(rig: Rig) -> list[float]:
    """The engine's sleeps before its confirmation: the quiet window (last) is not a backoff."""
    sleeps = list(rig.clock.sleeps)
    assert sleeps[-1:] == [rig.engine.config.quiet_window_s], sleeps  # the confirmation's wait
    return sleeps[:-1]


async def finished(rig: Rig, trigger_id: str = "t1") -> object:
    kill = rig.engine.kill_for(trigger_id)
    assert kill is not None
    await kill.finished.wait()
    return kill


async def test_kill_across_three_venues_ends_flat_confirmed_and_journaled(rig: Rig) -> None:
    before = {n: len(v.book.orders) for n, v in rig.venues.items()}
    assert await rig.engine.submit(kill_trigger()) is SubmitResult.ACCEPTED
    kill = rig.engine.kill_for("t1")
    assert kill is not None
    await kill.finished.wait()

    assert kill.state is KillState.CONFIRMED
    assert all(not v.book.orders and not v.book.lists for v in rig.venues.values())
    for result in kill.accounts.values():
        assert len(result.cancelled) == before[result.ref.venue]
        assert result.orders_before == before[result.ref.venue]
    types = [r["type"] for r in rig.log.records]
    assert types[:2] == ["triggered", "latched"]
    assert types.index("flat") < types.index("confirmed")
    state, _ = replay(rig.journal_path)
    assert state.latched
    assert state.last_kill is not None
    assert state.last_kill["state"] == "confirmed"


async def test_mexc_cancels_five_symbols_per_request_and_bingx_one_account_wide(rig: Rig) -> None:
    await rig.engine.submit(kill_trigger())
    await finished(rig)
    mexc_calls = [c.args[0] for c in rig.venues["mexc"].calls if c.method == "cancel_all"]
    assert sorted(len(c) for c in mexc_calls) == [2, 5]  # type: ignore[arg-type]
    bingx_calls = [c.args[0] for c in rig.venues["bingx"].calls if c.method == "cancel_all"]
    assert bingx_calls == [None]
    # The OCO list goes by a request of its own: a batch of its legs' ids or oco/cancel,
    # whichever the planner times faster under BingX's limits.
    bingx = rig.venues["bingx"]
    assert bingx.count("cancel_order_list") + bingx.count("cancel_orders") >= 1
    assert not bingx.book.open_lists(None)


async def test_a_trigger_id_seen_before_is_a_duplicate_also_after_a_restart(
    tmp_path: Path,
) -> None:
    rig = await make_rig(tmp_path)
    await rig.engine.submit(kill_trigger("a1"))
    await finished(rig, "a1")
    assert await rig.engine.submit(kill_trigger("a1")) is SubmitResult.DUPLICATE
    await rig.engine.stop()

    again = await make_rig(tmp_path, rig.venues)
    assert await again.engine.submit(kill_trigger("a1")) is SubmitResult.DUPLICATE
    assert again.engine.kill_for("a1") is not None  # the resumed latch, not a new kill
    assert [r["type"] for r in again.log.records if r["type"] == "duplicate"] == ["duplicate"]
    await again.engine.stop()


async def test_a_reset_id_journaled_is_a_no_op_also_after_a_restart(tmp_path: Path) -> None:
    # A Kafka reset read again after a restart (a crash before its commit) must not release
    # a kill latched after it was applied, whatever its `ts` says.
    rig = await make_rig(tmp_path)
    await rig.engine.submit(kill_trigger("a1"))
    await finished(rig, "a1")
    assert await rig.engine.reset(actor="kafka:risk", reason="r", reset_id="reset-1")
    await rig.engine.submit(kill_trigger("a2"))
    await finished(rig, "a2")
    assert not await rig.engine.reset(actor="kafka:risk", reason="r", reset_id="reset-1")
    await rig.engine.stop()

    again = await make_rig(tmp_path, rig.venues)
    assert not await again.engine.reset(actor="kafka:risk", reason="r", reset_id="reset-1")
    assert list(again.engine.latches()) == ["a2"]
    assert await again.engine.reset(actor="kafka:risk", reason="r", reset_id="reset-2")
    await again.engine.stop()


async def test_outcome_unknown_after_apply_is_reread_not_resent_and_not_double_counted(
    tmp_path: Path,
) -> None:
    venue = FakeExchange("binance", "mm-1")
    venue.place("BTCUSDT", "x", n=10)
    venue.fail("cancel_all", OutcomeUnknown("503 after apply", http_status=503), applied=True)
    rig = await make_rig(tmp_path, {"binance": venue})
    await rig.engine.submit(kill_trigger())
    kill = await finished(rig)

    assert not venue.book.orders
    assert venue.count("cancel_all") == 1
    result = next(iter(kill.accounts.values()))  # type: ignore[attr-defined]
    assert len(result.cancelled) == 10
    outcome = next(r for r in rig.log.of("outcome") if r["request"] == "cancel_all")
    assert outcome["result"] == "verified"
    assert outcome["cancelled"] == 10
    await rig.engine.stop()


async def test_outcome_unknown_before_apply_is_reread_then_sent_again(tmp_path: Path) -> None:
    venue = FakeExchange("binance", "mm-1")
    venue.place("BTCUSDT", "x", n=4)
    venue.fail("cancel_all", OutcomeUnknown("timeout"), applied=False)
    rig = await make_rig(tmp_path, {"binance": venue})
    await rig.engine.submit(kill_trigger())
    kill = await finished(rig)
    assert not venue.book.orders
    assert venue.count("cancel_all") == 2
    methods = [c.method for c in venue.calls]
    first = methods.index("cancel_all")
    assert methods[first + 1] == "snapshot"  # the re-read comes before the second send
    assert len(next(iter(kill.accounts.values())).cancelled) == 4  # type: ignore[attr-defined]
    await rig.engine.stop()


async def test_rate_limited_waits_retry_after_and_does_not_hammer(tmp_path: Path) -> None:
    venue = FakeExchange("binance", "mm-1")
    venue.place("BTCUSDT", n=2)
    venue.fail("cancel_all", RateLimited("429", retry_after_s=3.0, http_status=429), times=2)
    rig = await make_rig(tmp_path, {"binance": venue})
    await rig.engine.submit(kill_trigger())
    await finished(rig)
    assert not venue.book.orders
    assert venue.count("cancel_all") == 3
    assert backoffs(rig).count(3.0) == 2
    outcome = next(r for r in rig.log.of("outcome") if r["request"] == "cancel_all")
    assert outcome["attempts"] == 3
    await rig.engine.stop()


async def test_transient_errors_back_off_with_full_jitter_inside_the_bounds(
    tmp_path: Path,
) -> None:
    venue = FakeExchange("binance", "mm-1")
    venue.place("BTCUSDT")
    venue.fail("cancel_all", Transient("disconnected"), times=6)
    rig = await make_rig(tmp_path, {"binance": venue})
    await rig.engine.submit(kill_trigger())
    await finished(rig)
    assert not venue.book.orders
    delays = backoffs(rig)
    assert len(delays) == 6
    for attempt, delay in enumerate(delays, start=1):
        assert 0.0 <= delay <= min(QUICK.retry_max_s, QUICK.retry_initial_s * 2 ** (attempt - 1))
    assert len(set(delays)) > 1  # jittered, not a fixed schedule
    await rig.engine.stop()


async def test_clock_skew_is_retried_at_once(tmp_path: Path) -> None:
    venue = FakeExchange("binance", "mm-1")
    venue.place("BTCUSDT")
    venue.fail("cancel_all", ClockSkew("-1021"), times=1)
    rig = await make_rig(tmp_path, {"binance": venue})
    await rig.engine.submit(kill_trigger())
    await finished(rig)
    assert not venue.book.orders
    assert backoffs(rig) == [0.0]
    await rig.engine.stop()


async def test_an_order_already_gone_is_success_and_never_retried(tmp_path: Path) -> None:
    venue = FakeExchange("binance", "mm-1")
    ids = venue.place("BTCUSDT", "s7-", n=2)
    tracker = StaticTracker(held=await venue.snapshot())
    venue.book.cancel(ids[0])  # gone before the kill: the tracker has not heard yet
    rig = await make_rig(tmp_path, {"binance": venue}, binance={"tracker": tracker})
    await rig.engine.submit(kill_trigger(client_order_id_prefix="s7-"))
    kill = await finished(rig)
    assert kill.state is KillState.CONFIRMED  # type: ignore[attr-defined]
    gone_calls = [c for c in venue.calls if c.method == "cancel_order" and c.args[1] == ids[0]]
    assert len(gone_calls) == 1
    assert backoffs(rig) == []
    assert "gone" in {r["result"] for r in rig.log.of("outcome")}
    await rig.engine.stop()


async def test_fatal_stops_that_account_with_an_alarm_and_the_others_go_flat(
    rig: Rig,
) -> None:
    rig.venues["mexc"].fail("cancel_all", Fatal("bad key", code=700002), times=100)
    await rig.engine.submit(kill_trigger())
    kill = await finished(rig)
    assert kill.state is KillState.FAILED  # type: ignore[attr-defined]
    assert not rig.venues["binance"].book.orders
    assert not rig.venues["bingx"].book.orders
    assert rig.venues["mexc"].book.orders
    alarms = rig.log.of("alarm")
    assert [a["account"] for a in alarms] == ["mexc/mm-2"]
    # Fatal is not retried: one request per planned group, no more.
    assert rig.venues["mexc"].count("cancel_all") == 2
    failed = rig.log.of("failed")[0]
    assert list(failed["still_open"]) == ["mexc/mm-2"]  # type: ignore[call-overload]


async def test_a_kill_whose_deadline_passes_reports_exactly_what_is_still_open(
    tmp_path: Path,
) -> None:
    venue = FakeExchange("binance", "mm-1")
    stuck = set(venue.place("BTCUSDT", "s-", n=3))
    venue.place("ETHUSDT", n=2)
    # BTCUSDT cancels keep failing; ETHUSDT goes.
    venue.fail(
        "cancel_all", Transient("venue busy"), times=10**6, when=lambda a: a == (("BTCUSDT",),)
    )
    config = EngineConfig(deadline_s=5.0, retry_initial_s=0.5, retry_max_s=1.0, quiet_window_s=0.01)
    rig = await make_rig(tmp_path, {"binance": venue}, config=config)
    await rig.engine.submit(kill_trigger())
    kill = await finished(rig)

    assert kill.state is KillState.FAILED  # type: ignore[attr-defined]
    failed = rig.log.of("failed")[0]
    still = failed["still_open"]["binance/mm-1"]  # type: ignore[index]
    assert {o["order_id"] for o in still["orders"]} == stuck  # type: ignore[index]
    assert rig.engine.latched()  # failed, and still latched: the sweeper keeps at it
    state, _ = replay(rig.journal_path)
    assert state.last_kill is not None
    assert state.last_kill["state"] == "failed"
    await rig.engine.stop()


async def test_an_order_placed_during_the_kill_is_caught_by_the_verification_wave(
    tmp_path: Path,
) -> None:
    venue = FakeExchange("binance", "mm-1")
    venue.place("BTCUSDT", n=3)
    placed: list[str] = []

    def rogue(method: str, args: tuple[object, ...]) -> None:
        if method == "cancel_all" and not placed:
            placed.extend(venue.place("NEWUSDT", "rogue-"))

    venue.before_call.append(rogue)
    rig = await make_rig(tmp_path, {"binance": venue})
    await rig.engine.submit(kill_trigger())
    kill = await finished(rig)
    assert placed
    assert not venue.book.orders
    assert kill.state is KillState.CONFIRMED  # type: ignore[attr-defined]
    assert ("NEWUSDT",) in [c.args[0] for c in venue.calls if c.method == "cancel_all"]
    await rig.engine.stop()


async def test_scoped_kill_leaves_everything_outside_the_scope_untouched(rig: Rig) -> None:
    outside_before = {n: set(v.book.orders) for n, v in rig.venues.items() if n != "bingx"}
    bingx = rig.venues["bingx"]
    mine = set(bingx.place("BTC-USDT", "strat7-", n=4))
    other_symbol = set(bingx.place("ETH-USDT", "strat7-", n=2))
    await rig.engine.submit(
        kill_trigger(
            venues=["bingx"],
            accounts=["mm-3"],
            symbols=["BTCUSDT"],
            client_order_id_prefix="strat7-",
        )
    )
    await finished(rig)
    assert not (mine & set(bingx.book.orders))
    assert other_symbol <= set(bingx.book.orders)
    assert any(o.symbol == "BTC-USDT" for o in bingx.book.orders.values())  # desk1- untouched
    for name, ids in outside_before.items():
        assert set(rig.venues[name].book.orders) == ids
        assert not [c for c in rig.venues[name].calls if c.method.startswith("cancel")]
    assert bingx.count("cancel_all") == 0


async def test_cancel_mode_never_latches(rig: Rig) -> None:
    await rig.engine.submit(kill_trigger(mode=Mode.CANCEL))
    kill = await finished(rig)
    # One shot: it ends at its flat snapshot, with no confirmation window after it.
    assert kill.state is KillState.FLAT  # type: ignore[attr-defined]
    assert not rig.engine.latched()
    assert rig.log.of("latched") == []


def new_order_event(venue: FakeExchange, order_id: str) -> OrderEvent:
    order = venue.book.orders[order_id]
    return OrderEvent(order.symbol, order_id, order.client_order_id, ExecType.NEW, "NEW", True, 0)


async def test_while_latched_a_new_order_seen_on_a_stream_is_cancelled_at_once(rig: Rig) -> None:
    await rig.engine.submit(kill_trigger(venues=["binance"]))
    await finished(rig)
    binance, mexc = rig.venues["binance"], rig.venues["mexc"]
    (late,) = binance.place("BTCUSDT", "late")
    (free,) = mexc.place("BTCUSDT", "free")
    rig.engine.on_stream_event(AccountRef("binance", "mm-1"), new_order_event(binance, late))
    rig.engine.on_stream_event(AccountRef("mexc", "mm-2"), new_order_event(mexc, free))
    await rig.engine.wait_idle()
    assert late not in binance.book.orders
    assert free in mexc.book.orders
    assert [c.args for c in binance.calls if c.method == "cancel_order"] == [("BTCUSDT", late)]


async def test_reset_unlatches_is_journaled_and_stops_stream_cancels(rig: Rig) -> None:
    await rig.engine.submit(kill_trigger())
    await finished(rig)
    assert await rig.engine.reset(actor="alice", reason="drill over", origin="control")
    assert not rig.engine.latched()
    reset = rig.log.of("reset")[0]
    assert (reset["actor"], reset["reason"]) == ("alice", "drill over")
    state, _ = replay(rig.journal_path)
    assert not state.latched
    binance = rig.venues["binance"]
    (new,) = binance.place("BTCUSDT", "after-reset")
    rig.engine.on_stream_event(AccountRef("binance", "mm-1"), new_order_event(binance, new))
    await rig.engine.wait_idle()
    assert new in binance.book.orders


async def test_a_restart_with_a_latched_journal_sweeps_before_start_returns(
    tmp_path: Path,
) -> None:
    rig = await make_rig(tmp_path)
    await rig.engine.submit(kill_trigger("k1", venues=["binance"]))
    await finished(rig, "k1")
    await rig.engine.stop()
    binance = rig.venues["binance"]
    binance.place("BTCUSDT", "while-down", n=5)

    again = await make_rig(tmp_path, rig.venues)  # start() returns only after the re-sweep
    assert not binance.book.orders
    assert again.engine.latched()
    assert rig.venues["mexc"].book.orders  # outside the latched scope
    await again.engine.stop()


async def test_a_kill_interrupted_before_kill_done_is_resumed_on_start(tmp_path: Path) -> None:
    venues = three_venues()
    journal = Journal(tmp_path / "journal.jsonl")
    journal.open()
    journal.record_trigger(kill_trigger("c1", mode=Mode.CANCEL, venues=["mexc"]))
    journal.close()  # a crash after the intent was journaled, before any request

    rig = await make_rig(tmp_path, venues)
    assert not venues["mexc"].book.orders
    assert venues["binance"].book.orders
    assert not rig.engine.latched()
    await rig.engine.wait_idle()
    state, _ = replay(rig.journal_path)
    assert state.unfinished == set()
    await rig.engine.stop()


async def test_periodic_sweep_cancels_what_appeared_without_a_stream_event(rig: Rig) -> None:
    await rig.engine.submit(kill_trigger(venues=["mexc"]))
    await finished(rig)
    mexc = rig.venues["mexc"]
    mexc.place("ZZZUSDT", n=2)
    sweeps = await rig.engine.sweep()
    assert len(sweeps) == 1
    assert not mexc.book.orders
    assert rig.log.of("sweep")


async def test_a_kill_runs_with_background_work_behind_it_and_a_sweep_does_not(rig: Rig) -> None:
    """A trigger's kill takes the loop's lane first (stream slices and event batches wait for
    its ready steps); a sweep, periodic and possibly held for minutes by a ban, does not
    (review 100: every sweep deferred the streams)."""
    mexc = rig.venues["mexc"]
    seen: list[int] = []
    mexc.before_call.append(
        lambda method, args: seen.append(lane()._hot) if method.startswith("cancel") else None
    )
    mexc.place("BTCUSDT", n=1)
    await rig.engine.submit(kill_trigger(venues=["mexc"]))
    await finished(rig)
    assert seen
    assert set(seen) == {1}
    seen.clear()
    mexc.place("ZZZUSDT", n=2)
    await rig.engine.sweep()
    assert seen
    assert set(seen) == {0}
    assert lane()._hot == 0


async def test_trusted_tracker_starts_the_first_wave_before_the_snapshot_returns(
    tmp_path: Path,
) -> None:
    venue = FakeExchange("binance", "mm-1")
    venue.place("BTCUSDT", n=2)
    tracker = StaticTracker(held=await venue.snapshot())
    venue.place("HIDDENUSDT", n=1)  # the tracker missed it; the snapshot will show it
    gate = asyncio.Event()
    order_seen: list[str] = []

    def watch(method: str, args: tuple[object, ...]) -> None:
        order_seen.append(method)
        if method == "cancel_all":
            gate.set()

    venue.hold("snapshot", gate)
    venue.before_call.append(watch)
    rig = await make_rig(
        tmp_path, {"binance": venue}, binance={"tracker": tracker, "symbols": ("CFGUSDT",)}
    )
    await rig.engine.submit(kill_trigger())
    await finished(rig)
    assert order_seen[0] == "cancel_all"  # sent while the snapshot was still being read
    cancelled = {c.args[0] for c in venue.calls if c.method == "cancel_all"}
    assert {("BTCUSDT",), ("CFGUSDT",), ("HIDDENUSDT",)} <= cancelled
    assert not venue.book.orders
    await rig.engine.stop()


async def test_untrusted_tracker_is_not_used_for_the_first_wave(tmp_path: Path) -> None:
    venue = FakeExchange("binance", "mm-1")
    venue.place("BTCUSDT", n=1)
    stale = StaticTracker(held=await venue.snapshot(), is_trusted=False)
    venue.book.cancel_symbols(None)
    venue.place("ETHUSDT", n=1)
    rig = await make_rig(tmp_path, {"binance": venue}, binance={"tracker": stale})
    await rig.engine.submit(kill_trigger())
    await finished(rig)
    assert [c.args[0] for c in venue.calls if c.method == "cancel_all"] == [("ETHUSDT",)]
    await rig.engine.stop()


async def test_dead_mans_switch_is_armed_while_healthy_and_left_to_expire_when_not(
    tmp_path: Path,
) -> None:
    healthy = {"ok": True}
    venues = {"bingx": FakeExchange("bingx", "mm-3", BINGX_CAPS)}
    rig = await make_rig(
        tmp_path,
        venues,
        bingx={"dead_mans_switch_s": 30},
        healthy=lambda: healthy["ok"],
    )
    await eventually(lambda: venues["bingx"].dms_armed)
    assert venues["bingx"].dms_armed[0] == 30
    assert rig.engine.status()["accounts"][0]["dead_mans_switch"] == "armed"  # type: ignore[index]
    healthy["ok"] = False
    await rig.engine.stop()


async def test_a_burst_of_stream_orders_is_cancelled_by_id_not_by_cancel_all(rig: Rig) -> None:
    await rig.engine.submit(kill_trigger(venues=["bingx"]))
    await finished(rig)
    bingx = rig.venues["bingx"]
    calls_before = len(bingx.calls)
    ids = bingx.place("BTC-USDT", "burst-", n=5)
    ref = AccountRef("bingx", "mm-3")
    for order_id in ids:
        rig.engine.on_stream_event(ref, new_order_event(bingx, order_id))
    await rig.engine.wait_idle()
    assert not set(ids) & set(bingx.book.orders)
    new_calls = bingx.calls[calls_before:]
    assert {c.method for c in new_calls} <= {"cancel_order", "cancel_orders"}


async def test_status_reports_latch_and_last_kill(rig: Rig) -> None:
    await rig.engine.submit(kill_trigger())
    await finished(rig)
    status = rig.engine.status()
    assert status["latched"] is True
    last = status["last_kill"]
    assert isinstance(last, dict)
    assert last["state"] == "confirmed"
    assert {a["venue"] for a in status["accounts"]} == {"binance", "mexc", "bingx"}  # type: ignore[union-attr]


async def test_stream_orders_under_two_different_latches_are_all_cancelled(rig: Rig) -> None:
    await rig.engine.submit(kill_trigger("b", venues=["binance"], symbols=["BTCUSDT"]))
    await rig.engine.submit(kill_trigger("e", venues=["binance"], symbols=["ETHUSDT"]))
    await finished(rig, "b")
    await finished(rig, "e")
    binance = rig.venues["binance"]
    (btc,) = binance.place("BTCUSDT", "late-b")
    (eth,) = binance.place("ETHUSDT", "late-e")
    (sol,) = binance.place("SOLUSDT", "free")
    ref = AccountRef("binance", "mm-1")
    for order_id in (btc, eth, sol):
        rig.engine.on_stream_event(ref, new_order_event(binance, order_id))
    await rig.engine.wait_idle()
    assert btc not in binance.book.orders
    assert eth not in binance.book.orders
    assert sol in binance.book.orders


async def test_orders_that_keep_arriving_after_flat_end_the_confirmation_unconfirmed(
    tmp_path: Path,
) -> None:
    """The quiet window runs on the engine's clock: a bot that keeps placing orders after the
    kill is flat leaves it `unconfirmed` once the window passes its deadline, never hanging."""
    venue = FakeExchange("binance", "mm-1")
    venue.place("BTCUSDT", n=2)
    ref = AccountRef("binance", "mm-1")
    config = replace(QUICK, deadline_s=1.0, quiet_window_s=0.3)
    rig = await make_rig(tmp_path, {"binance": venue}, config=config)
    placed: list[str] = []
    placed_at: list[float] = []

    def rogue(method: str, args: tuple[object, ...]) -> None:
        # One new order per look after flat (the clock moves only in the quiet window).
        kill = rig.engine.kill_for("t1")
        if method != "snapshot" or kill is None or not kill.flat.is_set():
            return
        if placed_at and placed_at[-1] == rig.clock.now:
            return
        (order_id,) = venue.place("BTCUSDT", "rogue-")
        placed.append(order_id)
        placed_at.append(rig.clock.now)
        rig.engine.on_stream_event(ref, new_order_event(venue, order_id))

    venue.before_call.append(rogue)
    await rig.engine.submit(kill_trigger())
    kill = rig.engine.kill_for("t1")
    assert kill is not None
    await asyncio.wait_for(kill.finished.wait(), timeout=30)

    assert len(placed) >= 2
    assert kill.state is KillState.FLAT  # flat at each look, never quiet: not confirmed
    (unconfirmed,) = rig.log.of("unconfirmed")
    assert unconfirmed["kill_id"] == kill.id
    assert rig.log.of("confirmed") == []
    await rig.engine.wait_idle()
    assert not venue.book.orders
    await rig.engine.stop()


async def test_an_account_out_of_time_before_any_read_names_what_it_knew_of_as_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A venue that never answers: the account overruns its deadline before any read. Its
    report named nothing open (`orders: []`); it now names the orders it knew of and did not
    see cancelled, unverified."""
    monkeypatch.setattr(waves, "_GUARD_S", 0.05)
    venue = FakeExchange("binance", "mm-1")
    venue.place("BTCUSDT", n=2)
    tracker = StaticTracker(held=await venue.snapshot())
    never = asyncio.Event()
    venue.hold("snapshot", never)
    venue.hold("cancel_all", never)
    config = replace(QUICK, deadline_s=0.1)
    rig = await make_rig(tmp_path, {"binance": venue}, config=config, binance={"tracker": tracker})
    await rig.engine.submit(kill_trigger())
    kill = await finished(rig)
    assert kill.state is KillState.FAILED  # type: ignore[attr-defined]
    result = next(iter(kill.accounts.values()))  # type: ignore[attr-defined]
    assert result.still_open is not None
    assert not result.still_open.complete
    assert {o.order_id for o in result.still_open.orders} == venue.open_ids()
    await rig.engine.stop()


async def test_an_account_whose_last_sweep_failed_says_so_in_status(tmp_path: Path) -> None:
    """Operators see a failed sweep (an order in a latched scope may still be open) in
    `killswitch status`, not only as a `failed` event; a flat sweep is quiet."""
    binance, mexc = FakeExchange("binance", "mm-1"), FakeExchange("mexc", "mm-1")
    rig = await make_rig(tmp_path, {"binance": binance, "mexc": mexc})
    await rig.engine.submit(kill_trigger())
    await finished(rig)
    before = {a["venue"]: a["last_sweep"] for a in rig.engine.status()["accounts"]}  # type: ignore[union-attr]
    assert before == {"binance": "none", "mexc": "none"}
    mexc.place("BTCUSDT", "rogue")
    mexc.fail("cancel_all", Fatal("key lacks the trade permission", venue="mexc"), times=99)
    await rig.engine.sweep()
    after = {a["venue"]: a["last_sweep"] for a in rig.engine.status()["accounts"]}  # type: ignore[union-attr]
    assert after == {"binance": "flat", "mexc": "stopped"}
    text = format_status(rig.engine.status())
    assert "last sweep of mexc/mm-1: STOPPED" in text
    assert "last sweep of binance" not in text
    await rig.engine.stop()
