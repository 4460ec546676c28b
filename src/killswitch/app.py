"""Compose the daemon's services from the settings (the engine's owner fills this in)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from killswitch.daemon import CriticalTasks, Service
    from killswitch.settings import Settings


def build_services(settings: Settings, critical: CriticalTasks) -> list[Service]:
    """Return the services to run, in start order (stopped in reverse).

    `critical` runs work that must survive the shutdown cancel, such as a kill in flight:
    `await critical.run(engine.kill(trigger), name=f"kill {trigger.id}")`.
    """
    del settings, critical
    return []
