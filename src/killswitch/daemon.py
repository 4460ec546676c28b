"""Run the daemon: start services, serve under one TaskGroup, stop gracefully on a signal.

Lifecycle (uvicorn's shape): startup -> main loop -> shutdown.

- startup: `start()` every service in order (connect inputs, warm sessions); then READY=1.
- main loop: every service's `run()` in one `asyncio.TaskGroup`, plus a supervisor that feeds
  the systemd watchdog only while every service reports healthy, and keeps STATUS= current.
- shutdown (SIGTERM/SIGINT, or a service crashed): STOPPING=1; `stop()` every service in
  reverse order (stop taking work); wait up to `grace_period_s` for `run()`s and critical work
  to finish; cancel what is left and log one line naming it. A second SIGINT skips the wait.

Critical work (a kill in flight) runs in `CriticalTasks`, outside the TaskGroup: a crash of a
service or the shutdown cancel of the services does not cancel it; it only loses the grace
period race.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from killswitch.notify import Notifier

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_FORCED = 130


@runtime_checkable
class Service(Protocol):
    """A long-running part of the daemon (an input, a sink, the engine)."""

    name: str

    async def start(self) -> None:
        """Connect and get ready to take work; return once ready (before READY=1)."""

    async def run(self) -> None:
        """Serve until `stop()` is called, then return once in-flight work is done."""

    async def stop(self) -> None:
        """Stop taking new work; safe to call twice, and before or without `start()`."""

    def healthy(self) -> bool:
        """Say whether the service works; the watchdog is fed only while all say yes."""

    def status(self) -> str:
        """Describe the service's state in a few words for `systemctl status`."""


