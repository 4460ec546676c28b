"""Review 79, finding 4: which failed kills a later flat kill resolves was decided by wall-clock
times (the flat kill's `started_ms` against the failure's `ended_ms`).

A clock stepped back across a restart made a kill launched after a failure look launched before
it: the kill ended confirmed over the failed scope and status still said UNRESOLVED, for as long
as the clock was behind (a reset cannot clear a cancel's failure: it holds no latch). A step back
during two concurrent kills did the reverse, review 74's bug: a kill running since before a
failure resolved it. The journal's order decides now: a flat kill resolves only the failures
that had ended when its trigger was journaled, and compaction keeps that list.
"""

from __future__ import annotations

from pathlib import Path

from killswitch.journal import Journal
from killswitch.model import Mode, Scope, Trigger

EVERYTHING = Scope().to_json()


def _done(journal: Journal, kill_id: str, state: str, **times: int) -> None:
    summary = {"kill_id": kill_id, "kind": "trigger", "scope": EVERYTHING, **times}
    journal.append("kill_done", trigger_id=kill_id, state=state, summary=summary)


def _trigger(journal: Journal, trigger_id: str, mode: Mode = Mode.CANCEL) -> None:
    journal.record_trigger(Trigger(trigger_id, "test", mode, "r", Scope()))


def test_a_kill_launched_after_a_failure_resolves_it_whatever_the_wall_clock_said(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path / "journal.jsonl")
    journal.open()
    _trigger(journal, "c1")
    _done(journal, "c1", "failed", started_ms=10_000_000, ended_ms=10_000_500)
    # a restart with the clock an hour back: the next kill's times are before the failure's
    _trigger(journal, "k2", Mode.KILL)
    _done(journal, "k2", "confirmed", started_ms=6_400_000, ended_ms=6_400_900)
    assert not journal.state.failed
    journal.close()


def test_a_kill_running_since_before_a_failure_does_not_resolve_it_whatever_the_clock_said(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path / "journal.jsonl")
    journal.open()
    _trigger(journal, "k1", Mode.KILL)  # running
    _trigger(journal, "c2")
    # the clock stepped back while both ran: the failure looks as if it ended before k1 began
    _done(journal, "c2", "failed", started_ms=4_000, ended_ms=4_500)
    _done(journal, "k1", "flat", started_ms=5_000, ended_ms=9_000)
    assert list(journal.state.failed) == ["c2"]
    journal.close()


def test_compaction_keeps_which_failures_a_running_kill_may_resolve(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.jsonl")
    journal.open()
    _trigger(journal, "c0")
    _done(journal, "c0", "failed", started_ms=1_000, ended_ms=1_500)
    _trigger(journal, "k1", Mode.KILL)  # running: c0 had ended, it may resolve c0
    _trigger(journal, "c2")
    _done(journal, "c2", "failed", started_ms=2_000, ended_ms=2_500)  # ended while k1 ran
    journal.compact()
    journal.close()
    again = Journal(tmp_path / "journal.jsonl")
    again.open()
    _done(again, "k1", "flat", started_ms=1_800, ended_ms=3_000)
    assert list(again.state.failed) == ["c2"]
    again.close()
