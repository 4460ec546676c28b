"""Kafka: one reconnecting client base; alerts in (+ dead letters), events out, latch replicas."""
