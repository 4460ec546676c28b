"""Generic test helpers shared by every suite: `eventually` and `free_port`.

Import them explicitly (`from tests.conftest import eventually, free_port`); fixtures belong
in `tests/fixtures/` or a suite's own conftest.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest
from hypothesis import settings

T = TypeVar("T")

# No timing asserts, hypothesis's own included: its per-example deadline (200 ms) failed a
# budget property on a loaded 2-core run (277 ms). Profiles set per test still apply.
settings.register_profile("killswitch", deadline=None)
settings.load_profile("killswitch")


async def eventually(
    check: Callable[[], T | Awaitable[T]], *, timeout_s: float = 10.0, interval_s: float = 0.01
) -> T:
    """Poll `check` until it returns a truthy value (or an awaitable of one); fail after timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s: {check!r}")
        await asyncio.sleep(interval_s)


@contextlib.asynccontextmanager
async def never_idle() -> AsyncIterator[None]:
    """Another task is ready at every loop iteration while this is entered."""
    stop = asyncio.Event()

    async def busy() -> None:
        while not stop.is_set():
            await asyncio.sleep(0)

    spinner = asyncio.create_task(busy())
    try:
        yield
    finally:
        stop.set()
        await spinner


def free_port() -> int:
    """Return a loopback TCP port that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Suites that start subprocesses or run long randomized histories: `make test-fast` leaves them
# out (`-m "not slow and not kafka"`); `make test` runs everything.
_SLOW_PATHS = (
    "tests/chaos/",
    "tests/model/",
    "tests/integration/test_crash_drills.py",
    "tests/integration/test_daemon_lifecycle.py",
    "tests/integration/test_demo.py",
    "tests/integration/test_kill_restart.py",
    "tests/integration/test_sim_cli.py",
    "tests/integration/test_systemd_unit.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = config.rootpath
    for item in items:
        where = item.path.relative_to(root).as_posix()
        if where.startswith(_SLOW_PATHS):
            item.add_marker(pytest.mark.slow)


# Suites that count across their tests and print the count after the run: the module holding
# its `TALLY` (with `lines`, `export` and `absorb`), and the section it is printed under.
_TALLIES = {"tests.model.machine": None, "tests.chaos.trials": "chaos tally"}


def pytest_sessionfinish(session: pytest.Session) -> None:
    """In a pytest-xdist worker, hand this worker's tallies to the controller."""
    workeroutput: dict[str, Any] | None = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["tallies"] = {
            name: sys.modules[name].TALLY.export() for name in _TALLIES if name in sys.modules
        }


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """In the pytest-xdist controller, add a finished worker's tallies to this process's."""
    for name, exported in getattr(node, "workeroutput", {}).get("tallies", {}).items():
        importlib.import_module(name).TALLY.absorb(exported)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for name, section in _TALLIES.items():
        lines = sys.modules[name].TALLY.lines() if name in sys.modules else []
        if lines and section:
            terminalreporter.section(section)
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def _venue_limits_kept_per_test() -> Any:
    """A test that builds the daemon's parts points `limits_file.persist_to` at its own state dir:
    end it with the test, or a later test's simulator on a reused port would be seeded with
    this one's charges and bans. And each test starts with nothing shared per IP: a connector
    an earlier test built and never closed (test_factory's) is not this test's (review 73/75's
    "a connector of the last life is still open" failed after tests/unit in one process)."""
    from killswitch.exchanges import budget

    budget._SHARED.clear()
    budget._USERS.clear()
    yield
    from killswitch.exchanges.limits_file import stop_persisting

    stop_persisting()