class CriticalTasks:
    """Run work that must not be cancelled by a shutdown or a sibling's crash (aiorun's idea)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._awaited: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        """Start `coro` as a critical task; its failure is logged unless someone awaits it."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    async def run(self, coro: Coroutine[Any, Any, T], *, name: str) -> T:
        """Run `coro` to completion even if the caller is cancelled meanwhile; return its result."""
        task = self.spawn(coro, name=name)
        self._awaited.add(task)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            # Nobody will see its outcome now: let the done callback log a failure.
            self._awaited.discard(task)
            raise

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        awaited = task in self._awaited
        self._awaited.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not awaited:
            log.error("critical task failed task=%s", task.get_name(), exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    def names(self) -> list[str]:
        """Return the names of the critical tasks still running."""
        return sorted(t.get_name() for t in self._tasks)

    def pending(self) -> set[asyncio.Task[Any]]:
        return set(self._tasks)

    def cancel_all(self) -> list[str]:
        """Cancel every critical task still running; return their names."""
        names = self.names()
        for task in self._tasks:
            task.cancel()
        return names


class Daemon:
    """Own the services' lifecycle, signals and systemd notifications."""

    def __init__(
        self,
        services: Sequence[Service],
        *,
        critical: CriticalTasks | None = None,
        grace_period_s: float = 10.0,
        notifier: Notifier | None = None,
        status_interval_s: float = 5.0,
        stop_last: Sequence[Service] = (),
    ) -> None:
        self.services = list(services)
        # Stopped after all the others (the events sink): what the engine reports while it
        # stops, a kill ending in its grace period, is still sent.
        self.stop_last = list(stop_last)
        self.critical = critical if critical is not None else CriticalTasks()
        self.grace_period_s = grace_period_s
        self.notifier = notifier if notifier is not None else Notifier()
        self.status_interval_s = status_interval_s
        self.should_exit = asyncio.Event()
        self.force_exit = asyncio.Event()
        self.started = asyncio.Event()
        self.failed = False
        self._started: list[Service] = []
        self._last_status = ""
        self._deadline: float | None = None  # monotonic end of the grace period

    # -- signals -------------------------------------------------------------------------------

    def handle_signal(self, sig: signal.Signals) -> None:
        """Begin a graceful stop; a second SIGINT forces it."""
        if self.should_exit.is_set():
            if sig == signal.SIGINT:
                log.warning("second SIGINT: forcing exit")
                self.force_exit.set()
            else:
                log.info("already stopping signal=%s", sig.name)
            return
        log.info("stopping signal=%s grace_period_s=%s", sig.name, self.grace_period_s)
        self._begin_stop()

    def _begin_stop(self) -> float:
        """Start the one grace period shared by all work in flight; return when it ends."""
        if self._deadline is None:
            self._deadline = time.monotonic() + self.grace_period_s
        self.should_exit.set()
        return self._deadline

    def _install_signal_handlers(self) -> list[signal.Signals]:
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.handle_signal, sig)
            installed.append(sig)
        return installed

    # -- lifecycle -----------------------------------------------------------------------------

    async def serve(self) -> int:
        """Run startup, main loop and shutdown; return the process exit code."""
        installed = self._install_signal_handlers()
        try:
            if await self._startup():
                await self._main_loop()
            await self._shutdown()
        finally:
            loop = asyncio.get_running_loop()
            for sig in installed:
                loop.remove_signal_handler(sig)
        if self.force_exit.is_set():
            return EXIT_FORCED
        return EXIT_FAILED if self.failed else EXIT_OK

    async def _startup(self) -> bool:
        self._set_status("starting")
        startup = asyncio.create_task(self._start_services(), name="startup")
        stop = asyncio.create_task(self.should_exit.wait(), name="startup-stop-watch")
        try:
            await asyncio.wait({startup, stop}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            startup.cancel()
            raise
        finally:
            stop.cancel()
        if not startup.done():
            startup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await startup
            log.info("startup interrupted by a stop request")
            return False
        exc = startup.exception()
        if exc is not None:
            log.error("startup failed", exc_info=exc)
            self.failed = True
            return False
        names = ", ".join(s.name for s in self.services) or "none"
        log.info("started services=%s", names)
        self.notifier.ready(self._status_line())
        self.started.set()
        return True

    async def _start_services(self) -> None:
        for service in self.services:
            self._set_status(f"starting {service.name}")
            log.info("starting service=%s", service.name)
            self._started.append(service)
            await service.start()

    async def _main_loop(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                runs = [
                    tg.create_task(self._run_service(s), name=f"run {s.name}")
                    for s in self.services
                ]
                supervisor = tg.create_task(self._supervise(), name="supervisor")
                await self.should_exit.wait()
                await self._stop_services()
                # Critical work is waited for too, but never cancelled here: see _shutdown.
                await self._wait_grace(set(runs) | self.critical.pending())
                leftover = [t for t in runs if not t.done()]
                for task in leftover:
                    task.cancel()
                supervisor.cancel()
                self._log_cancelled([t.get_name() for t in leftover])
        except* Exception:  # noqa: BLE001 - logged with its service name in _run_service
            # Logged in _run_service with the service's name; the TaskGroup cancelled the rest.
            self.failed = True

    async def _run_service(self, service: Service) -> None:
        try:
            await service.run()
        except Exception:
            log.exception("service failed, stopping the daemon service=%s", service.name)
            raise
        if not self.should_exit.is_set():
            log.info("service finished service=%s", service.name)

    async def _shutdown(self) -> None:
        self._begin_stop()
        self.notifier.stopping("stopping")
        # Services are stopped already on a signal; after a crash or a failed start they are not.
        await self._stop_services()
        if len(self.critical):
            log.warning(
                "waiting for critical work tasks=%s grace_period_s=%s",
                ",".join(self.critical.names()),
                self.grace_period_s,
            )
            await self._wait_grace(self.critical.pending())
            cancelled = self.critical.cancel_all()
            self._log_cancelled(cancelled)
        log.info("stopped failed=%s", self.failed)

    async def _stop_services(self) -> None:
        # In reverse start order, those in `stop_last` after all the others.
        order = list(reversed(self._started))
        self._started.clear()
        order.sort(key=lambda s: any(s is last for last in self.stop_last))
        for service in order:
            try:
                await service.stop()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.failed = True
                log.exception("stop failed service=%s", service.name)

    async def _wait_grace(self, tasks: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
        """Wait for `tasks` until the grace period ends or exit is forced; return the rest."""
        deadline = self._begin_stop()
        pending = {t for t in tasks if not t.done()}
        if not pending or self.force_exit.is_set():
            return pending
        force = asyncio.create_task(self.force_exit.wait(), name="force-exit-watch")
        try:
            while pending and not force.done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                _, pending = await asyncio.wait(
                    pending | {force}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                pending.discard(force)
        finally:
            force.cancel()
        return {t for t in pending if not t.done()}

    def _log_cancelled(self, names: Sequence[str]) -> None:
        if names:
            log.warning(
                "grace period over, cancelled count=%d tasks=%s", len(names), ",".join(names)
            )

    # -- supervision ---------------------------------------------------------------------------

    async def _supervise(self) -> None:
        interval = self.notifier.watchdog_interval_s
        period = min(interval, self.status_interval_s) if interval else self.status_interval_s
        next_watchdog = 0.0
        was_healthy = True
        while True:
            sick = self.unhealthy()
            if sick and was_healthy:
                log.warning("unhealthy, watchdog not fed services=%s", ",".join(sick))
            elif not sick and not was_healthy:
                log.info("healthy again, feeding watchdog")
            was_healthy = not sick
            now = time.monotonic()
            if interval and not sick and now >= next_watchdog:
                self.notifier.watchdog()
                next_watchdog = now + interval
            self._set_status(self._status_line())
            await asyncio.sleep(period)

    def unhealthy(self) -> list[str]:
        """Return the names of services that do not report healthy."""
        sick = []
        for service in self.services:
            try:
                ok = service.healthy()
            except Exception:
                log.exception("health check failed service=%s", service.name)
                ok = False
            if not ok:
                sick.append(service.name)
        return sick

    def _status_line(self) -> str:
        if not self.services:
            return "running; no inputs configured"
        parts = []
        for service in self.services:
            try:
                parts.append(f"{service.name}: {service.status()}")
            except Exception:
                log.exception("status failed service=%s", service.name)
                parts.append(f"{service.name}: status unavailable")
        return "running; " + "; ".join(parts)

    def _set_status(self, status: str) -> None:
        if status != self._last_status:
            self._last_status = status
            self.notifier.status(status)
