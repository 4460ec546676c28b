"""Whether a kill's accounts are flat, and whether they stay so: a kill ends flat or failed
(an event and a log line either way, what is left open named), and a kill that ended flat is
confirmed after a quiet window with no new order seen and one more empty look at the venues.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from killswitch.events import EventType
from killswitch.kill.config import Account, EngineConfig, Runtime
from killswitch.kill.record import AccountState, Kill, KillKind, KillState, open_json
from killswitch.model import AccountRef, Snapshot

# Logged under the engine's name, as before this had a module of its own.
log = logging.getLogger("killswitch.kill.engine")

RunAccount = Callable[[Kill, Account, bool], Awaitable[None]]


class Verdicts:
    """Run a kill's accounts to their end and say what it is: flat, failed, confirmed."""

    def __init__(
        self,
        config: EngineConfig,
        run: Runtime,
        wall_ms: Callable[[], int],
        run_account: RunAccount,
        last_sweep: dict[AccountRef, str],
    ) -> None:
        self.config = config
        self._run = run
        self._wall_ms = wall_ms
        self._run_account = run_account  # one account to flat or failure (`fast` or not)
        self._last_sweep = last_sweep  # the engine's, for status: how each last sweep ended

    async def reach(self, kill: Kill, accounts: Sequence[Account], *, again: bool = False) -> None:
        """Run every account to flat or failure; `again` re-verifies a kill already flat."""
        if not accounts:
            # Nothing was checked, so nothing is proved: a kill of nothing is not flat.
            log.error("kill has no configured account in scope kill_id=%s", kill.id)
            kill.state = KillState.FAILED
            self._run.emit(
                EventType.FAILED,
                still_open={},
                error={"kind": "no_account_in_scope"},
                **kill.summary(),
            )
            return
        fast = kill.kind is not KillKind.SWEEP and not again
        todo = [a for a in accounts if a.ref not in kill.flat_before]
        await asyncio.gather(*(self._run_account(kill, a, fast) for a in todo))
        results = list(kill.accounts.values())
        if kill.kind is KillKind.SWEEP:  # for status: an account's last sweep, flat or not
            self._last_sweep.update({r.ref: r.state.value for r in results})
        if all(r.state is AccountState.FLAT for r in results):
            kill.state = KillState.FLAT
            if again:
                return
            kill.local_flat_ms = (self._run.clock() - kill.started) * 1000
            if kill.origin_ms:
                kill.time_to_flat_ms = float(self._wall_ms() - kill.origin_ms)
            else:
                kill.time_to_flat_ms = kill.local_flat_ms
            kill.flat.set()
            if kill.kind is KillKind.SWEEP:
                self._run.emit(
                    EventType.SWEEP, kill_id=kill.id, result="flat", **kill.sweep_counts()
                )
            else:
                log.warning(
                    "kill flat kill_id=%s time_to_flat_ms=%s", kill.id, kill.time_to_flat_ms
                )
                self._run.emit(EventType.FLAT, **kill.summary())
            return
        kill.state = KillState.FAILED
        open_now = {
            str(r.ref): {**open_json(r.still_open or Snapshot()), "verified": r.verified}
            for r in results
            if r.state is not AccountState.FLAT
        }
        # Counts only: the event and the audit log name every order (review 67: one line of
        # 1.2 MB for 7,000 orders left open).
        left = {
            str(r.ref): f"{len(seen.orders)} orders, {len(seen.lists)} lists"
            + ("" if r.verified else " (unverified)")
            for r in results
            if r.state is not AccountState.FLAT
            for seen in [r.still_open or Snapshot()]
        }
        log.error("kill failed kill_id=%s kind=%s open=%s", kill.id, kill.kind, left)
        self._run.emit(EventType.FAILED, still_open=open_now, **kill.summary())

    async def confirm(self, kill: Kill, accounts: Sequence[Account]) -> None:
        """Flat, then still flat after a quiet window with no new order on the streams."""
        window = self.config.quiet_window_s
        give_up = kill.deadline + window
        while True:
            seen = kill.new_orders_seen
            await self._run.sleep(window)
            quiet = kill.new_orders_seen == seen
            if not quiet:
                # Orders arrived during the window: give their waves time of their own.
                kill.deadline = max(kill.deadline, self._run.clock() + self.config.deadline_s / 2)
            # One more look at the venues: consecutive empty snapshots, not our own word. A
            # look that found something to cancel (an order no stream showed) is not quiet.
            cancelled = kill.cancelled()
            await self.reach(kill, accounts, again=True)
            if kill.state is not KillState.FLAT:
                return
            if kill.cancelled() != cancelled:
                quiet = False
                kill.deadline = max(kill.deadline, self._run.clock() + self.config.deadline_s / 2)
            if quiet and kill.new_orders_seen == seen:
                kill.state = KillState.CONFIRMED
                log.warning("kill confirmed kill_id=%s", kill.id)
                self._run.emit(
                    EventType.CONFIRMED, kill_id=kill.id, time_to_flat_ms=kill.time_to_flat_ms
                )
                return
            if self._run.clock() >= give_up:
                self._run.emit(
                    EventType.UNCONFIRMED, kill_id=kill.id, reason="new orders kept arriving"
                )
                return
