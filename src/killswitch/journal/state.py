"""What the journal says: `JournalState`, the fold of its records, and the records to rebuild it."""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from killswitch.model import Mode, Scope, Trigger

log = logging.getLogger(__name__)


DEFAULT_SEEN_LIMIT = 100_000
FAILED_KEPT = 20  # failed kills kept until resolved (`JournalState.failed`), newest
# Failed ends that left `failed` remembered (`JournalState.settled`), newest: far more than a
# reset or a flat kill can settle while one joined kill writes its `kill_done` records.
SETTLED_KEPT = 100
UNREADABLE_PREFIX = "journal-unreadable-"  # the id prefix of a fail-safe trigger


@dataclass(slots=True)
class JournalState:
    """What the journal says: rebuilt by `replay`, kept current by `Journal`'s writers."""

    latches: dict[str, Scope] = field(default_factory=dict)  # trigger id -> latched scope
    seen: OrderedDict[str, None] = field(default_factory=OrderedDict)  # trigger ids, oldest first
    triggers: dict[str, Trigger] = field(default_factory=dict)  # latched or unfinished triggers
    unfinished: set[str] = field(default_factory=set)  # triggers without kill_done
    # Ids of resets applied (Kafka's), oldest first: their own namespace, apart from triggers'.
    reset_ids: OrderedDict[str, None] = field(default_factory=OrderedDict)
    # Trigger ids a journaled reset released (and nothing latched since), oldest first. A seen
    # id that is neither latched nor here was not released by a reset this journal holds (a
    # cancel, or a kill whose records the disk lost): the latch replicator never announces it
    # as reset (kafka/reconciler.py).
    released: OrderedDict[str, None] = field(default_factory=OrderedDict)
    # Unfinished one-shot cancels: the accounts ("venue/account") already proved flat. A cancel
    # resumed after a restart leaves them alone: it never touches what was placed after that.
    flat_accounts: dict[str, list[str]] = field(default_factory=dict)
    last_kill: dict[str, object] | None = None
    # Kills that ended failed and are not resolved yet (kill id -> its `kill_done` record), oldest
    # first: resolved when a later kill over a scope containing theirs ends flat or confirmed,
    # or when resets released every trigger of theirs (review 67: `status` showed only the last
    # kill, so a failed cancel vanished behind the next kill's flat).
    failed: OrderedDict[str, dict[str, object]] = field(default_factory=OrderedDict)
    failed_dropped: int = 0  # unresolved failed kills pushed out by newer ones (this life)
    # The failed ends that left `failed` (resolved, released, pushed out or ended again), as
    # `_end_key`s, oldest first: a joined kill journals its end once per trigger, one record
    # after another, and a reset or a flat kill journaled between them settles it; the records
    # after must not bring it back (review 90).
    settled: OrderedDict[str, None] = field(default_factory=OrderedDict)
    # Per unfinished trigger: the failed kills that had ended when it was journaled, the only
    # ones its kill's flat end may resolve. Decided by the journal's order, never by wall
    # clocks (review 79: a clock stepped back made a later kill look launched before the
    # failure it followed, and a flat kill resolved nothing). A failure that leaves `failed`,
    # or ends again under the same kill id, leaves every list (review 88).
    resolvable: dict[str, list[str]] = field(default_factory=dict)
    last_reset: dict[str, object] | None = None
    records: int = 0
    torn_tail: bool = False
    # Set by `Journal.open` when the file was damaged and it failed safe: why (no file contents).
    unreadable: str | None = None
    unreadable_copy: Path | None = None  # where the damaged file was kept, if it could be

    @property
    def latched(self) -> bool:
        return bool(self.latches)

    @property
    def failsafe_latches(self) -> list[str]:
        """Fail-safe latches over everything, from this start or an earlier one, not yet reset."""
        return [t for t in self.latches if t.startswith(UNREADABLE_PREFIX)]

    def apply(self, record: dict[str, object], *, seen_limit: int = DEFAULT_SEEN_LIMIT) -> None:
        """Fold one record into the state (nothing changes when it raises)."""
        kind = record.get("kind")
        if kind == "trigger":
            raw = record["trigger"]
            if not isinstance(raw, dict):
                raise TypeError("trigger record without a trigger object")
            trigger = Trigger.from_json(raw)
            self._see(trigger.id, seen_limit)
            self.triggers[trigger.id] = trigger
            # Compaction marks a kill that ended but is still latched: it is not resumed.
            if record.get("finished") is not True:
                self.unfinished.add(trigger.id)
                # A compacted record says which failures had ended when it was first journaled.
                given = record.get("resolves")
                ended = _as_list(given) if isinstance(given, list) else list(self.failed)
                self.resolvable[trigger.id] = [str(f) for f in ended if str(f) in self.failed]
            if trigger.mode is Mode.KILL:
                # The intent to kill is the latch: a crash before the `latch` record must
                # not come back unlatched.
                self.latches[trigger.id] = trigger.scope
                self.released.pop(trigger.id, None)
        elif kind == "latch":
            trigger_id = str(record["trigger_id"])
            scope = record["scope"]
            if not isinstance(scope, dict):
                raise TypeError("latch record without a scope object")
            self.latches[trigger_id] = Scope.from_json(scope)
            self.released.pop(trigger_id, None)
        elif kind == "reset":
            # A reset releases exactly the latches it names (older records without the list
            # released everything), and aborts their kills: a restart must not resume them.
            named = _released_ids(record)
            gone = [t for t in self.latches if named is None or t in named]
            for trigger_id in gone:
                del self.latches[trigger_id]
                remember_newest(self.released, trigger_id, seen_limit)
            self.unfinished -= {
                t for t in gone if t in self.unfinished and self.triggers[t].mode is Mode.KILL
            }
            self._release_failed(set(gone))
            self.last_reset = record
            if isinstance(record.get("id"), str):  # a reset by id (Kafka): a re-read is a no-op
                remember_newest(self.reset_ids, str(record["id"]), seen_limit)
            self._forget_finished()
        elif kind == "account_flat":
            trigger_id = str(record["trigger_id"])
            account = str(record["account"])
            if trigger_id in self.unfinished:
                done = self.flat_accounts.setdefault(trigger_id, [])
                if account not in done:
                    done.append(account)
        elif kind == "kill_done":
            compacted = record.get("compacted") is True
            if compacted:  # the marker is compaction's, not the record's
                record = {k: v for k, v in record.items() if k != "compacted"}
            trigger_id = str(record["trigger_id"])
            self.unfinished.discard(trigger_id)
            self.flat_accounts.pop(trigger_id, None)
            self.last_kill = record
            if not compacted:  # compaction writes the unresolved failed kills apart
                self._resolve_failed(record)
            self._forget_finished()
        elif kind == "seen":
            ids = _listed(record, "ids", "seen record without an id list")
            resets = _listed(
                record, "resets", "seen record with a reset id field that is not a list"
            )
            released = _listed(
                record, "released", "seen record with a released id field that is not a list"
            )
            settled = _listed(
                record, "settled", "seen record with a settled end field that is not a list"
            )
            for trigger_id in ids:
                self._see(trigger_id, seen_limit)
            for reset_id in resets:
                remember_newest(self.reset_ids, reset_id, seen_limit)
            for trigger_id in released:
                remember_newest(self.released, trigger_id, seen_limit)
            for end in settled:
                remember_newest(self.settled, end, SETTLED_KEPT)
        else:
            log.warning("journal record of unknown kind=%s ignored", kind)
        self.records += 1

    def _resolve_failed(self, record: dict[str, object]) -> None:
        """Fold a kill's end into `failed`: a failed kill is added (newest, in place of an
        earlier failure of its kill id), unless that end settled already or resets released
        all its triggers; a flat or confirmed one
        resolves every failed kill whose scope its own contains and that had ended when its
        trigger was journaled (review 74: a kill running since before proved an account flat
        before the failed one left orders open there). A resumed kill, whose accounts an
        earlier life may have proved flat, resolves none."""
        summary = record.get("summary")
        if not isinstance(summary, dict) or not isinstance(summary.get("kill_id"), str):
            return
        kill_id = str(summary["kill_id"])
        if record.get("state") == "failed":
            held = self.failed.get(kill_id)
            if held is not None and held.get("summary") == summary:
                return  # the same end: a kill journals it once per trigger, with one summary
            end = _end_key(summary)
            if end in self.settled:
                return  # the same end, settled between two of its records (review 90)
            named = _as_list(record.get("unreleased", _trigger_ids(summary)))
            unreleased = [t for t in named if str(t) not in self.released]
            # A new failure, though the kill id may be an old one's (a kill resumed after a
            # restart, or relaunched by a reset that narrowed it): it ended now, so no trigger
            # journaled before may resolve it (review 88: an older flat end cleared it).
            if held is not None:
                self._drop_failed(kill_id)
            if named and not unreleased:  # released already: resolved as a reset's would be
                remember_newest(self.settled, end, SETTLED_KEPT)
                return
            self.failed[kill_id] = {**record, "unreleased": unreleased}
            while len(self.failed) > FAILED_KEPT:
                self._drop_failed(next(iter(self.failed)))
                self.failed_dropped += 1
            return
        if record.get("state") not in ("flat", "confirmed") or summary.get("kind") != "trigger":
            return
        scope = _scope_of(summary)
        if scope is None:
            return
        for failed_id in list(self.resolvable.get(kill_id, ())):
            theirs = _scope_of(self.failed.get(failed_id, {}).get("summary"))
            if theirs is not None and scope.contains(theirs):
                self._drop_failed(failed_id)

    def _release_failed(self, released: set[str]) -> None:
        """A failed kill whose every trigger a reset released is resolved (the operator's)."""
        for failed_id, failed in list(self.failed.items()):
            left = [t for t in _as_list(failed.get("unreleased")) if t not in released]
            if left:
                failed["unreleased"] = left
            else:
                self._drop_failed(failed_id)

    def _drop_failed(self, failed_id: str) -> None:
        """Forget a failure (resolved, released, pushed out or ended again) on every trigger's
        list too, as compaction does: if that kill id fails again, the new failure ends after
        those triggers were journaled, and they must not resolve it (review 88). Its end is
        settled: a later record of it is no new failure (review 90)."""
        summary = self.failed[failed_id].get("summary")
        if isinstance(summary, dict):
            remember_newest(self.settled, _end_key(summary), SETTLED_KEPT)
        del self.failed[failed_id]
        for failures in self.resolvable.values():
            if failed_id in failures:
                failures.remove(failed_id)

    def _see(self, trigger_id: str, limit: int) -> None:
        remember_newest(self.seen, trigger_id, limit)

    def _forget_finished(self) -> None:
        keep = set(self.latches) | self.unfinished
        for trigger_id in [t for t in self.triggers if t not in keep]:
            del self.triggers[trigger_id]
        for trigger_id in [t for t in self.flat_accounts if t not in self.unfinished]:
            del self.flat_accounts[trigger_id]
        for trigger_id in [t for t in self.resolvable if t not in self.unfinished]:
            del self.resolvable[trigger_id]


