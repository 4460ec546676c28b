"""What a connector has learned about its venue's cancel paths, and capabilities that say it.

Some venue behaviours are not settled by any source (reference §3.7): whether BingX's
`cancelOpenOrders` also removes OCO legs, whether `cancel`/`cancelOrders` accept an OCO leg's id
and cancel its list. A connector starts from "unknown", plans as if the answer were the slow
one where that is the only safe choice, and learns the answer from what the venue shows after
a cancel (a re-read, never an assumption). `PathCapabilities` carries what it learned, and the
time each request kind costs under the venue's limits, to the planner; `LearnedPaths` is the
record a connector keeps per account (in memory, and in a small JSON file when given one).

`PathCapabilities` extends `Capabilities` so the planner can read it where a connector gives it,
and plan as before where one does not.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from killswitch.exchanges.base import Capabilities

log = logging.getLogger(__name__)

# The answers an account learns (`LearnedPaths`' fields), each with the values it may take.
ANSWERS: dict[str, tuple[bool | str, ...]] = {
    "cancel_all_covers_lists": (True, False),
    "leg_id_cancels_list": (True, False),
    "oco_list_shape": ("legs", "ocoOrders"),
}


@dataclass(frozen=True, slots=True)
class KindRate:
    """How fast the kill may send one request kind on one account: `burst` at once, then
    `per_s` a second (the connector's own budget for it)."""

    kind: str  # a planner RequestKind value
    burst: int
    per_s: float

    def time_s(self, n: int) -> float:
        """Seconds from the first send to the last for `n` requests of this kind."""
        return 0.0 if n <= self.burst else (n - self.burst) / self.per_s


@dataclass(frozen=True, slots=True)
class PathCapabilities(Capabilities):
    """`Capabilities`, plus what the connector learned and what each request kind costs.

    `lists_coverage`: does a cancel-all also cancel order lists? None until learned (the base
    field `cancel_all_covers_lists` is True only once it is learned to be so).
    `list_legs_by_batch`: does a batch cancel of a list leg's id cancel its list? None until
    learned; a connector that is told yes in error still ends flat (it re-reads).
    """

    lists_coverage: bool | None = None
    list_legs_by_batch: bool | None = None
    rates: tuple[KindRate, ...] = ()

    def rate(self, kind: str) -> KindRate | None:
        return next((r for r in self.rates if r.kind == kind), None)


@dataclass(slots=True)
class LearnedPaths:
    """One account's learned answers. None: not learned yet. Saved to `path` when set."""

    cancel_all_covers_lists: bool | None = None
    leg_id_cancels_list: bool | None = None
    oco_list_shape: str | None = None  # "legs" | "ocoOrders"
    learned_at_ms: dict[str, int] = field(default_factory=dict)
    path: Path | None = None
    # Called with (name, value) each time an answer changes: for events and status.
    listeners: list[Callable[[str, bool | str], None]] = field(default_factory=list)

    def learn(self, name: str, value: bool | str) -> bool:
        """Record `name = value`; True when it changed what we knew."""
        if getattr(self, name) == value:
            return False
        setattr(self, name, value)
        self.learned_at_ms[name] = int(time.time() * 1000)
        log.info("learned %s=%s", name, value)
        self.save()
        for listener in list(self.listeners):
            try:
                listener(name, value)
            except Exception:  # a sink's bug must not break a cancel
                log.exception("learned-path listener failed")
        return True

    def to_json(self) -> dict[str, object]:
        answers: dict[str, object] = {name: getattr(self, name) for name in ANSWERS}
        return answers | {"learned_at_ms": dict(self.learned_at_ms)}

    def save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self.to_json(), sort_keys=True))
            os.replace(tmp, self.path)
        except OSError as exc:  # learning is an optimisation: never fail a kill over it
            log.warning("could not save learned paths to %s: %s", self.path, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()

    @classmethod
    def load(cls, path: Path | None) -> LearnedPaths:
        """What `path` holds; a missing or unreadable file is "nothing learned"."""
        learned = cls(path=path)
        if path is None:
            return learned
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return learned
        if not isinstance(data, dict):
            return learned
        for name, values in ANSWERS.items():
            value = data.get(name)
            # The type first: a saved 1 is not a learned True (1 == True).
            if type(value) in (bool, str) and value in values:
                setattr(learned, name, value)
        stamps = data.get("learned_at_ms")
        if isinstance(stamps, dict):
            learned.learned_at_ms = {
                str(k): int(v) for k, v in stamps.items() if isinstance(v, int)
            }
        return learned
