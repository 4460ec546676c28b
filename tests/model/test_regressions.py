"""Shrunk histories the model checker found, replayed as named regression tests.

Each test replays the minimal history (the rules of `KillHistory`, in order, with the promise
checks after every step and the quiescence checks at the end). Issue 11 numbers the bugs; a
history whose bug is still open is marked `xfail(strict=True)`, so it flips when fixed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from killswitch.model import Mode, Scope
from tests.model.machine import HAS_JOURNAL_OPS, KillHistory

Step = tuple[str, dict[str, Any]]
EVERYTHING = Scope.of()


pytestmark = pytest.mark.usefixtures("quiet_logs")


def replay(steps: Sequence[Step]) -> None:
    """Run `steps` on a fresh history, checking every promise after each and at the end."""
    machine = KillHistory()
    try:
        machine.boot(compact=False)
        machine.promises_hold()
        for name, arguments in steps:
            getattr(machine, name)(**arguments)
            machine.promises_hold()
    except BaseException:
        machine.broken = True
        raise
    finally:
        machine.teardown()


def submit(scope: Scope = EVERYTHING, mode: Mode = Mode.KILL) -> Step:
    return ("submit", {"scope": scope, "mode": mode, "source": "kafka"})


def place(account: int, symbol: int, prefix: str = "x-", n: int = 1) -> Step:
    return ("place", {"account": account, "symbol": symbol, "prefix": prefix, "n": n})


def advance(seconds: float) -> Step:
    return ("advance", {"seconds": seconds})


SETTLE: Step = ("settle", {})
TWINS: Step = ("place_twins", {"account": 0, "symbols": (0, 1), "prefix": "s7-"})
B1, X1 = 0, 3  # binance/b1, bingx/x1 in machine.ACCOUNTS


def test_a_kill_over_no_configured_account_is_never_flat() -> None:
    """#5: a scope naming no configured account was reported flat (vacuously)."""
    replay([submit(Scope.of(accounts=["zz"]))])


def test_a_kill_over_no_account_joined_to_a_running_kill_is_never_flat() -> None:
    """#5, found by the checker on the fixed engine: the zero-account check ran only for a
    kill of its own, so a trigger joined to a running kill was reported flat with it."""
    replay([submit(), submit(Scope.of(venues=["binance"], accounts=["x1"]))])


def test_a_cancel_cut_short_by_a_graceful_stop_ends_after_the_restart() -> None:
    """#2: a graceful stop journaled `kill_done aborted`; the restart never resumed the cancel
    (a crash would have): nothing reported its end."""
    replay([submit(mode=Mode.CANCEL), ("stop", {"grace_s": 0.0})])


def test_a_reset_racing_a_new_kill_releases_only_what_it_names() -> None:
    """#7: the reset computed its list before waiting for the journal, then cleared every
    latch: the kill journaled meanwhile was dropped and the audit did not name it."""
    replay(
        [
            ("reset_races_kill", {"scope": EVERYTHING, "reset_first": False, "picks": []}),
            place(B1, 0),
            SETTLE,
        ]
    )


def test_a_stream_cancel_is_not_skipped_for_an_id_another_symbol_used() -> None:
    """#8: Binance numbers orders per symbol; the stream cancel deduplicated by id alone and
    skipped ETHUSDT#1000 after cancelling BTCUSDT#1000. Found again by the checker after the
    engine's fix, with both orders in one stream burst: the planner kept one order per bare
    id."""
    replay([submit(), SETTLE, TWINS, SETTLE])


def test_a_one_shot_cancel_never_cancels_an_order_placed_after_it_proved_flat() -> None:
    """#9: the confirmation step ran for `cancel` too, and its re-check cancelled an order
    placed after the flat snapshot."""
    replay([submit(mode=Mode.CANCEL), place(B1, 0, "s7-"), SETTLE])


def test_a_capped_all_symbols_read_is_not_proof_of_flat() -> None:
    """#1: BingX's all-symbols read stops at a page; with the stream silent, the in-scope
    order was on no page, and the kill by prefix reported flat with it open. Found again by
    the checker once the read said it was incomplete: the kill failed instead, but nothing read
    the symbols one by one, so the latched order stayed open through every sweep."""
    replay(
        [
            ("stream_trouble", {"account": X1, "how": "mute"}),
            place(X1, 0, "x-", 4),
            place(X1, 0, "x-", 2),
            place(X1, 1, "s7-", 1),
            submit(Scope.of(client_order_id_prefix="s7-")),
            SETTLE,
        ]
    )


@pytest.mark.skipif(not HAS_JOURNAL_OPS, reason="the journal has no FileOps seam")
def test_a_short_journal_write_leaves_a_journal_that_reads_back() -> None:
    """#4: a short write then ENOSPC left half a record mid-file once the next append landed;
    the journal no longer read back."""
    replay(
        [
            ("disk_fault", {"kind": "short"}),
            submit(),
            submit(Scope.of(venues=["mexc"])),
            ("crash", {"torn": False}),
            ("restart", {}),
        ]
    )


def test_a_kill_over_no_account_is_not_joined_to_a_resumed_kill() -> None:
    """#5, found by the checker after the join fix: at a restart, a latched trigger whose scope
    covers no configured account was joined to another resumed kill and reported flat."""
    replay(
        [submit(), submit(Scope.of(accounts=["zz"])), ("crash", {"torn": False}), ("restart", {})]
    )
