"""Transitional: moved to `killswitch.streams.tracker`."""

from killswitch.streams.tracker import Divergence, OrderTracker

__all__ = ["Divergence", "OrderTracker"]
