"""What the journal keeps of a kill's end: each account a one-shot cancel proved flat, and the
kill's own end (`kill_done`), so that the next life of the daemon resumes exactly what is left.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from killswitch.backoff import Backoff, Stopping, until_journaled
from killswitch.events import EventType
from killswitch.journal import Journal
from killswitch.kill.config import Runtime
from killswitch.kill.record import Kill, KillKind, KillState
from killswitch.model import AccountRef

log = logging.getLogger(__name__)


class KillEnds:
    """Journals the ends of kills and of a cancel's accounts; retried, never skipped silently."""

    def __init__(self, journal: Journal, stopping: asyncio.Event, run: Runtime) -> None:
        self._journal = journal
        self._stopping = stopping
        self._run = run

    async def account_flat(self, kill: Kill, ref: AccountRef) -> None:
        """Journal that `ref` is flat for a one-shot cancel, before anything reports it: a
        restart resuming the cancel must leave the account alone, or it would cancel what was
        placed after its flat snapshot. Retried until the kill's deadline: a disk that refuses
        writes never holds back the report (an alarm says what it risks)."""
        for trigger in kill.triggers:
            backoff = Backoff(initial_s=0.05, max_s=2.0, rng=self._run.rng)
            while True:
                try:
                    await asyncio.shield(
                        self._journal.append_async(
                            "account_flat", trigger_id=trigger.id, account=str(ref)
                        )
                    )
                except (OSError, RuntimeError) as exc:  # refused; or closed at stop
                    if self._stopping.is_set() or self._run.clock() >= kill.deadline:
                        log.error(
                            "account_flat not journaled kill_id=%s account=%s error=%r",
                            kill.id,
                            ref,
                            exc,
                        )
                        self._run.emit(
                            EventType.ALARM,
                            kill_id=kill.id,
                            account=str(ref),
                            error="flat not journaled: a restart before this cancel's end is "
                            "journaled would cancel on this account again",
                        )
                        break
                    log.warning("account_flat not journaled, retrying kill_id=%s", kill.id)
                    await self._run.sleep(backoff.next_delay())
                else:
                    break

    async def done(self, kill: Kill) -> dict[str, object] | None:
        """Journal a kill's end (`kill_done` per trigger), retried until written or the daemon
        stops; returns its summary, or None when its end is not this kill's to write."""
        if kill.kind in (KillKind.SWEEP, KillKind.STREAM):
            return None
        if kill.narrowed:
            return None  # its released triggers ended with the reset; the rest, relaunched
        if kill.state is KillState.ABORTED and not kill.released:
            # Interrupted by a shutdown: no `kill_done`, so the next start resumes it.
            log.warning("kill interrupted, resumes at the next start kill_id=%s", kill.id)
            return None
        summary = kill.summary()
        for trigger in kill.triggers:
            fields: dict[str, object] = {
                "trigger_id": trigger.id,
                "state": kill.state.value,
                "summary": summary,
            }

            def write(fields: dict[str, object] = fields) -> Awaitable[dict[str, object]]:
                # A write once begun is finished even if this task is cancelled meanwhile.
                return asyncio.shield(self._journal.append_async("kill_done", **fields))

            try:
                # A kill whose end is lost runs again at the next start.
                await until_journaled(f"kill_done {trigger.id}", write, self._stopping)
            except Stopping:
                log.error("kill_done not journaled at stop trigger_id=%s", trigger.id)
        return summary
