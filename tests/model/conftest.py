"""The model checker's fixtures (`tests/conftest.py` prints its tally after the run)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


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
