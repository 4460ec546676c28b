"""The probe-first gate, and the venue's own word on headroom that makes the probe unneeded.

After a quiet spell the first cancel of a kill goes alone (`kill.gate`), which costs a round
trip. Where the venue itself said moments ago that the account's limits have ample room
(Binance's used weight counts every client behind the IP), the state is known and the whole
first wave goes at once; a throttle, a stale count or a count past half the cap bring the
probe back.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from killswitch.exchanges.base import RateLimited, RateLimits
from killswitch.exchanges.budget import RateBudget
from killswitch.kill.config import EngineConfig
from killswitch.kill.gate import Gate
from killswitch.kill.record import KillState
from tests.fakes import FakeExchange
from tests.unit.test_engine import kill_trigger, make_rig

LIMITS = RateLimits(weight_per_window=1000, window_s=60.0, kill_headroom=0.1)


class Clock:
    def __init__(self, t: float = 120.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_a_quiet_account_probes_unless_the_venue_said_there_is_room() -> None:
    clock = Clock()
    known = [False]
    gate = Gate(EngineConfig(probe_first=True), clock, lambda: known[0])
    assert gate.mode == "probe"
    known[0] = True
    assert gate.mode == "open"
    assert Gate(EngineConfig(probe_first=True), clock).mode == "probe"  # never known


async def test_our_own_429_keeps_the_account_careful_whatever_the_venue_said() -> None:
    clock = Clock()
    gate = Gate(EngineConfig(probe_first=True), clock, lambda: True)

    async def throttled() -> None:
        raise RateLimited("429", retry_after_s=1.0)

    with pytest.raises(RateLimited):
        await gate.run(throttled)
    assert gate.mode == "careful"


def test_headroom_is_known_only_while_the_venue_s_count_is_fresh_and_low() -> None:
    clock = Clock()
    budget = RateBudget(LIMITS, clock=clock)
    assert not budget.headroom_known(5.0)  # never heard
    budget.observe_used(100)
    assert budget.headroom_known(5.0)
    clock.t += 5.5
    assert not budget.headroom_known(5.0)  # stale: others may have spent it since
    budget.observe_used(449)
    assert budget.headroom_known(5.0)  # 449 + nothing in flight <= half of 900
    budget.observe_used(460)
    assert not budget.headroom_known(5.0)  # past half of what a kill may spend


def test_a_throttle_or_a_ban_makes_headroom_unknown() -> None:
    clock = Clock()
    budget = RateBudget(LIMITS, clock=clock)
    budget.observe_used(10)
    budget.block(2.0)
    assert not budget.headroom_known(5.0)
    clock.t += 2.5
    budget.observe_used(10)
    assert budget.headroom_known(5.0)
    budget.block(1.0, banned=True)
    clock.t += 1.5
    budget.observe_used(10)
    assert not budget.headroom_known(5.0)  # once banned, always probe first


def test_news_is_asked_for_once_per_interval_by_whoever_sees_it_due_first() -> None:
    clock = Clock()
    budget = RateBudget(LIMITS, clock=clock)
    assert budget.due_for_news(2.0)
    assert not budget.due_for_news(2.0)  # someone behind this IP is asking
    clock.t += 2.1
    budget.observe_used(5)  # an answer brought the count anyway
    assert not budget.due_for_news(2.0)
    clock.t += 2.1
    assert budget.due_for_news(2.0)


@pytest.mark.parametrize("known", [True, False])
async def test_the_first_wave_goes_whole_only_when_headroom_is_known(
    tmp_path: Path, known: bool
) -> None:
    binance = FakeExchange("binance", "mm-1")
    symbols = ("BTCUSDT", "ETHUSDT", "SOLUSDT")  # one cancel-all each on Binance
    for symbol in symbols:
        binance.place(symbol, n=2)
    rig = await make_rig(
        tmp_path,
        {"binance": binance},
        config=EngineConfig(deadline_s=10.0, quiet_window_s=0.01, sweep_interval_s=3600.0),
        binance={"symbols": symbols, "headroom_known": lambda: known},
    )
    try:
        await rig.engine.submit(kill_trigger("k1"))
        kill = rig.engine.kill_for("k1")
        assert kill is not None
        await kill.done.wait()
        assert kill.state is KillState.FLAT
        first = [w["requests"] for w in rig.log.of("wave") if w["wave"] == 1]
        # Known: the three cancels go together. Unknown: the probe goes alone, then the rest.
        assert first == ([3] if known else [1, 2])
        assert not binance.open_keys()
    finally:
        await rig.engine.stop()
