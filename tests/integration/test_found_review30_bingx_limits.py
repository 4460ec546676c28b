"""Review 30, items 2-4: BingX limits the connector did not keep (DESIGN "No ban").

* Item 2: the listenKey calls are 2/s per UID and 2/s per IP (BingX 2026 reference,
  rate-limits §5; spot-ws-account "Rate limit: 2/s per UID"). The connector allowed 10/s per
  UID and kept no per-IP count, so every account's stream starting at once (daemon start, a
  network blip) sent them all in the same second. The simulator now counts them so.
* Item 3: a 418 ("IP has been banned. Stop requests and wait"; minutes to tens of minutes,
  never a Retry-After) whose text names no end was held 2 s, and the engine sent into the ban
  every 2 s for the whole kill. Now: the shortest documented ban (2 min), doubling while the
  IP stays banned, for every account behind it, and the account reports not ready. The
  simulator's `ban_form="plain"` answers a 418 without an epoch.
* Item 4: `common/symbols` is 1/s per IP (spot-market §1) but was budgeted in the 90-per-10-s
  market group, its list cached per connector: two capped snapshots read it twice at once.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from killswitch.exchanges.base import IpBanned
from killswitch.exchanges.bingx.venue import CANCEL, SYMBOLS, USER_DATA_STREAM
from killswitch.readiness.checks import check_rate
from killswitch.sim.bingx import VARIANTS
from tests.fakes import FakeClock
from tests.fixtures.bingx import bingx_venue, bx_call


# -- item 2: listenKeys ------------------------------------------------------------------------
async def test_every_accounts_listen_key_at_once_stays_inside_two_a_second_per_ip() -> None:
    async with bingx_venue(accounts=6, variant="strictest") as (sim, make_exchange):
        exchanges = [make_exchange(f"bx{i}", warm_connections=1) for i in range(6)]
        for exchange in exchanges:
            await exchange.start()
        keys = await asyncio.gather(*(ex.create_listen_key() for ex in exchanges))
        assert len(set(keys)) == 6
        assert sim.earned_throttles() == {}, "over BingX's listenKey limits"
        first, second = exchanges[:2]
        assert first.budgets[USER_DATA_STREAM].limit == 2
        assert first.ip_budgets[USER_DATA_STREAM].limit == 2
        assert first.ip_budgets[USER_DATA_STREAM] is second.ip_budgets[USER_DATA_STREAM]


async def test_the_sim_counts_listen_keys_per_uid_and_per_ip() -> None:
    async with bingx_venue(accounts=1, variant="strictest") as (sim, _):
        account = sim.accounts["bx0"]
        buckets = [key for key, _ in sim._buckets(USER_DATA_STREAM, "127.0.0.1", account)]
        assert buckets[:2] == [f"uid bx0 {USER_DATA_STREAM}", f"ip 127.0.0.1 {USER_DATA_STREAM}"]
        limits = [(sim._windows[b].limit, sim._windows[b].window_s) for b in buckets[:2]]
        assert limits == [(2, 1.0), (2, 1.0)]
        [symbols_ip, _] = [key for key, _ in sim._buckets(SYMBOLS, "127.0.0.1", None)]
        assert (sim._windows[symbols_ip].limit, sim._windows[symbols_ip].window_s) == (1, 1.0)


# -- item 3: a 418 naming no end --------------------------------------------------------------
def test_the_strictest_variant_bans_without_an_epoch() -> None:
    assert VARIANTS["strictest"].ban_form == "plain"
    assert VARIANTS["most_permissive"].ban_form == "epoch"


async def test_a_418_naming_no_end_holds_every_account_for_minutes_and_escalates() -> None:
    async with bingx_venue(accounts=2, ban_form="plain") as (sim, make_exchange):
        fake = FakeClock(time.monotonic())
        bx0 = make_exchange("bx0", budget_clock=fake.clock, budget_sleep=fake.sleep)
        bx1 = make_exchange("bx1", budget_clock=fake.clock, budget_sleep=fake.sleep)
        await bx0.start()
        await bx1.start()
        fake.sleeps.clear()
        # The venue bans our IP (for longer than any wait below, in its own real time).
        sim.ban_tracker(f"bx-key-0 {CANCEL}").banned_until = time.monotonic() + 900
        sent = sim.counters[f"requests POST {CANCEL}"]

        with pytest.raises(IpBanned) as info:
            await bx0.cancel_order("BTC-USDT", "1976495057808654337")
        assert "unblocked" not in info.value.msg  # no epoch named
        assert info.value.retry_after_s == 120.0
        assert sim.counters[f"requests POST {CANCEL}"] == sent + 1

        # Nothing more goes to the banned IP, from either account, on any path.
        with pytest.raises(IpBanned):
            await bx1.cancel_order("BTC-USDT", "1976495057808654337")
        with pytest.raises(IpBanned):
            await bx0.snapshot()
        assert sim.counters[f"requests POST {CANCEL}"] == sent + 1
        for exchange in (bx0, bx1):
            rate = check_rate(exchange)
            assert rate.ok is False
            assert rate.detail.startswith("IP banned until")

        # The guess ran out and the venue still bans: the next guess is twice as long.
        fake.now += 121.0
        with pytest.raises(IpBanned) as again:
            await bx0.cancel_order("BTC-USDT", "1976495057808654337")
        assert again.value.retry_after_s == 240.0
        assert sim.counters[f"requests POST {CANCEL}"] == sent + 2
        assert fake.sleeps == [], "no request waited inside a ban: each was refused at once"

        # The ban is over: a served request starts the guesses again.
        sim.bans.clear()
        fake.now += 241.0
        assert (await bx0.snapshot()).complete
        assert check_rate(bx0).ok is True
        sim.ban_tracker(f"bx-key-0 {CANCEL}").banned_until = time.monotonic() + 900
        with pytest.raises(IpBanned) as fresh:
            await bx0.cancel_order("BTC-USDT", "1976495057808654337")
        assert fresh.value.retry_after_s == 120.0


async def test_a_418_naming_its_end_is_held_until_then() -> None:
    async with bingx_venue(accounts=1, ban_form="epoch") as (sim, make_exchange):
        bx0 = make_exchange("bx0")
        await bx0.start()
        sim.ban_tracker(f"bx-key-0 {CANCEL}").banned_until = time.monotonic() + 30
        with pytest.raises(IpBanned) as info:
            await bx0.cancel_order("BTC-USDT", "1976495057808654337")
        assert 25.0 <= info.value.retry_after_s <= 32.0
        assert bx0.rate_headroom()["banned"] is True


# -- item 4: common/symbols ---------------------------------------------------------------------
async def test_accounts_behind_one_ip_share_one_symbol_read_at_one_a_second() -> None:
    async with bingx_venue(accounts=2, variant="strictest") as (sim, make_exchange):
        bx0, bx1 = make_exchange("bx0"), make_exchange("bx1")
        await bx0.start()
        await bx1.start()
        first, second = await asyncio.gather(bx0.venue_symbols(), bx1.venue_symbols())
        assert first == second
        assert "BTC-USDT" in first
        assert sim.counters[f"requests GET {SYMBOLS}"] == 1, "one read for the IP"
        assert sim.earned_throttles() == {}
        assert bx0.ip_budgets[SYMBOLS] is bx1.ip_budgets[SYMBOLS]
        assert bx0.ip_budgets[SYMBOLS].limit == 1
        # ... and it still counts in the market group with the server-time reads.
        assert bx0.charges.market in bx0.charges.path_budgets(SYMBOLS)


async def test_the_sim_refuses_a_second_symbol_read_in_a_second_per_ip() -> None:
    async with bingx_venue(accounts=1, variant="strictest") as (sim, _):
        async with aiohttp.ClientSession() as session:
            answers = [await bx_call(session, sim, "GET", SYMBOLS, query="") for _ in range(3)]
        # Three in a row within one second's window or two: at least one over 1/s.
        assert any(status == 429 for status, _, _ in answers)
