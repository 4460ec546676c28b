"""What a connector learns of its venue is told (a `learned` event) and shown (status)."""

from __future__ import annotations

from pathlib import Path

from killswitch.app import build_parts
from killswitch.exchanges.bingx import BingxExchange
from killswitch.settings import Settings
from tests.fakes import EventLog


def test_a_learned_bingx_path_is_an_event_a_status_entry_and_kept_in_the_state_dir(
    tmp_path: Path,
) -> None:
    settings = Settings(
        state_dir=tmp_path,
        accounts=[{"venue": "bingx", "name": "mm-1", "api_key": "k", "api_secret": "s"}],
        control={"socket_path": tmp_path / "control.sock"},
    )
    parts = build_parts(settings)
    log = EventLog()
    parts.events.add(log)
    (exchange,) = parts.venues.exchanges
    assert isinstance(exchange, BingxExchange)

    exchange.learned.learn("leg_id_cancels_list", True)

    (event,) = log.of("learned")
    assert (event["account"], event["path"], event["value"]) == (
        "bingx/mm-1",
        "leg_id_cancels_list",
        True,
    )
    (entry,) = parts.engine.status()["accounts"]  # type: ignore[misc]
    assert entry["learned"]["leg_id_cancels_list"] is True
    assert (tmp_path / "learned-bingx-mm-1.json").exists()


def test_the_daemon_keeps_what_the_venues_hold_against_it_in_the_state_dir(
    tmp_path: Path,
) -> None:
    """Review 66: budgets, bans and BingX error counts lived in memory only; the daemon's
    parts now keep them in `state_dir/venue-limits.json` (see `limits_file.persist_to`)."""
    from killswitch.exchanges import limits_file

    settings = Settings(
        state_dir=tmp_path,
        accounts=[{"venue": "mexc", "name": "mm-1", "api_key": "k", "api_secret": "s"}],
        control={"socket_path": tmp_path / "control.sock"},
    )
    build_parts(settings)
    store = limits_file._STORE
    assert store is not None
    assert store.path == tmp_path / "venue-limits.json"
