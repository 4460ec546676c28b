"""Fault injection for the simulator: what can go wrong, where, how often.

A `Fault` matches requests by account name and endpoint (a path such as `/api/v3/openOrders`
or a ws-api method such as `openOrders.cancelAll`; `*` suffix for a prefix match) and fires with
a probability, at most `count` times. Faults are set from the simulator's config or at run
time through the admin API (`POST /_sim/faults`), and drawn from a seeded random generator so a
chaos trial can be replayed.
"""

from __future__ import annotations

import enum
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class FaultKind(enum.StrEnum):
    LATENCY = "latency"  # add latency_ms +/- jitter_ms to every matching request
    ERROR_BEFORE = "error_before"  # answer http_status (5xx) without applying the request
    ERROR_AFTER = "error_after"  # apply the request, then answer http_status (outcome unknown)
    STALL = "stall"  # hold the request for stall_s (past the client's timeout), then drop it
    RATE_LIMIT = "rate_limit"  # answer 429 with Retry-After retry_after_s (a 429 storm)
    CLOCK_SKEW = "clock_skew"  # the venue's clock runs skew_ms ahead (negative: behind)
    WS_DROP = "ws_drop"  # close matching stream connections now (and on connect while active)
    WS_SILENT = "ws_silent"  # stream stays connected, answers pings, delivers no events
    SERVER_SHUTDOWN = "server_shutdown"  # Binance serverShutdown event, then close
    LISTEN_KEY_EXPIRY = "listen_key_expiry"  # expire the account's listenKeys now


@dataclass(slots=True)
class Fault:
    kind: FaultKind
    account: str | None = None  # None: every account of the venue
    endpoint: str | None = None  # None: every endpoint; trailing '*' = prefix
    probability: float = 1.0
    count: int | None = None  # how many more times it may fire; None: unlimited
    until_s: float | None = None  # monotonic deadline; None: until cleared
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    http_status: int = 503
    stall_s: float = 30.0
    retry_after_s: int = 1
    skew_ms: int = 0
    id: int = 0

    def matches(self, account: str | None, endpoint: str) -> bool:
        if self.until_s is not None and time.monotonic() > self.until_s:
            return False
        if self.count is not None and self.count <= 0:
            return False
        if self.account is not None and account != self.account:
            return False
        if self.endpoint is None:
            return True
        if self.endpoint.endswith("*"):
            return endpoint.startswith(self.endpoint[:-1])
        return endpoint == self.endpoint

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fault:
        """Build a fault from config or admin JSON; a `ValueError` names each bad field."""
        return FaultSpec.model_validate(data).to_fault()


class FaultSpec(BaseModel):
    """The validated input form of a `Fault` (sim TOML and `POST /_sim/faults`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: FaultKind
    account: str | None = None
    endpoint: str | None = None
    probability: float = Field(1.0, ge=0.0, le=1.0)
    count: int | None = Field(None, ge=0)
    duration_s: float | None = Field(None, gt=0.0)
    until_s: float | None = None  # as `to_json` reports it, so a listed fault can be re-added
    latency_ms: float = Field(0.0, ge=0.0)
    jitter_ms: float = Field(0.0, ge=0.0)
    http_status: int = Field(503, ge=500, le=599)
    stall_s: float = Field(30.0, gt=0.0)
    retry_after_s: int = Field(1, ge=0)
    skew_ms: int = 0
    id: int = 0  # ignored: the venue's FaultSet numbers faults

    def to_fault(self) -> Fault:
        # A spec is a fault's fields plus `duration_s`; its `id` is ignored: FaultSet numbers them.
        fields = self.model_dump(exclude={"duration_s", "id"})
        if self.duration_s is not None:
            fields["until_s"] = time.monotonic() + self.duration_s
        return Fault(**fields)


@dataclass(slots=True)
class FaultSet:
    """The active faults of one venue. `draw` decides, consumes a count and returns the fault."""

    seed: int | None = None
    faults: list[Fault] = field(default_factory=list)
    _rng: random.Random = field(init=False)
    _next_id: int = 1

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def reseed(self, seed: int | None) -> None:
        self._rng = random.Random(seed)

    def add(self, fault: Fault) -> Fault:
        fault.id = self._next_id
        self._next_id += 1
        self.faults.append(fault)
        return fault

    def remove(self, fault_id: int) -> bool:
        before = len(self.faults)
        self.faults = [f for f in self.faults if f.id != fault_id]
        return len(self.faults) != before

    def clear(self, kind: FaultKind | None = None) -> None:
        self.faults = [] if kind is None else [f for f in self.faults if f.kind != kind]

    def draw(self, kind: FaultKind, account: str | None, endpoint: str) -> Fault | None:
        for fault in self.faults:
            if fault.kind is not kind or not fault.matches(account, endpoint):
                continue
            if fault.probability < 1.0 and self._rng.random() >= fault.probability:
                continue
            if fault.count is not None:
                fault.count -= 1
            return fault
        return None

    def active(self, kind: FaultKind, account: str | None, endpoint: str = "") -> Fault | None:
        """A matching fault of `kind`, without drawing or consuming it (for standing states)."""
        for fault in self.faults:
            if fault.kind is kind and fault.matches(account, endpoint):
                return fault
        return None

    def latency_s(self, account: str | None, endpoint: str) -> float:
        total = 0.0
        for fault in self.faults:
            if fault.kind is FaultKind.LATENCY and fault.matches(account, endpoint):
                jitter = self._rng.uniform(-fault.jitter_ms, fault.jitter_ms)
                total += max(0.0, fault.latency_ms + jitter) / 1000.0
        return total

    def skew_ms(self, account: str | None) -> int:
        return sum(
            f.skew_ms
            for f in self.faults
            if f.kind is FaultKind.CLOCK_SKEW and f.matches(account, "")
        )

    def to_json(self) -> list[dict[str, Any]]:
        return [f.to_json() for f in self.faults]
