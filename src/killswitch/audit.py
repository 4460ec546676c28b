"""Transitional: moved to `killswitch.sinks.audit`."""

from killswitch.sinks.audit import AuditLog, read_audit

__all__ = ["AuditLog", "read_audit"]