def remember_newest(ids: OrderedDict[str, None], one: str, limit: int) -> None:
    """Remember `one` as the newest of `ids`, forgetting the oldest past `limit` (the bounded
    id sets: seen trigger and reset ids here and in the engine, the replicas' id maps)."""
    ids[one] = None
    ids.move_to_end(one)
    while len(ids) > limit:
        ids.popitem(last=False)


def _snapshot(
    state: JournalState, now_ms: int, *, first: Sequence[tuple[str, dict[str, object]]] = ()
) -> list[dict[str, object]]:
    """The records that rebuild `state`; `first` after the ids, the last reset and the last
    kill, which are replayed for their record alone: they release or finish nothing after them."""
    records: list[dict[str, object]] = []
    if state.seen or state.reset_ids or state.released or state.settled:
        seen: dict[str, object] = {"kind": "seen", "ts_ms": now_ms, "ids": list(state.seen)}
        if state.reset_ids:
            seen["resets"] = list(state.reset_ids)
        if state.released:
            seen["released"] = list(state.released)
        if state.settled:
            seen["settled"] = list(state.settled)
        records.append(seen)
    if state.last_reset is not None:
        records.append(state.last_reset)
    records += state.failed.values()  # before the last kill: it may have resolved none of them
    if state.last_kill is not None:
        # replayed for the record alone: a failed last kill a reset resolved must not come
        # back (review 75); the unresolved ones are written above
        records.append({**state.last_kill, "compacted": True})
    records += [{"kind": k, "ts_ms": now_ms, **f} for k, f in first]
    for trigger_id, trigger in state.triggers.items():
        record: dict[str, object] = {
            "kind": "trigger",
            "ts_ms": now_ms,
            "trigger": trigger.to_json(),
        }
        if trigger_id not in state.unfinished:
            record["finished"] = True
        else:
            record["resolves"] = list(state.resolvable.get(trigger_id, ()))
        records.append(record)
    for trigger_id, scope in state.latches.items():
        records.append(
            {"kind": "latch", "ts_ms": now_ms, "trigger_id": trigger_id, "scope": scope.to_json()}
        )
    for trigger_id, accounts in state.flat_accounts.items():
        records += [
            {"kind": "account_flat", "ts_ms": now_ms, "trigger_id": trigger_id, "account": a}
            for a in accounts
        ]
    return records


