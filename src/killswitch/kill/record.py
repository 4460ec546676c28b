"""A kill as it runs and as it is reported: its states, each account's part, its summary."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field

from killswitch.model import (
    AccountRef,
    ListKey,
    Mode,
    Order,
    OrderKey,
    OrderList,
    Scope,
    Snapshot,
    Trigger,
)


class SubmitResult(enum.StrEnum):
    """What `Engine.submit` did with a trigger."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"


class KillState(enum.StrEnum):
    """Where a kill is: running, flat (proved empty), confirmed (still flat after the quiet
    window), failed (deadline passed or an account stopped), or aborted by a reset."""

    RUNNING = "running"
    FLAT = "flat"
    CONFIRMED = "confirmed"
    FAILED = "failed"
    ABORTED = "aborted"


class AccountState(enum.StrEnum):
    RUNNING = "running"
    FLAT = "flat"
    FAILED = "failed"  # deadline passed with orders still open (or unverified)
    STOPPED = "stopped"  # a Fatal answer: no more requests to this account in this kill


class KillKind(enum.StrEnum):
    """Why a kill runs: a trigger, a restart resuming one, a latched sweep, a stream's new order."""

    TRIGGER = "trigger"
    RESUME = "resume"
    SWEEP = "sweep"
    STREAM = "stream"


@dataclass(slots=True)
class AccountResult:
    """One account's part of a kill."""

    ref: AccountRef
    state: AccountState = AccountState.RUNNING
    # In the order `to_json` reports them: what was open, what was cancelled, what it took.
    orders_before: int = 0
    lists_before: int = 0
    cancelled: set[OrderKey] = field(default_factory=set)
    lists_cancelled: set[ListKey] = field(default_factory=set)
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    waves: int = 0
    still_open: Snapshot | None = None
    verified: bool = False
    error: dict[str, object] | None = None
    first_cancel_ms: float | None = None
    flat_ms: float | None = None
    not_ready: str | None = None  # why the account was not ready, when it could not be acted on
    known: dict[OrderKey, Order] = field(default_factory=dict)  # every in-scope order seen

    def to_json(self) -> dict[str, object]:
        still = self.still_open or Snapshot()
        return {
            "venue": self.ref.venue,
            "account": self.ref.account,
            "state": self.state.value,
            "orders_before": self.orders_before,
            "lists_before": self.lists_before,
            "cancelled": len(self.cancelled),
            "lists_cancelled": len(self.lists_cancelled),
            "requests": self.requests,
            "retries": self.retries,
            "rate_limited": self.rate_limited,
            "waves": self.waves,
            "verified": self.verified,
            "still_open": open_json(still),
            "error": self.error,
            "not_ready": self.not_ready,
            "time_to_first_cancel_ms": self.first_cancel_ms,
            "time_to_flat_ms": self.flat_ms,
        }


@dataclass(eq=False)  # one kill is itself only: kept in sets, waited on by its events
class Kill:
    """One kill (or sweep) in progress. Tests and callers wait on its events."""

    id: str
    kind: KillKind
    scope: Scope
    mode: Mode
    triggers: list[Trigger]
    started: float
    deadline: float
    state: KillState = KillState.RUNNING
    accounts: dict[AccountRef, AccountResult] = field(default_factory=dict)
    first_cancel_ms: float | None = None
    local_flat_ms: float | None = None
    time_to_flat_ms: float | None = None
    new_orders_seen: int = 0
    joins: int = 0  # triggers that joined after it started (each one bumps it)
    # Wall clock (ms) at its launch and at its end: a failed kill is resolved only by a flat
    # kill launched after it ended (journal/state.py `JournalState.failed`).
    started_ms: int = 0
    ended_ms: int = 0
    # Set by a reset that released every trigger of this kill: a cancellation after it is
    # the kill's end. Any other cancellation (a shutdown) interrupts it, and the next life
    # of the daemon resumes it from the journal, as it would after a crash.
    released: bool = False
    # Set by a reset that released some of its triggers: the rest were relaunched.
    narrowed: bool = False
    # Accounts a resumed one-shot cancel proved flat in an earlier life: left alone.
    flat_before: frozenset[AccountRef] = frozenset()
    final: dict[str, object] | None = None  # the summary, frozen when it finished
    flat: asyncio.Event = field(default_factory=asyncio.Event)  # proved flat
    done: asyncio.Event = field(default_factory=asyncio.Event)  # flat or failed: result known
    # Confirmation over too; the kill task has ended.
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def origin_ms(self) -> int:
        """Wall time the kill counts from: the trigger's produce time, else its receipt."""
        first = self.triggers[0] if self.triggers else None
        if first is None:
            return 0
        return first.created_ms or first.received_ms

    def cancelled(self) -> int:
        """Orders and lists the kill has seen cancelled, over its accounts."""
        return sum(len(r.cancelled) + len(r.lists_cancelled) for r in self.accounts.values())

    def summary(self) -> dict[str, object]:
        if self.final is not None:
            return self.final
        return {
            "kill_id": self.id,
            "kind": self.kind.value,
            "trigger_ids": [t.id for t in self.triggers],
            "mode": self.mode.value,
            "scope": self.scope.to_json(),
            "state": self.state.value,
            "started_ms": self.started_ms,
            "ended_ms": self.ended_ms,
            "time_to_first_cancel_ms": self.first_cancel_ms,
            "time_to_flat_ms": self.time_to_flat_ms,
            "local_time_to_flat_ms": self.local_flat_ms,
            "accounts": [r.to_json() for r in self.accounts.values()],
        }

    def sweep_counts(self) -> dict[str, object]:
        """What a sweep found and cancelled per account (its `sweep` event)."""
        return {
            "accounts": {
                str(r.ref): {
                    "found": r.orders_before + r.lists_before,
                    "cancelled": len(r.cancelled),
                }
                for r in self.accounts.values()
            }
        }


def open_json(snapshot: Snapshot) -> dict[str, object]:
    """Describe what is open, exactly: ids, client ids and symbols (for `failed` events), and
    what may be in scope though its client id was not shown (`undecided`)."""
    out: dict[str, object] = {
        "orders": [
            {"symbol": o.symbol, "order_id": o.order_id, "client_order_id": o.client_order_id}
            for o in snapshot.orders
        ],
        "lists": [
            {
                "symbol": lst.symbol,
                "list_id": lst.list_id,
                "list_client_order_id": lst.list_client_order_id,
            }
            for lst in snapshot.lists
        ],
    }
    if snapshot.undecided:
        out["undecided"] = [
            {"symbol": x.symbol, "list_id": x.list_id}
            if isinstance(x, OrderList)
            else {"symbol": x.symbol, "order_id": x.order_id}
            for x in snapshot.undecided
        ]
    return out
