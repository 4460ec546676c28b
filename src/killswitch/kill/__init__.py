"""The kill: intake and latch, per-account waves and retries, the gate, latched work, records."""
