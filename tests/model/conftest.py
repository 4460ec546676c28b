"""Print the model checker's tally at the end of the session, with or without `-s`."""

from __future__ import annotations

import pytest

from tests.model.machine import TALLY


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TALLY.histories:
        terminalreporter.write_line(TALLY.line())
