"""Print the model checker's tally at the end of the session, with or without `-s`."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.model.machine import TALLY


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TALLY.histories:
        terminalreporter.write_line(TALLY.line())


@pytest.fixture
def quiet_logs() -> Iterator[None]:
    """The engine logs every kill at WARNING: thousands of lines a run, read by no one."""
    logger = logging.getLogger("killswitch")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
