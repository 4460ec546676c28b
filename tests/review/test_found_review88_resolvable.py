"""Review 88: compaction changed which failed kills a flat kill may resolve (`resolvable`).

A flat kill resolves the failures that had ended when its trigger was journaled (review 79).
The plain journal took that list once, at the trigger, and never pruned it: a failure resolved
meanwhile stayed on it, and when the same kill id failed again (a kill resumed after a restart,
or relaunched by a reset that narrowed it) the older trigger's flat end cleared the new failure
from `status`, though that failure ended after the trigger. Compaction writes only the failures
still held, so the compacted journal kept the new failure: the two read back differently.

The fix: a failure that ends is new to every trigger journaled before it (it leaves their
lists), and a failure resolved, released or dropped leaves every list at once.
"""

from __future__ import annotations

from pathlib import Path

from killswitch.journal import FileOps, Journal
from killswitch.model import Mode, Scope, Trigger

EVERYTHING = Scope()
BINANCE = Scope.of(["binance"])


class NoSync(FileOps):
    """The real file writes without the fsyncs: this test is about the fold, not the disk."""

    def fsync(self, fd: int) -> None:
        pass


def _open(path: Path) -> Journal:
    journal = Journal(path, compact_bytes=2**40, ops=NoSync())
    journal.open()
    return journal


def _trigger(journal: Journal, trigger_id: str, mode: Mode, scope: Scope = EVERYTHING) -> None:
    journal.record_trigger(Trigger(trigger_id, "test", mode, "r", scope))


def _done(
    journal: Journal, kill_id: str, state: str, *, kind: str = "trigger", **more: int
) -> None:
    summary = {"kill_id": kill_id, "kind": kind, "scope": EVERYTHING.to_json(), **more}
    journal.append("kill_done", trigger_id=kill_id, state=state, summary=summary)


def _reopened(journal: Journal) -> Journal:
    journal.compact()
    journal.close()
    return _open(journal.path)


def test_a_kill_id_failing_again_is_not_resolved_by_a_kill_journaled_before(
    tmp_path: Path,
) -> None:
    """Review 88's seeds, shortest: k1 fails, k2 is journaled (it may resolve that failure), c3
    resolves it, then k1 fails again (its kill resumed): k2's flat end predates the second
    failure and must leave it unresolved, in the plain journal as in its compaction."""
    for compacted in (False, True):
        journal = _open(tmp_path / f"journal-{compacted}.jsonl")
        _trigger(journal, "k1", Mode.KILL)
        _done(journal, "k1", "failed", ended_ms=1)
        _trigger(journal, "k2", Mode.KILL)
        _trigger(journal, "c3", Mode.CANCEL)
        _done(journal, "c3", "confirmed", ended_ms=2)
        assert not journal.state.failed
        _done(journal, "k1", "failed", kind="resume", ended_ms=3)
        assert journal.state.resolvable["k2"] == []
        if compacted:
            journal = _reopened(journal)
        _done(journal, "k2", "confirmed", ended_ms=4)
        assert list(journal.state.failed) == ["k1"], f"compacted={compacted}"
        journal.close()


def test_a_failure_still_held_that_ends_again_is_new_to_kills_journaled_before(
    tmp_path: Path,
) -> None:
    """k1 fails, k2 is journaled, k1 fails again before anything resolved the first failure:
    k2 ran since before the second one ended, and resolves neither."""
    journal = _open(tmp_path / "journal.jsonl")
    _trigger(journal, "k1", Mode.KILL)
    _done(journal, "k1", "failed", ended_ms=1)
    _trigger(journal, "k2", Mode.KILL)
    _done(journal, "k1", "failed", kind="resume", ended_ms=3)
    _done(journal, "k2", "flat", ended_ms=4)
    assert list(journal.state.failed) == ["k1"]
    assert journal.state.failed["k1"]["summary"] == {
        "kill_id": "k1",
        "kind": "resume",
        "scope": EVERYTHING.to_json(),
        "ended_ms": 3,
    }
    journal.close()


def test_one_failure_journaled_once_per_trigger_is_one_failure(tmp_path: Path) -> None:
    """A joined kill's end is journaled once per trigger, with one summary: a kill journaled
    between those records came after the failure, and resolves it."""
    journal = _open(tmp_path / "journal.jsonl")
    _trigger(journal, "k1", Mode.KILL, BINANCE)
    _trigger(journal, "k1b", Mode.KILL, BINANCE)
    summary = {"kill_id": "k1", "kind": "trigger", "scope": BINANCE.to_json()}
    summary |= {"trigger_ids": ["k1", "k1b"], "ended_ms": 1}
    journal.append("kill_done", trigger_id="k1", state="failed", summary=summary)
    _trigger(journal, "k2", Mode.KILL)
    journal.append("kill_done", trigger_id="k1b", state="failed", summary=summary)
    assert journal.state.resolvable["k2"] == ["k1"]
    _done(journal, "k2", "confirmed", ended_ms=2)
    assert not journal.state.failed
    journal.close()
