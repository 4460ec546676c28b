"""Durable kill state: an append-only JSON-lines journal, fsynced per record.

Records (`kind`): `trigger` (the full trigger, written before any request goes out), `latch`
(a scope is HALTED), `reset` (the latches it names released, with who and why), `account_flat`
(an account a one-shot cancel proved flat), `kill_done` (a kill's summary), and `seen` (trigger
and reset ids, the trigger ids resets released, and the failed ends settled, carried over by
compaction). `replay` rebuilds the state a restart needs: latched scopes, seen trigger and reset
ids, the trigger ids resets released, unfinished triggers (with the accounts a cancel already
proved flat), the last kill, and the failed kills no later flat kill or reset resolved.

The journal always reads back, whatever the disk did to the last append:

* A failed append (a short write, ENOSPC, EIO, a failed fsync) is cut: the file is truncated
  back to its last whole record and the truncation fsynced before the error reaches the caller,
  who must not treat the record as written. If the cut itself fails, the next append (or
  `close`) makes it before writing anything. So a retry never lands behind half a record.
* A torn last append (the process or the machine died mid-append) is the tail after the last
  newline, or lines holding NUL bytes (a crash that lost some of its pages, the first one
  included: NULs, then the rest of a record) that together can be no more than the last
  append: one record, or a trigger and its latch (`append_many` writes no more). It was never
  acknowledged: it is reported, cut off, and the journal goes on from the record before it.
  NULs anywhere earlier, or followed by more than the last append could hold, are damage (see
  `read` for the reasoning).
* Every record is checked to fold into a state before it is written: what is written reads back.
* Async appends run one at a time on a worker thread. A caller cancelled while its write is in
  flight stops waiting, not writing: the next append starts only when that write is done (the
  record may then be in the journal although its caller saw `CancelledError`).

A journal that truly cannot be read (a bad record anywhere but at the end: damage, not a crash)
does not stop the daemon, and is never guessed around. `Journal.open` then fails safe:

* the damaged file is kept for forensics as `<name>.unreadable-<UTC time>` (a hard link, else a
  copy), and a fresh journal replaces it, holding every record that could still be read
  (before and after the damage: extra latches only err towards cancelling), then a trigger and
  a latch over everything (`Scope()`), id `journal-unreadable-<UTC time>`, source `journal`, mode
  kill, whose reason names where the damage is (never what the file holds);
* the returned state carries the reason in `unreadable` and the kept file in `unreadable_copy`,
  so the engine raises an alarm; it resumes the fail-safe kill like any latched kill, and the
  latch holds across restarts until an operator resets it (`failsafe_latches` lists it);
* if the fresh journal cannot be written (the disk is full or failing), the damaged file stays
  in place and the fail-safe trigger and latch are appended to it, or held in memory only if
  even that fails; every start then fails safe again until the file can be rewritten.

`replay`, the read-only view used by tools and tests, raises `JournalCorrupt` on such damage.

Compaction rewrites the state into a temporary file, fsyncs it, renames it over the journal and
fsyncs the directory, so a crash leaves either the old or the new file. A compaction that fails
is logged and retried later; it never fails the append that prompted it.
"""

from killswitch.journal.read import JournalCorrupt, replay
from killswitch.journal.state import (
    DEFAULT_SEEN_LIMIT,
    UNREADABLE_PREFIX,
    JournalState,
    remember_newest,
)
from killswitch.journal.writer import DEFAULT_COMPACT_BYTES, FileOps, Journal

__all__ = [
    "DEFAULT_COMPACT_BYTES",
    "DEFAULT_SEEN_LIMIT",
    "UNREADABLE_PREFIX",
    "FileOps",
    "Journal",
    "JournalCorrupt",
    "JournalState",
    "remember_newest",
    "replay",
]
