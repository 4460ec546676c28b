"""How the daemon's parts are wired at construction (issue 13: no callback found or patched on
afterwards). Review 98: nothing checked that the control server is given the latch replicator
the daemon runs; between 07dfffd and 3aac04e it was not, and a fire said nothing of its
replication."""

from __future__ import annotations

from pathlib import Path

import pytest

from killswitch.app import build_services
from killswitch.daemon import CriticalTasks
from killswitch.handlers.control import ControlServer
from killswitch.kafka.replicas import LatchReplicator
from killswitch.settings import Settings


def services(tmp_path: Path, **kafka: object) -> list[object]:
    settings = Settings(
        state_dir=tmp_path,
        accounts=[{"venue": "binance", "name": "mm-1", "api_key": "k", "api_secret": "s"}],
        control={"socket_path": tmp_path / "control.sock"},
        kafka=kafka,
    )
    return list(build_services(settings, CriticalTasks()))


@pytest.mark.parametrize("share_latch", [True, False])
def test_the_control_server_is_given_the_replicator_the_daemon_runs(
    tmp_path: Path, share_latch: bool
) -> None:
    built = services(tmp_path, enabled=True, share_latch=share_latch)
    (control,) = [s for s in built if isinstance(s, ControlServer)]
    replicators = [s for s in built if isinstance(s, LatchReplicator)]
    if share_latch:
        assert replicators == [control.latch_share]
    else:
        assert replicators == []
        assert control.latch_share is None


def test_without_kafka_there_is_no_replicator(tmp_path: Path) -> None:
    built = services(tmp_path, enabled=False)
    (control,) = [s for s in built if isinstance(s, ControlServer)]
    assert control.latch_share is None
    assert not any(isinstance(s, LatchReplicator) for s in built)
