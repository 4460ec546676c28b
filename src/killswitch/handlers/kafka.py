"""Transitional: moved to `killswitch.kafka.alerts` (and the collector to `sinks`)."""

from killswitch.backoff import Backoff
from killswitch.kafka.alerts import AlertEngine, ConsumerStats, KafkaAlertConsumer
from killswitch.kafka.client import client_options, new_producer
from killswitch.sinks.kafka_metrics import KafkaCollector

__all__ = [
    "AlertEngine",
    "Backoff",
    "ConsumerStats",
    "KafkaAlertConsumer",
    "KafkaCollector",
    "client_options",
    "new_producer",
]
