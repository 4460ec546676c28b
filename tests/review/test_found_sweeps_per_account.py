"""Review: the sweep of latched scopes ("an order in a latched scope is cancelled within
`sweep_interval_s`, whatever shows it").

* `Engine.sweep` skipped a latched scope while any kill over it was not done, and a kill is done
  only when every account is: one slow account (up to the deadline and its guard) kept every
  other account of the scope unswept.
* The sweeper ran one sweep at a time and waited for all of it: one account whose venue hung
  held every sweep for its deadline, and no other account was swept meanwhile.

Sweeps now run per account: an account is skipped only while a kill over the scope is still
in its waves there, or its own last sweep still runs, and the sweeper does not wait.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tests.conftest import eventually
from tests.fakes import MEXC_CAPS, FakeExchange
from tests.review.helpers import ReadsFake
from tests.unit.test_engine import QUICK, finished, kill_trigger, make_rig


async def test_a_flat_account_is_swept_while_another_account_of_the_kill_is_slow(
    tmp_path: Path,
) -> None:
    binance = FakeExchange("binance", "b1")
    mexc = ReadsFake("mexc", "m1", MEXC_CAPS)
    binance.place("BTCUSDT", "a-", n=2)
    mexc.place("BTCUSDT", "a-", n=2)
    rig = await make_rig(tmp_path, {"binance": binance, "mexc": mexc})
    try:
        mexc.hold_from = 2  # MEXC's verification is slow (a 429 storm, a slow venue)
        await rig.engine.submit(kill_trigger("k1"))
        k1 = rig.engine.kill_for("k1")
        assert k1 is not None
        await eventually(
            lambda: any(
                r.state.value == "flat" for r in k1.accounts.values() if r.ref.venue == "binance"
            )
        )
        (rogue,) = binance.place("ETHUSDT", "rogue")  # in k1's latch; no stream shows it
        await rig.engine.sweep()  # what the sweeper does every sweep_interval_s
        assert ("ETHUSDT", rogue) not in binance.open_keys()
    finally:
        mexc.release.set()
        await rig.engine.stop(grace_s=0.01)


async def test_a_hanging_account_does_not_stop_the_others_being_swept(tmp_path: Path) -> None:
    binance = FakeExchange("binance", "b1")
    mexc = ReadsFake("mexc", "m1", MEXC_CAPS)
    config = replace(QUICK, sweep_interval_s=0.05)
    rig = await make_rig(tmp_path, {"binance": binance, "mexc": mexc}, config=config)
    try:
        await rig.engine.submit(kill_trigger("k1"))
        await finished(rig, "k1")
        mexc.hold_from = mexc.reads + 1  # MEXC stops answering reads (maintenance)
        await eventually(lambda: mexc.reads >= (mexc.hold_from or 0))  # a sweep is stuck there
        (rogue,) = binance.place("ETHUSDT", "rogue")  # latched; no stream shows it
        await eventually(lambda: ("ETHUSDT", rogue) not in binance.open_keys(), timeout_s=2.0)
    finally:
        mexc.release.set()
        await rig.engine.stop(grace_s=0.01)


async def test_two_latches_that_narrow_to_one_scope_sweep_an_account_once(
    tmp_path: Path,
) -> None:
    """Latches over a venue and over an account name contain neither each other, but both
    narrow to the same scope on that account: one sweep, one read."""
    venue = FakeExchange("binance", "b1")
    rig = await make_rig(tmp_path, {"binance": venue})
    try:
        await rig.engine.submit(kill_trigger("kv", venues=["binance"]))
        await rig.engine.submit(kill_trigger("ka", accounts=["b1"]))
        await finished(rig, "kv")
        await finished(rig, "ka")
        started = await rig.engine.sweep()
        assert len(started) == 1
    finally:
        await rig.engine.stop()
