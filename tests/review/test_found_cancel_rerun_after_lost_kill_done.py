"""Review: a one-shot `cancel` whose `kill_done` write failed runs again at the next start.

`Engine._record_done` logged an `OSError` from the `kill_done` append and went on; nothing
retried it, so the journal kept the cancel as unfinished. The next start (a deploy, hours
later) resumes it: it cancels every order open in scope *then*, all placed after the cancel
proved flat (DESIGN "One shot is one shot"). A transient disk error (ENOSPC that cleared) is
enough.
"""

from __future__ import annotations

import errno
import random
from pathlib import Path

from killswitch.journal import FileOps, Journal
from killswitch.kill.config import Account
from killswitch.kill.engine import Engine
from killswitch.kill.record import KillState
from killswitch.model import AccountRef, Mode
from tests.fakes import FakeClock, FakeExchange
from tests.unit.test_engine import QUICK, kill_trigger


class KillDoneFails(FileOps):
    """A disk that refuses the first write of a `kill_done` record (ENOSPC), and nothing else."""

    def __init__(self) -> None:
        self.refused = 0

    def write(self, fd: int, data: bytes) -> int:
        if b'"kind":"kill_done"' in data and not self.refused:
            self.refused += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(fd, data)


def engine_over(path: Path, venue: FakeExchange, ops: FileOps | None = None) -> Engine:
    clock = FakeClock()
    return Engine(
        [Account(AccountRef(venue.venue, venue.account), venue)],
        Journal(path, ops=ops),
        QUICK,
        sleep=clock.sleep,
        clock=clock,
        rng=random.Random(7),
    )


async def test_a_cancel_that_proved_flat_never_runs_again_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    venue = FakeExchange("binance", "b1")
    venue.place("BTCUSDT", "desk-", n=2)
    disk = KillDoneFails()
    first = engine_over(path, venue, disk)
    await first.start()
    await first.submit(kill_trigger("c1", mode=Mode.CANCEL))
    kill = first.kill_for("c1")
    assert kill is not None
    await kill.finished.wait()
    assert kill.state is KillState.FLAT
    assert disk.refused == 1  # its end was refused once, then retried until journaled
    await first.stop()

    (later,) = venue.place("ETHUSDT", "desk-new")  # placed after c1 proved flat
    second = engine_over(path, venue)
    await second.start()
    try:
        await second.wait_idle()
        assert ("ETHUSDT", later) in venue.open_keys(), "the one-shot cancel ran a second time"
    finally:
        await second.stop()
