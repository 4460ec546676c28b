"""Where the engine's record goes besides Kafka: the audit log and Prometheus metrics."""
