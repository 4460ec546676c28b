"""Review 88: compaction changed which failed kills a flat kill may resolve (`resolvable`).

A flat kill resolves the failures that had ended when its trigger was journaled (review 79).
The plain journal took that list once, at the trigger, and never pruned it: a failure resolved
meanwhile stayed on it, and when the same kill id failed again (a kill resumed after a restart,
or relaunched by a reset that narrowed it) the older trigger's flat end cleared the new failure
from `status`, though that failure ended after the trigger. Compaction writes only the failures
still held, so the compacted journal kept the new failure: the two read back differently.

The fix: a failure that ends is new to every trigger journaled before it (it leaves their
lists), and a failure resolved, released or dropped leaves every list at once. The property
below draws histories, journals each one twice (one copy compacted and reread at random) and
checks after every step that both read back alike and that every failure a trigger may resolve
had ended before that trigger was journaled.

Review 90: a joined kill writes its `kill_done` records one after another, each waiting its
turn on the journal, so a reset, a trigger or another kill's end lands between them. A reset or
a flat kill journaled there settled the failure, and the next record of the same end brought it
back (naming triggers already released), which compaction kept. The property also leaves the
records after a kill's first one pending, written by a rule of their own between any others,
and checks that an end that left `failed` never comes back and that a held failure names no
released trigger as unreleased.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from killswitch.journal import FileOps, Journal, JournalState
from killswitch.journal import state as journal_state
from killswitch.model import Mode, Scope, Trigger

EVERYTHING = Scope()
BINANCE = Scope.of(["binance"])
VENUES = ("binance", "mexc", "bingx")
SCOPES = st.one_of(
    st.just(EVERYTHING),
    st.lists(st.sampled_from(VENUES), min_size=1, max_size=2, unique=True).map(Scope.of),
)


class NoSync(FileOps):
    """The real file writes without the fsyncs: this test is about the fold, not the disk."""

    def fsync(self, fd: int) -> None:
        pass


def _open(path: Path) -> Journal:
    journal = Journal(path, compact_bytes=2**40, ops=NoSync())
    journal.open()
    return journal


def _bare(record: dict[str, object] | None) -> dict[str, object] | None:
    """A record without its write time (each copy of the journal stamps its own)."""
    return None if record is None else {k: v for k, v in record.items() if k != "ts_ms"}


def _view(state: JournalState) -> dict[str, Any]:
    """What a restart reads from the journal. The id sets as sets: compaction writes the
    latched and unfinished ids newest, which only keeps them longer."""
    return {
        "latches": {t: s.to_json() for t, s in state.latches.items()},
        "triggers": {t: trigger.to_json() for t, trigger in state.triggers.items()},
        "unfinished": sorted(state.unfinished),
        "flat_accounts": state.flat_accounts,
        "failed": [(k, _bare(v)) for k, v in state.failed.items()],
        "resolvable": state.resolvable,
        "last_kill": _bare(state.last_kill),
        "last_reset": _bare(state.last_reset),
        "seen": sorted(state.seen),
        "released": sorted(state.released),
        "reset_ids": sorted(state.reset_ids),
        "settled": list(state.settled),
    }


def _end(summary: object) -> tuple[str, int]:
    """One end of one kill in these histories (each end has its own `ended_ms`)."""
    assert isinstance(summary, dict)
    kill_id, ended_ms = summary["kill_id"], summary["ended_ms"]
    assert isinstance(kill_id, str)
    assert isinstance(ended_ms, int)
    return kill_id, ended_ms


class CompactedHistory(RuleBasedStateMachine):
    """One history journaled twice: `plain` as written, `compacted` compacted and reread."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="review88-"))
        self.plain = _open(self.dir / "plain.jsonl")
        self.compacted = _open(self.dir / "compacted.jsonl")
        self.step = 0
        self.scopes: dict[str, Scope] = {}  # trigger id -> scope, every trigger journaled
        self.journaled_at: dict[str, int] = {}  # trigger id -> step its trigger was journaled
        self.ended_at: dict[str, int] = {}  # kill id -> step its latest failure ended
        # kill id -> the `kill_done` records of its end not written yet, in order
        self.pending: dict[str, list[dict[str, object]]] = {}
        self.settled: dict[str, set[tuple[str, int]]] = {"plain": set(), "compacted": set()}

    def journals(self) -> tuple[Journal, Journal]:
        return self.plain, self.compacted

    def append(self, records: list[tuple[str, dict[str, object]]]) -> None:
        """Write to both copies; an end that leaves `failed` is settled and never comes back."""
        for name, journal in zip(("plain", "compacted"), self.journals(), strict=True):
            before = {_end(f.get("summary")) for f in journal.state.failed.values()}
            journal.append_many(records)
            held = {_end(f.get("summary")) for f in journal.state.failed.values()}
            back = held & self.settled[name]
            assert not back, f"{name}: the failed ends {sorted(back)} settled and came back"
            self.settled[name] |= before - held

    @rule(mode=st.sampled_from([Mode.KILL, Mode.KILL, Mode.CANCEL]), scope=SCOPES)
    def trigger(self, mode: Mode, scope: Scope) -> None:
        self.step += 1
        trigger_id = f"t{len(self.scopes) + 1}"
        trigger = Trigger(trigger_id, "control", mode, "r", scope, created_ms=1, received_ms=1)
        records: list[tuple[str, dict[str, object]]] = [("trigger", {"trigger": trigger.to_json()})]
        if mode is Mode.KILL:
            records.append(("latch", {"trigger_id": trigger_id, "scope": scope.to_json()}))
        self.append(records)
        self.scopes[trigger_id] = scope
        self.journaled_at[trigger_id] = self.step

    @precondition(lambda self: self.scopes)
    @rule(
        data=st.data(),
        state=st.sampled_from(["flat", "confirmed", "failed", "failed", "aborted"]),
        kind=st.sampled_from(["trigger", "trigger", "resume"]),
    )
    def kill_ends(self, data: st.DataObject, state: str, kind: str) -> None:
        """A kill ends: one `kill_done` per trigger of it, all with the same summary. Any
        kill id may end again (resumed after a restart, relaunched by a narrowing reset)."""
        ids = [t for t in sorted(self.scopes) if t not in self.pending]
        running = [t for t in sorted(self.plain.state.unfinished) if t in ids]
        of_running = bool(running) and data.draw(st.integers(0, 3), label="running") > 0
        kill_id = data.draw(st.sampled_from(running if of_running else ids), label="kill_id")
        joined = data.draw(st.lists(st.sampled_from(ids), max_size=2, unique=True), label="joined")
        trigger_ids = [kill_id, *(t for t in joined if t != kill_id)]
        # Review 90: the records after the first may wait their turn behind any others.
        later = len(trigger_ids) > 1 and data.draw(st.booleans(), label="records_wait")
        self.step += 1
        summary = {
            "kill_id": kill_id,
            "kind": kind,
            "scope": self.scopes[kill_id].to_json(),
            "trigger_ids": trigger_ids,
            "ended_ms": self.step,  # each end of a kill is its own summary
        }
        held = {j.path: dict(j.state.failed) for j in self.journals()}
        records = [{"trigger_id": t, "state": state, "summary": summary} for t in trigger_ids]
        if later:
            self.pending[kill_id] = records[1:]
            records = records[:1]
        for record in records:
            self.append([("kill_done", record)])
        if state == "failed":
            self.ended_at[kill_id] = self.step
            return
        for journal in self.journals():
            for failed_id in held[journal.path]:
                if failed_id not in journal.state.failed:
                    assert self.ended_at[failed_id] < self.journaled_at[kill_id], (
                        f"{journal.path.name}: {kill_id} (journaled at step "
                        f"{self.journaled_at[kill_id]}) resolved the failure of {failed_id} "
                        f"that ended at step {self.ended_at[failed_id]}"
                    )

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def kill_ends_next_record(self, data: st.DataObject) -> None:
        """The next `kill_done` record of a kill whose end was journaled in part."""
        kill_id = data.draw(st.sampled_from(sorted(self.pending)), label="pending_kill_id")
        record = self.pending[kill_id].pop(0)
        if not self.pending[kill_id]:
            del self.pending[kill_id]
        self.step += 1
        self.append([("kill_done", record)])

    @precondition(lambda self: self.scopes)
    @rule(data=st.data(), venue=st.sampled_from(VENUES))
    def account_flat(self, data: st.DataObject, venue: str) -> None:
        trigger_id = data.draw(st.sampled_from(sorted(self.scopes)), label="trigger_id")
        self.step += 1
        self.append([("account_flat", {"trigger_id": trigger_id, "account": f"{venue}/mm-1"})])

    @rule(data=st.data(), by_id=st.booleans())
    def reset(self, data: st.DataObject, by_id: bool) -> None:
        held = self.plain.state.latches
        names = (
            data.draw(st.lists(st.sampled_from(sorted(held)), unique=True), label="released")
            if held
            else []
        )
        self.step += 1
        fields: dict[str, object] = {
            "actor": "ops",
            "reason": "r",
            "origin": "control",
            "released": [{"trigger_id": t, "scope": held[t].to_json()} for t in names],
        }
        if by_id:
            fields["id"] = f"r{self.step}"
        self.append([("reset", fields)])

    @rule()
    def compact_and_restart(self) -> None:
        self.compacted.compact()
        self.compacted.close()
        self.compacted = _open(self.compacted.path)

    @invariant()
    def both_read_back_alike(self) -> None:
        assert _view(self.compacted.state) == _view(self.plain.state)

    @invariant()
    def a_trigger_may_resolve_only_failures_that_ended_before_it(self) -> None:
        for journal in self.journals():
            state = journal.state
            for trigger_id, failures in state.resolvable.items():
                journaled = self.journaled_at[trigger_id]
                held = {f for f in failures if f in state.failed}
                ended_before = {f for f in state.failed if self.ended_at[f] < journaled}
                assert held == ended_before, (
                    f"{journal.path.name}: {trigger_id} (journaled at step {journaled}) may "
                    f"resolve {sorted(held)}; held failures that ended before it: "
                    f"{sorted(ended_before)} (latest failures ended at {self.ended_at})"
                )

    @invariant()
    def a_failure_no_longer_held_is_on_no_list(self) -> None:
        for journal in self.journals():
            state = journal.state
            for trigger_id, failures in state.resolvable.items():
                gone = [f for f in failures if f not in state.failed]
                assert not gone, f"{journal.path.name}: {trigger_id} may resolve {gone}, not held"

    @invariant()
    def a_held_failure_names_no_released_trigger_unreleased(self) -> None:
        for journal in self.journals():
            state = journal.state
            for failed_id, failed in state.failed.items():
                unreleased = failed.get("unreleased")
                assert isinstance(unreleased, list)
                assert unreleased, f"{journal.path.name}: {failed_id} held with none unreleased"
                gone = [t for t in unreleased if t in state.released]
                assert not gone, f"{journal.path.name}: {failed_id} unreleased {gone}, released"

    def teardown(self) -> None:
        for journal in self.journals():
            journal.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.mark.slow
def test_compaction_never_changes_which_failures_a_kill_may_resolve(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Few failures kept, so histories this short push the oldest out too.
    monkeypatch.setattr(journal_state, "FAILED_KEPT", 3)
    run_state_machine_as_test(
        CompactedHistory,
        settings=settings(
            max_examples=300,
            stateful_step_count=40,
            deadline=None,
            derandomize=True,
            database=None,
            report_multiple_bugs=False,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


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
    summary: dict[str, object] = {"kill_id": "k1", "kind": "trigger", "scope": BINANCE.to_json()}
    summary |= {"trigger_ids": ["k1", "k1b"], "ended_ms": 1}
    journal.append("kill_done", trigger_id="k1", state="failed", summary=summary)
    _trigger(journal, "k2", Mode.KILL)
    journal.append("kill_done", trigger_id="k1b", state="failed", summary=summary)
    assert journal.state.resolvable["k2"] == ["k1"]
    _done(journal, "k2", "confirmed", ended_ms=2)
    assert not journal.state.failed
    journal.close()
