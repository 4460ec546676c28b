"""Kills against the real simulators: real connectors, real streams, the sim's books as truth."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from killswitch.drill.demo import BASES, symbol
from killswitch.kill.config import EngineConfig
from killswitch.kill.record import AccountState, KillState
from killswitch.model import Mode, Scope, Trigger
from killswitch.sim.book import OrderSpec
from killswitch.sim.rogue import RogueBot
from tests.conftest import eventually
from tests.fakes import StaticTracker
from tests.fixtures.kill import FAST, kill_rig


def trigger(trigger_id: str = "k1", **scope: object) -> Trigger:
    now = int(time.time() * 1000)
    return Trigger(trigger_id, "test", Mode.KILL, "test", Scope.of(**scope), created_ms=now)  # type: ignore[arg-type]


async def test_kill_across_three_venues_ends_flat_with_every_book_empty(tmp_path: Path) -> None:
    async with kill_rig(tmp_path) as rig:
        before = rig.all_open()
        assert all(n > 0 for n in before.values())
        await rig.engine.submit(trigger())
        kill = await rig.finished("k1")

        assert kill.state is KillState.CONFIRMED
        assert rig.all_open() == dict.fromkeys(before, 0)
        assert all(not rig.book(label).lists for label in before)
        for result in kill.accounts.values():
            assert result.state is AccountState.FLAT
            assert len(result.cancelled) == before[str(result.ref)]
        assert rig.log.of("flat")
        assert rig.log.of("confirmed")


async def test_an_order_placed_by_the_rogue_bot_during_the_kill_is_cancelled(
    tmp_path: Path,
) -> None:
    async with kill_rig(tmp_path) as rig:
        target = rig.account("bingx/mm-1")
        bot = RogueBot(
            venue="bingx",
            rest_url=rig.sim("bingx").base_url,
            api_key=target.api_key,
            api_secret=target.secret,
            symbols=[symbol("bingx", b) for b in BASES[:2]],
            rate_per_s=8.0,
            client_id_prefix="rogue_",
        )
        await bot.start()
        await bot.wait_placed(2)
        await rig.engine.submit(trigger())
        kill = rig.engine.kill_for("k1")
        assert kill is not None
        await kill.done.wait()
        placed_at_flat = bot.placed
        await bot.wait_placed(placed_at_flat + 3)  # orders placed after the kill proved flat
        await bot.stop()

        await eventually(lambda: rig.all_open() == dict.fromkeys(rig.all_open(), 0), timeout_s=20)
        assert rig.log.of("stream_cancel")
        await rig.finished("k1")


async def test_a_5xx_after_the_cancel_applied_is_reread_not_resent_and_not_double_counted(
    tmp_path: Path,
) -> None:
    async with kill_rig(tmp_path) as rig:
        label = "bingx/mm-1"
        before = rig.open_orders(label)
        rig.fault(
            "bingx",
            kind="error_after",
            account="mm-1",
            endpoint="/openApi/spot/v1/trade/cancelOpenOrders",
            http_status=500,
            count=1,
        )
        await rig.engine.submit(trigger("k5", venues=["bingx"], accounts=["mm-1"]))
        kill = await rig.finished("k5")

        assert kill.state is KillState.CONFIRMED
        assert rig.open_orders(label) == 0
        outcome = next(r for r in rig.log.of("outcome") if r["request"] == "cancel_all_account")
        assert outcome["result"] == "verified"
        counters = rig.sim("bingx").counters
        assert counters["faults error_after"] == 1
        # One send, answered 500 after it applied; the re-read showed it done: no second send.
        assert counters["requests POST /openApi/spot/v1/trade/cancelOpenOrders"] == 1
        result = next(iter(kill.accounts.values()))
        assert len(result.cancelled) == before


async def test_a_429_storm_is_waited_out_with_zero_418s(tmp_path: Path) -> None:
    async with kill_rig(tmp_path) as rig:
        for venue in ("binance", "mexc", "bingx"):
            rig.fault(venue, kind="rate_limit", account="mm-1", count=4, retry_after_s=1)
        await rig.engine.submit(trigger("k429"))
        kill = await rig.finished("k429")

        assert kill.state is KillState.CONFIRMED
        assert all(n == 0 for n in rig.all_open().values())
        limited = sum(r.rate_limited for r in kill.accounts.values())
        assert limited >= 4
        for venue in ("binance", "mexc", "bingx"):
            assert rig.sim(venue).counters["http 418"] == 0


async def test_scoped_kill_of_one_account_symbol_and_prefix_leaves_the_rest_untouched(
    tmp_path: Path,
) -> None:
    async with kill_rig(tmp_path) as rig:
        label = "binance/mm-1"
        book = rig.book(label)
        target = [
            book.place(OrderSpec("BTCUSDT", client_order_id=f"strat7-{i}")).order_id
            for i in range(3)
        ]
        other_symbol = book.place(OrderSpec("ETHUSDT", client_order_id="strat7-eth")).order_id
        untouched = {a.label: set(rig.book(a.label).orders) for a in rig.accounts}
        untouched[label] -= set(target)

        await rig.engine.submit(
            trigger(
                "ks",
                venues=["binance"],
                accounts=["mm-1"],
                symbols=["BTCUSDT"],
                client_order_id_prefix="strat7-",
            )
        )
        kill = await rig.finished("ks")

        assert kill.state is KillState.CONFIRMED
        assert not set(target) & set(book.orders)
        assert other_symbol in book.orders
        for acc in rig.accounts:
            assert set(rig.book(acc.label).orders) == untouched[acc.label]
        requests = {r["request"] for r in rig.log.of("outcome")}
        assert requests <= {"cancel_order", "cancel_orders"}


async def test_a_kill_whose_deadline_passes_reports_exactly_what_is_still_open(
    tmp_path: Path,
) -> None:
    config = EngineConfig(deadline_s=2.0, retry_initial_s=0.05, retry_max_s=0.3, quiet_window_s=0.2)
    async with kill_rig(tmp_path, config=config) as rig:
        for endpoint in ("/openApi/spot/v1/trade/cancel*", "/openApi/spot/v1/oco/cancel"):
            rig.fault(
                "bingx", kind="error_before", account="mm-2", endpoint=endpoint, http_status=503
            )
        stuck = {o.order_id for o in rig.book("bingx/mm-2").orders.values()}
        await rig.engine.submit(trigger("kd"))
        kill = await rig.finished("kd")

        assert kill.state is KillState.FAILED
        failed = rig.log.of("failed")[-1]
        still = failed["still_open"]
        assert isinstance(still, dict)
        assert list(still) == ["bingx/mm-2"]
        assert {o["order_id"] for o in still["bingx/mm-2"]["orders"]} == stuck
        assert still["bingx/mm-2"]["verified"] is True
        assert {o.order_id for o in rig.book("bingx/mm-2").orders.values()} == stuck
        others = {k: v for k, v in rig.all_open().items() if k != "bingx/mm-2"}
        assert set(others.values()) == {0}
        assert rig.engine.latched()


async def test_orders_already_gone_cause_no_retry_and_no_crash(tmp_path: Path) -> None:
    async with kill_rig(tmp_path, supervise=False) as rig:
        label = "binance/mm-2"
        book = rig.book(label)
        ids = [
            book.place(OrderSpec("BTCUSDT", client_order_id=f"desk9-{i}")).order_id
            for i in range(6)
        ]
        stale = await rig.exchanges[label].snapshot(None)
        for order_id in ids[:4]:
            book.cancel(order_id)  # gone on the venue; our stale view still holds them
        account = rig.engine.accounts[next(r for r in rig.engine.accounts if str(r) == label)]
        account.tracker = StaticTracker(held=stale)

        await rig.engine.submit(
            trigger("kg", venues=["binance"], accounts=["mm-2"], client_order_id_prefix="desk9-")
        )
        kill = await rig.finished("kg")

        assert kill.state is KillState.CONFIRMED
        assert not set(ids) & set(book.orders)
        result = next(iter(kill.accounts.values()))
        assert result.retries == 0
        results = [r["result"] for r in rig.log.of("outcome")]
        assert results.count("gone") == 4
        assert results.count("ok") == 2


async def test_a_latched_restart_sweeps_what_appeared_while_down_before_start_returns(
    tmp_path: Path,
) -> None:
    async with kill_rig(tmp_path, supervise=False) as rig:
        await rig.engine.submit(trigger("kr", venues=["mexc"]))
        await rig.finished("kr")
        await rig.engine.stop()
        book = rig.book("mexc/mm-2")
        for i in range(4):
            book.place(OrderSpec("SOLUSDT", client_order_id=f"late-{i}"))

        from killswitch.journal import Journal
        from killswitch.kill.engine import Engine

        again = Engine(
            list(rig.engine.accounts.values()), Journal(tmp_path / "journal.jsonl"), FAST
        )
        await asyncio.wait_for(again.start(), 30)
        assert rig.open_orders("mexc/mm-2") == 0  # swept before start() returned
        assert again.latched()
        await again.stop()


@pytest.mark.slow
async def test_bingx_dead_mans_switch_is_kept_armed_while_running_and_fires_when_we_are_gone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with kill_rig(tmp_path, supervise=False, dead_mans_switch_s={"bingx/mm-1": 10}) as rig:
        sim = rig.sim("bingx")
        sim.dms_time_scale = 0.45  # 10 s on the venue is 4.5 s here; we re-arm every 3.3 s
        arms = "requests POST /openApi/spot/v1/trade/cancelAllAfter"
        await eventually(lambda: sim.counters[arms] >= 3, timeout_s=20)  # armed, re-armed
        assert sim.counters["dead_mans_switch fired"] == 0
        assert rig.open_orders("bingx/mm-1") > 0
        assert rig.engine.status()["accounts"]  # type: ignore[truthy-bool]

        with caplog.at_level("WARNING", logger="killswitch.kill.latched"):
            await rig.engine.stop()  # the daemon is gone: nobody re-arms
        # ...and it says so as it goes (review 95: a stop flattened the account silently).
        said = [r.getMessage() for r in caplog.records if "left armed" in r.getMessage()]
        assert said == [
            "dead man's switch left armed account=bingx/mm-1: the venue cancels every order "
            "on the account within 10 s of its last arm unless a daemon re-arms it"
        ]
        await eventually(lambda: sim.counters["dead_mans_switch fired"] == 1, timeout_s=20)
        await eventually(lambda: rig.open_orders("bingx/mm-1") == 0, timeout_s=10)
        assert rig.open_orders("bingx/mm-2") > 0  # its switch was never armed
