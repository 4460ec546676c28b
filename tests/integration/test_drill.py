"""`killswitch drill --live` against the simulator: through a running daemon, in-process when none
runs, and every refusal and failure path. The simulator's books are the judge."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from killswitch.control_client import request
from killswitch.sim.faults import Fault, FaultKind
from killswitch.sinks.audit import read_audit
from tests.fixtures.live_rig import MEXC_REASON, Rig, cli, make_rig, running_daemon

SYMBOLS = {"binance": "BTCUSDT", "mexc": "BTCUSDT", "bingx": "BTC-USDT"}


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    made = await make_rig(tmp_path, bad={"mexc"}, engine={"quiet_window_s": 0.2})
    yield made
    await made.cluster.stop()


def books(rig: Rig) -> dict[str, list[tuple[str, str]]]:
    """Every open order on every venue, as (symbol, client id)."""
    return {
        f"{venue}/{name}": sorted(
            (o.symbol, o.client_order_id) for o in sim.book(account).open_orders()
        )
        for venue, sim in rig.cluster.venues.items()
        for name, account in sim.accounts.items()
    }


def drill_args(venue: str, *extra: str) -> list[str]:
    return [
        "drill", "--live", "--venue", venue, "--account", "mm-1", "--symbol", SYMBOLS[venue],
        "--price", "1.5", *extra,
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("venue", ["binance", "bingx"])
async def test_a_drill_through_the_running_daemon_kills_only_its_order_and_releases_its_latch(
    rig: Rig, venue: str
) -> None:
    before = books(rig)
    assert all(before.values())  # other orders are open on every account, the drill symbol too
    async with running_daemon(rig):
        code, out, err = await cli(rig, *drill_args(venue, "--yes"))
        assert code == 0, out + err
        status = (await asyncio.to_thread(request, rig.socket, {"op": "status"}))["status"]
    assert "RESULT: PASS" in out
    assert "order gone from the venue (read back): yes" in out
    assert "drill latch released: yes" in out
    assert "time to first cancel " in out
    assert " ms, time to flat " in out
    assert "via the running daemon" in out
    assert books(rig) == before  # every other order still open, and no drill order left
    assert status["latched"] is False
    audit = read_audit(rig.workdir / "state" / "audit.jsonl")
    [triggered] = [r for r in audit if r["type"] == "triggered"]
    trigger = triggered["trigger"]
    assert trigger["source"] == "drill"
    assert trigger["scope"]["client_order_id_prefix"].startswith("ksdrill_")
    [reset] = [r for r in audit if r["type"] == "reset"]
    assert reset["origin"] == "drill"
    assert [x["trigger_id"] for x in reset["released"]] == [trigger["id"]]
    for secret in rig.secrets():
        assert secret not in out + err
    # the drill's own reads never throttled the daemon's kill (shared per-second limits)
    log = (rig.workdir / "daemon.log").read_text()
    assert "rate limited" not in log
    assert "100410" not in log


async def test_a_drill_leaves_an_operators_latch_alone(rig: Rig) -> None:
    async with running_daemon(rig):
        fired = await asyncio.to_thread(
            request,
            rig.socket,
            {
                "op": "fire",
                "reason": "operator",
                "venues": ["binance"],
                "symbols": ["ETHUSDT"],
                "wait": "done",
            },
            timeout_s=60,
        )
        assert fired["ok"] is True, orjson.dumps(fired).decode()
        code, out, err = await cli(rig, *drill_args("binance", "--yes"))
        assert code == 0, out + err
        status = (await asyncio.to_thread(request, rig.socket, {"op": "status"}))["status"]
    assert [latch["trigger_id"] for latch in status["latches"]] == [fired["trigger_id"]]


@pytest.mark.slow
async def test_without_a_daemon_the_drill_runs_in_process_and_is_audited(rig: Rig) -> None:
    before = books(rig)
    code, out, err = await cli(rig, *drill_args("binance", "--yes"))
    assert code == 0, out + err
    assert "via an engine in this process" in out
    assert books(rig) == before
    audit = read_audit(rig.workdir / "state" / "audit.jsonl")
    assert [r["trigger"]["source"] for r in audit if r["type"] == "triggered"] == ["drill"]
    [drill] = [r for r in audit if r["type"] == "drill"]
    assert drill["state"] == "confirmed"
    assert drill["account"] == "binance/mm-1"


async def test_a_drill_is_refused_without_yes_or_live_and_places_nothing(rig: Rig) -> None:
    before = books(rig)
    code, _, err = await cli(rig, *drill_args("binance"))
    assert code == 2
    assert "add --yes" in err
    args = drill_args("binance", "--yes")
    args.remove("--live")
    code, _, err = await cli(rig, *args)
    assert code == 2
    assert "--live" in err
    assert books(rig) == before


async def test_a_drill_on_an_unready_account_is_refused_with_the_reason(rig: Rig) -> None:
    before = books(rig)
    code, _, err = await cli(rig, *drill_args("mexc", "--yes"))  # no daemon: checked here
    assert code == 2
    assert f"mexc/mm-1 is not ready: {MEXC_REASON}" in err
    async with running_daemon(rig):
        code, _, err = await cli(rig, *drill_args("mexc", "--yes"))  # the daemon's reason
    assert code == 2
    assert f"mexc/mm-1 is not ready: {MEXC_REASON}" in err
    assert books(rig) == before
    for secret in rig.secrets():
        assert secret not in err


async def test_a_drill_on_an_unknown_account_or_symbol_is_refused(rig: Rig) -> None:
    before = books(rig)
    args = drill_args("binance", "--yes")
    args[args.index("mm-1")] = "mm-typo"
    code, _, err = await cli(rig, *args)
    assert code == 2
    assert "no account binance/mm-typo" in err
    args = drill_args("binance", "--yes")
    args[args.index("BTCUSDT")] = "NOPEUSDT"
    code, _, err = await cli(rig, *args)
    assert code == 2
    assert "NOPEUSDT" in err
    assert books(rig) == before


@pytest.mark.slow
async def test_without_a_price_the_drill_bids_far_under_the_venues_best_bid(rig: Rig) -> None:
    before = books(rig)
    args = drill_args("binance", "--yes")
    del args[args.index("--price") : args.index("--price") + 2]
    code, out, err = await cli(rig, *args)
    assert code == 0, out + err
    bids = [
        o.price
        for o in rig.cluster.venues["binance"]
        .book(rig.cluster.venues["binance"].accounts["mm-1"])
        .open_orders(["BTCUSDT"])
        if o.side == "BUY"
    ]
    best = max(bids, default=Decimal(100))
    assert f"note: best bid {best.normalize():f}; drill price 80% of it" in out
    assert f"@ {(best * Decimal('0.8')).normalize():f}," in out
    assert books(rig) == before


async def test_a_drill_on_a_key_that_may_not_trade_is_refused(rig: Rig) -> None:
    rig.cluster.venues["binance"].trade_disabled = frozenset({"mm-1"})  # type: ignore[attr-defined]
    code, _, err = await cli(rig, *drill_args("binance", "--yes"))
    assert code == 2
    assert "binance/mm-1 is not ready: key may not trade: canTrade=false" in err


@pytest.mark.slow
async def test_a_drill_whose_kill_does_not_prove_flat_removes_its_own_order(rig: Rig) -> None:
    before = books(rig)
    sim = rig.cluster.venues["binance"]
    # The kill's one cancel (ws-api) is held past every timeout; the drill's own goes through.
    sim.faults.add(
        Fault(FaultKind.STALL, account="mm-1", endpoint="order.cancel", count=1, stall_s=30)
    )
    code, out, err = await cli(rig, *drill_args("binance", "--yes", "--timeout", "1"))
    assert code == 1, out + err
    assert "RESULT: FAIL" in out
    assert "cleanup: the drill cancelled its own order" in out
    assert books(rig) == before
