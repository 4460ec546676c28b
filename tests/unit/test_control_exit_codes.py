"""`killswitch fire` exit codes from the daemon's answer: 0 only for a proved kill."""

from __future__ import annotations

import pytest

from killswitch.control_client import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_RUNNING,
    EXIT_USAGE,
    exit_code,
)


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        ({"ok": True, "outcome": "flat", "timed_out": False}, EXIT_OK),
        ({"ok": True, "outcome": "confirmed", "timed_out": False}, EXIT_OK),
        ({"ok": False, "outcome": "failed", "timed_out": False}, EXIT_FAILED),
        ({"ok": False, "outcome": "aborted", "timed_out": False}, EXIT_FAILED),
        ({"ok": False, "outcome": "failed", "timed_out": True}, EXIT_FAILED),
        ({"ok": False, "outcome": "running", "timed_out": True}, EXIT_RUNNING),
        # accepted without waiting: nothing proved yet
        ({"ok": True, "outcome": "running", "timed_out": False}, EXIT_RUNNING),
        # flat, but the wait for confirmation ended first
        ({"ok": False, "outcome": "flat", "timed_out": True}, EXIT_RUNNING),
        ({"ok": True, "outcome": "unknown", "timed_out": False}, EXIT_FAILED),
        # a state this client does not know is never taken for flat
        ({"ok": True, "outcome": "verifying", "timed_out": False}, EXIT_FAILED),
        ({"ok": True, "timed_out": True}, EXIT_OK),  # status, reset: no outcome
        ({"ok": False, "refused": True, "error": "bad"}, EXIT_USAGE),
        ({"ok": False, "error": "failed: OSError: disk full"}, EXIT_FAILED),
    ],
)
def test_an_answer_maps_to_one_exit_code(answer: dict[str, object], code: int) -> None:
    assert exit_code(answer) == code
