"""Prometheus view of the Kafka input and outputs, read at scrape time."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class _Connected(Protocol):
    connected: bool


class _AlertStats(Protocol):
    consumed: int
    triggers: int
    duplicates: int
    heartbeats: int
    resets: int
    dead_lettered: int
    dead_letter_lost: int
    commit_failures: int
    engine_failures: int
    rejected: Counter[str]


class _Alerts(_Connected, Protocol):
    """What the collector reads of the alert consumer (`kafka.alerts.KafkaAlertConsumer`)."""

    @property
    def stats(self) -> _AlertStats: ...

    def lag(self) -> int | None: ...


class _Snapshotting(_Connected, Protocol):
    def snapshot(self) -> dict[str, object]: ...


class KafkaCollector(Collector):
    """Prometheus view of the Kafka input and outputs, read at scrape time."""

    def __init__(
        self,
        alerts: _Alerts,
        events: _Snapshotting | None = None,
        latch: _Connected | None = None,
    ) -> None:
        self.alerts = alerts
        self.events = events
        self.latch = latch

    def collect(self) -> Iterator[Metric]:
        connected = GaugeMetricFamily(
            "killswitch_kafka_connected", "1 while connected to the broker.", labels=["component"]
        )
        for name, part in (("alerts", self.alerts), ("events", self.events), ("latch", self.latch)):
            if part is not None:
                connected.add_metric([name], 1.0 if part.connected else 0.0)
        yield connected
        stats = self.alerts.stats
        for name, value, text in (
            ("consumed", stats.consumed, "Alert records consumed."),
            ("triggers", stats.triggers, "Alerts handed to the engine as new triggers."),
            ("duplicates", stats.duplicates, "Alerts the engine had already (no-ops)."),
            ("heartbeats", stats.heartbeats, "Heartbeat alerts."),
            ("resets", stats.resets, "Reset alerts applied."),
            ("dead_lettered", stats.dead_lettered, "Records confirmed in the dead-letter topic."),
            ("dead_letter_lost", stats.dead_letter_lost, "Dead letters given up on."),
            ("commit_failures", stats.commit_failures, "Offset commits that failed."),
            ("engine_failures", stats.engine_failures, "Engine calls retried (journal errors)."),
        ):
            counter = CounterMetricFamily(f"killswitch_kafka_alerts_{name}", text)
            counter.add_metric([], float(value))
            yield counter
        rejected = CounterMetricFamily(
            "killswitch_kafka_alerts_rejected", "Alert records rejected, by kind.", labels=["kind"]
        )
        for kind, count in stats.rejected.items():
            rejected.add_metric([kind], float(count))
        yield rejected
        lag = self.alerts.lag()
        if lag is not None:
            gauge = GaugeMetricFamily("killswitch_kafka_alerts_lag", "Alert records not yet done.")
            gauge.add_metric([], float(lag))
            yield gauge
        if self.events is not None:
            snap = self.events.snapshot()
            buffered = GaugeMetricFamily(
                "killswitch_kafka_events_buffered", "Event records waiting for the broker."
            )
            buffered.add_metric([], _num(snap.get("buffered")))
            yield buffered
            stuck = GaugeMetricFamily(
                "killswitch_kafka_events_stuck",
                "1 while the broker is reachable but takes none of the event records sent.",
            )
            stuck.add_metric([], 1.0 if snap.get("stuck") is True else 0.0)
            yield stuck
            for name, text in (
                ("sent", "Event records acknowledged by the broker."),
                ("dropped", "Event records dropped: from a full buffer, or never deliverable."),
            ):
                counter = CounterMetricFamily(f"killswitch_kafka_events_{name}", text)
                counter.add_metric([], _num(snap.get(name)))
                yield counter


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0
