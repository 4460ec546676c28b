"""Transitional: moved to `killswitch.streams.supervisor`."""

from killswitch.streams.supervisor import StreamState, StreamSupervisor

__all__ = ["StreamState", "StreamSupervisor"]
