"""Transitional: moved to `killswitch.kafka.events`."""

from killswitch.kafka.events import KafkaEventSink, encode_event

__all__ = ["KafkaEventSink", "encode_event"]
