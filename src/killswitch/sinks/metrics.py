"""Prometheus metrics, only when enabled: time to flat and first cancel, open orders per account,
stream state, account readiness, 429s and retries.

`Metrics` is an event sink (counters and histograms from the engine's records) plus a collector
that reads the live per-account view (open orders, lists, stream state, latch) at scrape time.
It uses its own registry, so tests and several engines in one process never collide.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from killswitch.events import EventRecord, EventType

log = logging.getLogger(__name__)

STREAM_STATES = ("connecting", "syncing", "live", "down", "unknown")
_TTF_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """Counters and histograms fed by events; gauges read from `status` at scrape time."""

    def __init__(
        self,
        status: Callable[[], dict[str, object]] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        # Every series lives in this instance's registry; the kill-time histograms share buckets.
        histogram = functools.partial(Histogram, buckets=_TTF_BUCKETS, registry=self.registry)
        counter = functools.partial(Counter, registry=self.registry)
        self.time_to_flat = histogram(
            "killswitch_time_to_flat_seconds",
            "From the trigger's produce time to the first all-empty verification.",
        )
        self.time_to_first_cancel = histogram(
            "killswitch_time_to_first_cancel_seconds",
            "From the kill's start to the first acknowledged cancel.",
        )
        self.kills = counter(
            "killswitch_kills",
            "Kills by result: `flat` counts every kill proved flat, `confirmed` those of them "
            "also confirmed, `failed` kills and sweeps that ended failed, `aborted` the rest.",
            ["result"],
        )
        self.requests = counter(
            "killswitch_cancel_requests",
            "Cancel requests by account, kind and result.",
            ["account", "request", "result"],
        )
        self.retries = counter("killswitch_retries", "Retried request attempts.", ["account"])
        self.rate_limited = counter(
            "killswitch_rate_limited", "429/418 answers seen by the kill path.", ["account"]
        )
        self.alarms = counter("killswitch_alarms", "Alarm events.", ["account"])
        if status is not None:
            self.registry.register(_StatusCollector(status))
        self._server: Any = None

    def emit(self, event: EventRecord) -> None:
        """Update counters and histograms from one event record."""
        kind = event.get("type")
        if kind == EventType.OUTCOME:
            account = str(event.get("account", ""))
            self.requests.labels(account, str(event.get("request")), str(event.get("result"))).inc()
            attempts = _number(event.get("attempts"))
            if attempts > 1:
                self.retries.labels(account).inc(attempts - 1)
            limited = _number(event.get("rate_limited"))
            if limited:
                self.rate_limited.labels(account).inc(limited)
        elif kind == EventType.FLAT:
            ttf = event.get("time_to_flat_ms")
            if isinstance(ttf, int | float):
                self.time_to_flat.observe(ttf / 1000)
            first = event.get("time_to_first_cancel_ms")
            if isinstance(first, int | float):
                self.time_to_first_cancel.observe(first / 1000)
            self.kills.labels("flat").inc()
        elif kind in (EventType.FAILED, EventType.CONFIRMED, EventType.ABORTED):
            self.kills.labels(str(kind)).inc()
        elif kind == EventType.ALARM:
            self.alarms.labels(str(event.get("account", ""))).inc()

    def serve(self, host: str, port: int) -> int:
        """Serve `/metrics` on a background thread; return the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        bound = int(server.server_address[1])
        log.info("metrics listening host=%s port=%d", host, bound)
        return bound

    def close(self) -> None:
        """Stop the HTTP server. Safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()


class _StatusCollector(Collector):
    def __init__(self, status: Callable[[], dict[str, object]]) -> None:
        self._status = status

    def collect(self) -> Iterable[GaugeMetricFamily]:
        status = self._status()
        latched = GaugeMetricFamily("killswitch_latched", "1 while a kill latch is held.")
        latched.add_metric([], 1.0 if status.get("latched") else 0.0)
        yield latched
        last = status.get("last_kill")
        summary = last.get("summary", last) if isinstance(last, dict) else None
        failed = GaugeMetricFamily(
            "killswitch_last_kill_failed",
            "1 when the last kill ended failed (not proved flat); 0 otherwise or before any.",
        )
        state = summary.get("state") if isinstance(summary, dict) else None
        failed.add_metric([], 1.0 if state == "failed" else 0.0)
        yield failed
        unresolved = GaugeMetricFamily(
            "killswitch_failed_kills",
            "Kills that ended failed and that no later flat kill over their scope, nor a reset "
            "of their latches, resolved: alert on > 0.",
        )
        # The listed ones only: those pushed out of the list cannot be resolved any more, and
        # would hold the alert on for good (review 75); `status` counts them.
        listed = status.get("failed_kills")
        unresolved.add_metric([], float(len(listed) if isinstance(listed, list) else 0))
        yield unresolved
        writable = GaugeMetricFamily(
            "killswitch_journal_writable",
            "0 while the journal refuses writes (a full or failing disk): no kill can be "
            "accepted until it writes again.",
        )
        writable.add_metric([], 0.0 if status.get("journal_failing") else 1.0)
        yield writable
        free = status.get("journal_free_bytes")
        if isinstance(free, int):
            space = GaugeMetricFamily(
                "killswitch_state_dir_free_bytes",
                "Free bytes where the journal lives: it needs room to accept kills.",
            )
            space.add_metric([], float(free))
            yield space
        orders = GaugeMetricFamily(
            "killswitch_open_orders",
            "Open orders the tracker holds; absent while it is not trusted (never read whole, "
            "or behind the venue): a count no read said is no count.",
            labels=["account"],
        )
        lists = GaugeMetricFamily(
            "killswitch_open_order_lists",
            "Open order lists the tracker holds; absent while it is not trusted.",
            labels=["account"],
        )
        trusted = GaugeMetricFamily(
            "killswitch_tracker_trusted",
            "1 while the account's tracker agrees with a complete venue read and its stream.",
            labels=["account"],
        )
        stream = GaugeMetricFamily(
            "killswitch_stream_state",
            "1 for the stream's current state.",
            labels=["account", "state"],
        )
        ready = GaugeMetricFamily(
            "killswitch_account_ready",
            "1 while the account passes its readiness checks (key, permissions, clock, stream, "
            "rate limits); 0 names a reason in `killswitch status`.",
            labels=["venue", "account"],
        )
        accounts = status.get("accounts")
        for entry in accounts if isinstance(accounts, list) else []:
            if not isinstance(entry, dict):
                continue
            label = f"{entry.get('venue')}/{entry.get('account')}"
            if "ready" in entry:
                ready.add_metric(
                    [str(entry.get("venue")), str(entry.get("account"))],
                    1.0 if entry["ready"] else 0.0,
                )
            if "tracker_trusted" in entry:
                trusted.add_metric([label], 1.0 if entry["tracker_trusted"] else 0.0)
            if "open_orders" in entry and entry.get("tracker_trusted"):
                orders.add_metric([label], _number(entry["open_orders"]))
                lists.add_metric([label], _number(entry.get("open_lists")))
            current = str(entry.get("stream", "unknown"))
            for state in STREAM_STATES:
                stream.add_metric([label, state], 1.0 if state == current else 0.0)
        yield orders
        yield lists
        yield trusted
        yield stream
        yield ready


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0
