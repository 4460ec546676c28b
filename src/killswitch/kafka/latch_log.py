"""The latch topic's records, folded in offset order into the cluster's latch (`LatchLog`), and
what a replica must do to agree with it (`Decision`). Pure data: the replicator
(`kafka.replicas`) reads and writes the topic, and the reconciler (`kafka.reconciler`) makes the
engine agree with it.

With `kafka.alert_hmac_key` configured, only records signed with it as alerts are (header
`x-signature`, hex HMAC-SHA256 of the value bytes) are folded in: anyone who can write to the
topic could otherwise release a latch, or fire a kill on every replica. An unsigned or badly
signed record is counted and raises `Unauthenticated`; that includes the unsigned history
written before the key was configured (nothing on the topic can tell it from a forgery).
Tombstones have no value to sign and then carry no authority either: the signed reset
published just before them has already released their ids, and they remain only so that
compaction drops the released latch records. A trigger id a reset on the topic released is
never latched again from it: a signed latch record written to the topic again (a replay) is
ignored like a late copy.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from killswitch.handlers.alerts import Headers, Unauthenticated, verify_signature
from killswitch.journal import remember_newest
from killswitch.model import Trigger

log = logging.getLogger(__name__)


@dataclass
class LatchLog:
    """The cluster's latch as the topic tells it, folded record by record in offset order."""

    latched: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> trigger json
    # The newest released ids, bounded: the topic grows for ever, this process must not.
    released: OrderedDict[str, None] = field(default_factory=OrderedDict)
    origins: dict[str, str] = field(default_factory=dict)  # latched id -> origin replica
    peers: set[str] = field(default_factory=set)  # every origin seen
    last_reset: dict[str, Any] | None = None
    records: int = 0
    invalid: int = 0
    unauthenticated: int = 0  # records the key does not sign: folded in nowhere
    stale: int = 0  # latch records of ids a reset on the topic released: folded in nowhere
    # `kafka.alert_hmac_key`: None folds every record in (no key, unauthenticated, as alerts).
    hmac_key: bytes | None = field(default=None, repr=False)

    def apply(
        self, key: bytes | None, value: bytes | None, headers: Headers = ()
    ) -> dict[str, Any] | None:
        """Fold one record in; return it decoded (None for a tombstone or an invalid record).

        Raise `Unauthenticated` (counted, folded in nowhere) when a key is configured and
        does not sign the record's value.
        """
        self.records += 1
        name = (key or b"").decode(errors="replace")
        if value is None:
            if self.hmac_key is None and name.startswith("latch/"):
                self.latched.pop(name.removeprefix("latch/"), None)
            return None
        if self.hmac_key is not None:
            try:
                verify_signature(value, headers, self.hmac_key)
            except Unauthenticated:
                self.unauthenticated += 1
                raise
        try:
            record = _decode(value)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            self.invalid += 1
            log.error("invalid latch record key=%s error=%s", name, exc)
            return None
        if record["type"] == "latch":
            trigger_id = str(record["trigger"]["id"])
            if trigger_id in self.released:
                # A reset on the topic released it: trigger ids are never latched twice (an
                # engine answers a seen id as a duplicate), so this is a copy written again
                # (review 74: a signed record replayed to the topic fired the reset kill on a
                # replica that had never seen it) or a peer's late copy. Folded in nowhere.
                self.stale += 1
                log.warning(
                    "latch record for a trigger a reset on the topic released, ignored "
                    "trigger_id=%s",
                    trigger_id,
                )
                return None
            self.latched[trigger_id] = record["trigger"]
            self.origins[trigger_id] = str(record.get("origin", ""))
            self.peers.add(self.origins[trigger_id])
        else:
            self.peers.add(str(record.get("origin", "")))
            for trigger_id in (str(i) for i in record.get("released") or []):
                self.latched.pop(trigger_id, None)
                self.origins.pop(trigger_id, None)
                remember(self.released, trigger_id)
            self.last_reset = record
        return record

    def decide(self, held: Iterable[str]) -> Decision:
        """Compare the latches this replica holds with the cluster's: what to do about it."""
        mine = set(held)
        submit = [t for i, t in self.latched.items() if i not in mine]
        unknown = sorted(mine - set(self.latched) - self.released.keys())
        release = sorted(mine & self.released.keys())
        return Decision(submit=submit, publish=unknown, release=release)


@dataclass(frozen=True)
class Decision:
    """What a replica must do to agree with the latch log."""

    submit: list[dict[str, Any]]  # cluster latches this replica lacks
    publish: list[str]  # latches this replica holds that the log has never seen
    release: list[str]  # latches held that a reset elsewhere named: released, and only they


MEMORY_IDS = 100_000  # ids kept in each bounded map


def remember(ids: OrderedDict[str, None], key: str) -> None:
    """Add `key` as the newest id; forget the oldest past `MEMORY_IDS`."""
    remember_newest(ids, key, MEMORY_IDS)


def _decode(value: bytes) -> dict[str, Any]:
    record = orjson.loads(value)
    if not isinstance(record, dict):
        raise TypeError("not an object")
    kind = record.get("type")
    if kind == "latch":
        trigger = record["trigger"]
        if not isinstance(trigger, dict):
            raise TypeError("latch without a trigger object")
        Trigger.from_json(trigger)  # validate now, not when applied
    elif kind == "reset":
        if not isinstance(record.get("released") or [], list):
            raise TypeError("reset.released must be a list")
    else:
        raise TypeError(f"unknown record type {kind!r}")
    return record
