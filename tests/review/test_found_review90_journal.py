"""Review 90 F1: a failure that a reset or a flat kill resolved came back.

A joined kill writes one `kill_done` record per trigger, one after another, each waiting its
turn on the journal, so other records land between them. A reset that released the kill's
triggers, a flat kill journaled after the failure, or newer failures pushing it out settled it
after the first record; the next record's identical summary was taken for a new failure (naming
triggers already released), and compaction kept it: `status` showed it again, across restarts.

The fix: the journal remembers the ends that left `failed` (`JournalState.settled`, written by
compaction) and a later record of one adds nothing; a failed end whose triggers resets released
already adds nothing either. The property in test_found_review88_resolvable.py writes a kill's
later records between any others.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from killswitch.journal import FileOps, Journal, replay
from killswitch.journal import state as journal_state
from killswitch.model import Mode, Scope, Trigger

EVERYTHING = Scope()


class NoSync(FileOps):
    def fsync(self, fd: int) -> None:
        pass


def _open(path: Path) -> Journal:
    journal = Journal(path, compact_bytes=2**40, ops=NoSync())
    journal.open()
    return journal


def _reopened(journal: Journal) -> Journal:
    journal.compact()
    journal.close()
    return _open(journal.path)


def _trigger(journal: Journal, trigger_id: str, mode: Mode = Mode.KILL) -> None:
    journal.record_trigger(Trigger(trigger_id, "test", mode, "r", EVERYTHING))


def _summary(kill_id: str, *trigger_ids: str, ended_ms: int = 1) -> dict[str, object]:
    return {
        "kill_id": kill_id,
        "kind": "trigger",
        "scope": EVERYTHING.to_json(),
        "trigger_ids": [kill_id, *trigger_ids],
        "ended_ms": ended_ms,
    }


def _done(journal: Journal, trigger_id: str, state: str, summary: dict[str, object]) -> None:
    journal.append("kill_done", trigger_id=trigger_id, state=state, summary=summary)


def _reset(journal: Journal, *released: str) -> None:
    journal.append("reset", actor="ops", reason="r", released=list(released))


@pytest.mark.parametrize("compacted", [False, True], ids=["plain", "compacted"])
def test_a_reset_between_a_joined_kills_records_resolves_its_failure_for_good(
    tmp_path: Path, compacted: bool
) -> None:
    journal = _open(tmp_path / "journal.jsonl")
    _trigger(journal, "k1")
    _trigger(journal, "k1b")
    summary = _summary("k1", "k1b")
    _done(journal, "k1", "failed", summary)
    _reset(journal, "k1", "k1b")
    assert not journal.state.failed
    if compacted:  # a compaction (and restart) between the records too
        journal = _reopened(journal)
    _done(journal, "k1b", "failed", summary)
    assert not journal.state.failed
    journal = _reopened(journal)
    assert not journal.state.failed
    journal.close()


@pytest.mark.parametrize("compacted", [False, True], ids=["plain", "compacted"])
def test_a_flat_kill_between_a_joined_kills_records_resolves_its_failure_for_good(
    tmp_path: Path, compacted: bool
) -> None:
    journal = _open(tmp_path / "journal.jsonl")
    _trigger(journal, "k1")
    _trigger(journal, "k1b")
    summary = _summary("k1", "k1b")
    _done(journal, "k1", "failed", summary)
    _trigger(journal, "c2", Mode.CANCEL)
    _done(journal, "c2", "flat", _summary("c2", ended_ms=2))
    assert not journal.state.failed
    if compacted:
        journal = _reopened(journal)
    _done(journal, "k1b", "failed", summary)
    assert not journal.state.failed
    assert not _reopened(journal).state.failed


def test_a_failure_pushed_out_between_its_records_stays_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_state, "FAILED_KEPT", 2)
    journal = _open(tmp_path / "journal.jsonl")
    _trigger(journal, "k1")
    _trigger(journal, "k1b")
    summary = _summary("k1", "k1b")
    _done(journal, "k1", "failed", summary)
    for n in (2, 3):
        _trigger(journal, f"k{n}")
        _done(journal, f"k{n}", "failed", _summary(f"k{n}", ended_ms=n))
    assert list(journal.state.failed) == ["k2", "k3"]
    assert journal.state.failed_dropped == 1
    _done(journal, "k1b", "failed", summary)
    assert list(journal.state.failed) == ["k2", "k3"]
    assert journal.state.failed_dropped == 1
    journal.close()


def test_a_kill_id_failing_again_with_another_end_after_settling_is_a_new_failure(
    tmp_path: Path,
) -> None:
    """What f899972 keeps: the settled end is the summary, not the kill id."""
    journal = _open(tmp_path / "journal.jsonl")
    _trigger(journal, "k1")
    _done(journal, "k1", "failed", _summary("k1", ended_ms=1))
    _trigger(journal, "c2", Mode.CANCEL)
    _done(journal, "c2", "confirmed", _summary("c2", ended_ms=2))
    assert not journal.state.failed
    again = {**_summary("k1", ended_ms=3), "kind": "resume"}
    _done(journal, "k1", "failed", again)
    assert list(journal.state.failed) == ["k1"]
    assert journal.state.failed["k1"]["summary"] == again
    assert list(_reopened(journal).state.failed) == ["k1"]


def test_a_failed_end_whose_triggers_were_all_released_adds_no_failure(tmp_path: Path) -> None:
    journal = _open(tmp_path / "journal.jsonl")
    _trigger(journal, "k1")
    _trigger(journal, "k1b")
    _reset(journal, "k1", "k1b")
    _done(journal, "k1", "failed", _summary("k1", "k1b"))
    assert not journal.state.failed
    journal.close()


def test_a_failed_end_names_unreleased_only_the_triggers_no_reset_released(
    tmp_path: Path,
) -> None:
    journal = _open(tmp_path / "journal.jsonl")
    _trigger(journal, "k1")
    _trigger(journal, "k1b")
    _reset(journal, "k1b")
    _done(journal, "k1", "failed", _summary("k1", "k1b"))
    assert journal.state.failed["k1"]["unreleased"] == ["k1"]
    journal = _reopened(journal)
    assert journal.state.failed["k1"]["unreleased"] == ["k1"]
    _reset(journal, "k1")
    assert not journal.state.failed
    journal.close()


def test_compaction_writes_the_settled_ends_and_an_older_journal_reads_without_them(
    tmp_path: Path,
) -> None:
    journal = _open(tmp_path / "journal.jsonl")
    _trigger(journal, "k1")
    _trigger(journal, "k1b")
    _done(journal, "k1", "failed", _summary("k1", "k1b"))
    _reset(journal, "k1", "k1b")
    settled = list(journal.state.settled)
    assert len(settled) == 1
    journal.compact()
    journal.close()
    lines = [orjson.loads(line) for line in journal.path.read_bytes().splitlines()]
    seen = [r for r in lines if r["kind"] == "seen"]
    assert [r["settled"] for r in seen] == [settled]
    assert list(replay(journal.path)[0].settled) == settled
    # A journal compacted before the field existed reads back with nothing settled.
    older = tmp_path / "older.jsonl"
    older.write_bytes(
        b"".join(
            orjson.dumps({k: v for k, v in r.items() if k != "settled"}) + b"\n" for r in lines
        )
    )
    state, _ = replay(older)
    assert not state.settled
    assert not state.failed