def _end_key(summary: dict[str, object]) -> str:
    """One end of one kill: its kill id and a digest of its summary, which the kill writes
    once and journals once per trigger (the same digest as written and as read back)."""
    digest = hashlib.sha256(orjson.dumps(summary, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"{summary.get('kill_id')}/{digest[:24]}"


def _trigger_ids(summary: dict[str, object]) -> list[str]:
    return [str(t) for t in _as_list(summary.get("trigger_ids"))]


def _as_list(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []


def _listed(record: dict[str, object], key: str, error: str) -> list[str]:
    """The ids listed at `key` (none when absent); `TypeError(error)` when it is not a list."""
    value = record.get(key) or []
    if not isinstance(value, list):
        raise TypeError(error)
    return [str(v) for v in value]


def _scope_of(summary: object) -> Scope | None:
    """The scope a kill summary names, or None when it names none readable."""
    if not isinstance(summary, dict) or not isinstance(summary.get("scope"), dict):
        return None
    try:
        return Scope.from_json(summary["scope"])
    except (TypeError, ValueError, KeyError):
        return None


def _released_ids(record: dict[str, object]) -> set[str] | None:
    """The trigger ids a reset record names, or None for an old record that named none."""
    released = record.get("released")
    if released is None:
        return None
    if not isinstance(released, list):
        raise TypeError("reset record with a released field that is not a list")
    return {str(r["trigger_id"]) if isinstance(r, dict) else str(r) for r in released}
