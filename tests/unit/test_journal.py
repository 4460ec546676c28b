"""The journal: every acknowledged record survives a crash; a torn tail is cut and reported."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from killswitch.journal import Journal, JournalCorrupt, replay
from killswitch.model import Mode, Scope, Trigger


def trigger(trigger_id: str, mode: Mode = Mode.KILL, **scope: object) -> Trigger:
    return Trigger(trigger_id, "test", mode, "why", Scope.of(**scope), created_ms=1)  # type: ignore[arg-type]


def test_replay_restores_latches_seen_ids_and_last_kill(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.jsonl")
    journal.open()
    journal.record_trigger(trigger("a", venues=["binance"]))
    journal.append("latch", trigger_id="a", scope=Scope.of(venues=["binance"]).to_json())
    journal.record_trigger(trigger("b", Mode.CANCEL))
    journal.append("kill_done", trigger_id="b", state="flat")
    journal.close()

    state, _ = replay(tmp_path / "journal.jsonl")
    assert state.latches == {"a": Scope.of(venues=["binance"])}
    assert set(state.seen) == {"a", "b"}
    assert state.unfinished == {"a"}
    assert state.last_kill is not None
    assert state.last_kill["trigger_id"] == "b"
    assert not state.torn_tail


def test_reset_releases_every_latch_after_replay(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.jsonl")
    journal.open()
    journal.record_trigger(trigger("a"))
    journal.append("latch", trigger_id="a", scope=Scope().to_json())
    journal.append("reset", actor="ops", reason="drill over")
    journal.close()
    state, _ = replay(tmp_path / "journal.jsonl")
    assert not state.latched
    assert state.last_reset is not None
    assert state.last_reset["actor"] == "ops"


def test_a_torn_last_line_is_reported_cut_and_appending_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    journal.open()
    journal.record_trigger(trigger("a"))
    journal.close()
    with path.open("ab") as f:
        f.write(b'{"kind":"latch","trigger_id":"a","sco')

    journal = Journal(path)
    state = journal.open()
    assert state.torn_tail
    assert set(state.seen) == {"a"}
    journal.append("latch", trigger_id="a", scope=Scope().to_json())
    journal.close()
    state, _ = replay(path)
    assert not state.torn_tail
    assert state.latched


def test_a_damaged_line_before_the_end_refuses_to_guess(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    journal.open()
    journal.record_trigger(trigger("a"))
    journal.append("latch", trigger_id="a", scope=Scope().to_json())
    journal.close()
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"garbage\n" + lines[1])
    with pytest.raises(JournalCorrupt):
        Journal(path).open()


def test_compaction_keeps_state_and_shrinks_the_file(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(path, compact_bytes=20_000)
    journal.open()
    for i in range(200):
        journal.record_trigger(trigger(f"c{i}", Mode.CANCEL))
        journal.append("kill_done", trigger_id=f"c{i}", state="flat")
    journal.record_trigger(trigger("k", accounts=["mm-1"]))
    journal.append("latch", trigger_id="k", scope=Scope.of(accounts=["mm-1"]).to_json())
    journal.close()

    assert path.stat().st_size < 20_000 + 2_000
    state, _ = replay(path)
    assert state.latches == {"k": Scope.of(accounts=["mm-1"])}
    assert {f"c{i}" for i in range(200)} <= set(state.seen)
    assert "k" in state.triggers


_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from killswitch.journal import Journal
    from killswitch.model import Mode, Scope, Trigger

    journal = Journal(Path(sys.argv[1]), compact_bytes=int(sys.argv[2]))
    journal.open()
    i = 0
    while True:
        journal.record_trigger(Trigger(f"t{i}", "crash", Mode.KILL, "x" * 200, Scope()))
        journal.append("latch", trigger_id=f"t{i}", scope=Scope().to_json())
        sys.stdout.write(f"t{i}\\n")
        sys.stdout.flush()
        i += 1
    """
)


@pytest.mark.parametrize("compact_bytes", [8 * 1024 * 1024, 30_000])
def test_sigkill_mid_write_loses_no_acknowledged_record(tmp_path: Path, compact_bytes: int) -> None:
    path = tmp_path / "journal.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), str(compact_bytes)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.stdout is not None
    acked = [proc.stdout.readline().strip() for _ in range(300)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    acked += [line.strip() for line in proc.stdout if line.strip()]
    proc.stdout.close()

    journal = Journal(path)
    state = journal.open()
    journal.close()
    assert set(acked) <= set(state.seen)
    assert set(acked) <= set(state.latches)


def test_a_kill_trigger_without_its_latch_record_still_comes_back_latched(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.jsonl")
    journal.open()
    journal.record_trigger(trigger("k", symbols=["BTCUSDT"]))  # crash before the latch record
    journal.close()
    state, _ = replay(tmp_path / "journal.jsonl")
    assert state.latches == {"k": Scope.of(symbols=["BTCUSDT"])}


def test_a_kill_released_by_reset_is_not_resumed_after_a_crash(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.jsonl")
    journal.open()
    journal.record_trigger(trigger("k"))
    journal.record_trigger(trigger("c", Mode.CANCEL))
    journal.append("reset", actor="ops", reason="false alarm")  # crash before kill_done
    journal.close()
    state, _ = replay(tmp_path / "journal.jsonl")
    assert not state.latched
    assert state.unfinished == {"c"}  # a one-shot cancel is not released by a reset
