"""Review 96, of 1c85520 (a kill's first look left to the verification read when the venue's
budget has no room for it): orders the tracker missed waited for every retry of the first
wave's cancels (until the deadline, when one kept failing), and the report's "before" counts
left them out (then the control answer asked "is the symbol right?" of a symbol whose order was
cancelled). Now a first try that fails brings the look at once, beside the retries; and the
first read after the wave counts what it shows as open before. (Left open: a cancel that
never answers its first try still holds the look back until the account's guard ends it.)

Each case runs with the look (fits=True, as before 1c85520) and without (fits=False); the fake
venue and engine rig of the engine's unit tests, on virtual time."""

from __future__ import annotations

from pathlib import Path

import pytest

from killswitch.exchanges.base import Transient
from killswitch.kill.record import Kill, KillState
from killswitch.model import Snapshot
from tests.fakes import FakeExchange, StaticTracker
from tests.unit.test_engine import Rig, kill_trigger, make_rig

LOOKS = pytest.mark.parametrize("fits", [True, False], ids=["look", "no-room"])


def wired(tracker: StaticTracker, fits: bool) -> dict[str, object]:
    """The account's wiring: the tracker, `first_look_fits` answering `fits`, an open gate."""
    return {
        "tracker": tracker,
        "symbols": ("BTCUSDT",),
        "first_look_fits": lambda _symbols: fits,
        "headroom_known": lambda: True,
    }


async def tracked_rig(tmp_path: Path, fits: bool) -> tuple[Rig, FakeExchange]:
    """3 BTC orders the tracker knows; 2 ETH orders it missed."""
    venue = FakeExchange("binance", "mm-1")
    venue.place("BTCUSDT", "desk1-", n=3)
    tracker = StaticTracker(await venue.snapshot())
    venue.calls.clear()
    venue.place("ETHUSDT", "desk1-m", n=2)
    return await make_rig(tmp_path, {"binance": venue}, binance=wired(tracker, fits)), venue


def btc_fails(venue: FakeExchange, times: int) -> None:
    busy = Transient("busy", venue="binance")
    venue.fail("cancel_all", busy, times=times, when=lambda args: args[0] == ("BTCUSDT",))


async def finished_kill(rig: Rig) -> Kill:
    """Fire the kill `t1` over everything and wait for its end."""
    await rig.engine.submit(kill_trigger())
    kill = rig.engine.kill_for("t1")
    assert kill is not None
    await kill.finished.wait()
    return kill


@LOOKS
async def test_orders_before_counts_what_the_tracker_missed(tmp_path: Path, fits: bool) -> None:
    rig, venue = await tracked_rig(tmp_path, fits)
    try:
        kill = await finished_kill(rig)
        assert kill.state is KillState.CONFIRMED, kill.state
        assert not venue.open_keys()
        (result,) = kill.accounts.values()
        assert result.orders_before == 5, (result.orders_before, len(result.cancelled))
    finally:
        await rig.engine.stop()


@LOOKS
async def test_a_tracked_cancel_failing_until_the_deadline_holds_no_missed_order_back(
    tmp_path: Path, fits: bool
) -> None:
    rig, venue = await tracked_rig(tmp_path, fits)
    btc_fails(venue, 10_000)
    try:
        await finished_kill(rig)
        left = sorted(s for s, _ in venue.open_keys())
        assert left == ["BTCUSDT"] * 3, f"orders the tracker missed left open: {left}"
    finally:
        await rig.engine.stop()


@LOOKS
async def test_the_look_goes_before_the_first_wave_s_retries_end(
    tmp_path: Path, fits: bool
) -> None:
    rig, venue = await tracked_rig(tmp_path, fits)
    btc_fails(venue, 4)
    try:
        await finished_kill(rig)
        calls = [(c.method, c.args[0] if c.args else None, c.result) for c in venue.calls]
        look = next(i for i, c in enumerate(calls) if c[0] == "snapshot")
        btc_done = calls.index(("cancel_all", ("BTCUSDT",), "cancelled=3"))
        assert look < btc_done, calls
        assert not venue.open_keys()
    finally:
        await rig.engine.stop()


@LOOKS
async def test_a_symbol_whose_order_only_a_read_showed_counts_as_open_before(
    tmp_path: Path, fits: bool
) -> None:
    # The control answer warns "nothing was open on XYZUSDT: is the symbol right?" when the
    # kill's orders_before is 0 for a symbol nobody configured.
    venue = FakeExchange("binance", "mm-1")
    venue.place("XYZUSDT", "desk1-x")
    rig = await make_rig(
        tmp_path, {"binance": venue}, binance=wired(StaticTracker(Snapshot()), fits)
    )
    try:
        await rig.engine.submit(kill_trigger(symbols=["BTCUSDT", "XYZUSDT"]))
        kill = rig.engine.kill_for("t1")
        assert kill is not None
        await kill.finished.wait()
        (result,) = kill.accounts.values()
        assert not venue.open_keys()
        assert len(result.cancelled) == 1
        assert result.orders_before == 1
    finally:
        await rig.engine.stop()
