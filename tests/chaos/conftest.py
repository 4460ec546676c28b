"""Print the chaos tally (`chaos: N passed, M failed`, per-fault counts) after the run."""

from __future__ import annotations

import pytest

from tests.chaos.trials import TALLY


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = TALLY.lines()
    if lines:
        terminalreporter.section("chaos tally")
        for line in lines:
            terminalreporter.write_line(line)
