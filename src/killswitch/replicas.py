"""Transitional: moved to `killswitch.kafka.replicas`."""

from killswitch.kafka.replicas import LatchLog, LatchReplicator, held_latches

__all__ = ["LatchLog", "LatchReplicator", "held_latches"]
