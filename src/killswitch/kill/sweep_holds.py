"""Latched sweeps held by a venue's error allowance: what a kill keeps of it, sweeps leave
(`exchanges.budget.keeping_kill_reserve`); a held sweep waits the hold out, its deadline moved
on by the wait, and the first hold of a spell is alarmed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from killswitch.events import EventType
from killswitch.exchanges.base import AllowanceHeld
from killswitch.exchanges.budget import keeping_kill_reserve
from killswitch.kill.config import Runtime
from killswitch.kill.record import Kill
from killswitch.model import AccountRef, Snapshot

# Logged under the waves' name, as before this had a module of its own.
log = logging.getLogger("killswitch.kill.waves")

# Holds of an account's sweeps this close together are one spell, alarmed once: longer than
# BingX's error window (480 s), after which an allowance a hold waited for is whole again.
_HELD_SPELL_S = 600.0

Extend = Callable[[Kill, AccountRef, float], None]


class HeldSweeps:
    """Read for latched sweeps, waiting out the holds of an error allowance."""

    def __init__(self, run: Runtime, extend: Extend) -> None:
        self._run = run
        self._extend = extend  # moves a sweep's deadline (and its guard) on by a hold
        # Accounts whose latched sweeps an error allowance holds, and when one last was
        # (alarmed once a spell).
        self._held: dict[AccountRef, float] = {}

    async def read(
        self, kill: Kill, ref: AccountRef, read: Callable[[], Awaitable[Snapshot]]
    ) -> Snapshot:
        """A latched sweep's read: a kill's read in every way but one, it leaves what an error
        allowance keeps for kills alone (review 66: sweeps of a flat BingX account, each
        answered "No data", spent it to its last). Held there, the sweep waits the hold out,
        its deadline moved on by the wait: it neither fails nor spins, and no other sweep of
        the account starts meanwhile. The first hold is alarmed: until it ends, an order in
        the latch that no stream shows is cancelled then, not within `sweep_interval_s`."""
        held = False
        while True:
            try:
                with keeping_kill_reserve():
                    snap = await read()
            except AllowanceHeld as exc:
                held = True
                self._alarm(kill, ref, exc)
                self._extend(kill, ref, exc.retry_after_s)
                await self._run.sleep(exc.retry_after_s)
                continue
            last = self._held.get(ref)
            if not held and last is not None and self._run.clock() - last > _HELD_SPELL_S:
                del self._held[ref]
                log.warning("latched sweeps no longer held account=%s", ref)
            return snap

    def _alarm(self, kill: Kill, ref: AccountRef, exc: AllowanceHeld) -> None:
        now = self._run.clock()
        last = self._held.get(ref)
        self._held[ref] = now
        if last is not None and now - last <= _HELD_SPELL_S:
            return  # the same spell: once an allowance holds sweeps, most are held a while
        log.error(
            "latched sweep held account=%s kill_id=%s held_s=%.1f: the venue's error allowance "
            "is kept for kills; an order no stream shows is swept when the hold ends, not "
            "within sweep_interval_s",
            ref,
            kill.id,
            exc.retry_after_s,
        )
        self._run.emit(
            EventType.ALARM,
            kill_id=kill.id,
            account=str(ref),
            sweep="held",
            held_s=round(exc.retry_after_s, 3),
            error=exc.to_json(),
        )
