"""Transitional: the engine moved to `killswitch.kill`. Import from there."""

from killswitch.kill.config import Account, EngineConfig, Spawn, TrackerView
from killswitch.kill.engine import KILLS_KEPT, Engine
from killswitch.kill.gate import Gate as _Gate
from killswitch.kill.record import (
    AccountResult,
    AccountState,
    Kill,
    KillKind,
    KillState,
    SubmitResult,
    open_json,
)

__all__ = [
    "KILLS_KEPT",
    "Account",
    "AccountResult",
    "AccountState",
    "Engine",
    "EngineConfig",
    "Kill",
    "KillKind",
    "KillState",
    "Spawn",
    "SubmitResult",
    "TrackerView",
    "_Gate",
    "open_json",
]
