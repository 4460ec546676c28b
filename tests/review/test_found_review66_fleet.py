"""Review 66, finding 3: with `limits.daemons >= 6` the replicas together passed BingX's error
allowance (20 errors per API per 480 s).

Each daemon's share was floored at the reserve plus one (5), and a kill's read may spend a share
to its last but one (4): six replicas reading a flat account answered "No data" spent 24 and
earned the lock. The share is now `20 // daemons` (at least one), and a kill's read may spend a
share of one, so that a kill still gets its read.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from killswitch.exchanges import budget
from killswitch.exchanges.base import Priority, RateLimited
from killswitch.exchanges.bingx import BingxExchange
from killswitch.exchanges.bingx.venue import ERROR_LOCK_COUNT, OPEN_ORDERS
from killswitch.sim.bingx import BingxSim
from killswitch.sim.venue import SimAccount, VenueSettings
from tests.fakes import FakeClock
from tests.fixtures.answers import install
from tests.fixtures.bingx import account_keys
from tests.review.bingx_rig import bx0_exchange
from tests.review.test_found_review66_sweeps import held_by_us, sim_time_follows


@pytest.fixture
def one_fleet() -> Iterator[None]:
    yield
    budget.set_fleet(1)


@pytest.mark.usefixtures("one_fleet")
@pytest.mark.parametrize("daemons", [6, 16])
async def test_replicas_together_stay_within_bingx_s_error_allowance(
    daemons: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    budget.set_fleet(daemons)  # what `limits.daemons` does in each replica
    # The replicas' budgets wait on a clock that moves when they wait (a share of 2/s among
    # 16 is one read in 9 s); the sim's moves with it, and the 480 s window never passes.
    fake = FakeClock(1000.0)
    venue_wall = sim_time_follows(fake, monkeypatch)
    accounts = [SimAccount(name=n, api_key=k, secret=s) for n, k, s in (account_keys(0),)]
    # Each replica's share of a per-second limit is its own, and they may send in one second
    # together: the sim's rate limits are out of the way, its error lock is not.
    sim = BingxSim(VenueSettings(accounts=accounts, rate_limit_scale=50), empty_read="no_data")
    install(sim)
    await sim.start()
    replicas: list[BingxExchange] = []
    try:
        for _ in range(daemons):
            budget._SHARED.clear()  # each replica is a process of its own
            budget._USERS.clear()
            replica = bx0_exchange(sim, budget_clock=fake.clock, budget_sleep=fake.sleep)
            replica.clock.wall = venue_wall
            await replica.start()
            replicas.append(replica)
        answered = []
        for replica in replicas:  # each sweeps the latched, flat account as a kill reads
            reads = 0
            for _ in range(6):
                try:
                    await replica.snapshot(priority=Priority.KILL)
                except RateLimited as exc:
                    if not held_by_us(exc):
                        raise
                    continue
                reads += 1
            answered.append(reads)
        assert all(answered), answered  # a kill's read goes, whatever the share
        spent = sum(r.errors.count(OPEN_ORDERS) for r in replicas)
        assert spent <= ERROR_LOCK_COUNT, spent
    finally:
        for replica in replicas:
            await replica.close()
        await sim.stop()
    assert not {k: v for k, v in sim.counters.items() if "lock" in k or "100410" in k}
