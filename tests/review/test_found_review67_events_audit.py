"""Review 67: a line of the audit log torn by a power cut was not cut off: the next life's first
record was appended to it, and `read_audit` skipped both.
"""

from __future__ import annotations

from pathlib import Path

from killswitch.events import EventType, make_event
from killswitch.sinks.audit import AuditLog, read_audit


def test_the_first_record_after_a_torn_audit_line_is_read_back(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    before = AuditLog(path)
    before.emit(make_event(EventType.TRIGGERED, kill_id="k1"))
    before.close()
    whole = path.read_bytes()
    with path.open("ab") as file:  # a power cut in the middle of the next append
        file.write(b'{"type":"flat","kill_id":"k1","acc')
    after = AuditLog(path)
    after.emit(make_event(EventType.RESET, actor="ops"))
    after.close()
    assert [r["type"] for r in read_audit(path)] == ["triggered", "reset"]
    assert path.read_bytes().startswith(whole)  # what was there is kept as it was
