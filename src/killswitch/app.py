"""Compose the daemon's services from the settings.

    accounts -> connectors -> trackers -> stream supervisors -> engine -> control socket
             (-> Kafka alert consumer and event producer, added by the Kafka issue)

Start order is the list order; the daemon stops them in reverse. The venues start first (warm
sessions, synced clocks), then the engine (journal replay and, if latched, the re-sweep: all
before READY=1), then the inputs that produce triggers. With replicas sharing the latch, the
engine's start reads the latch topic before it resumes a latched kill (`before_resume`): a
latch reset on a peer while this daemon was down is released, not killed again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec

from killswitch.backoff import Backoff, wait_or_stop
from killswitch.config import ConfigError
from killswitch.daemon import CriticalTasks, Daemon
from killswitch.events import EventType, FanOut, make_event
from killswitch.exchanges.base import Exchange, RateLimited
from killswitch.exchanges.bingx import BingxExchange
from killswitch.exchanges.budget import set_fleet
from killswitch.exchanges.connector import VenueConnector
from killswitch.exchanges.factory import build_exchange
from killswitch.exchanges.limits_file import persist_to
from killswitch.handlers.control import ControlServer
from killswitch.handlers.heartbeat import HeartbeatWatch
from killswitch.handlers.rules import RiskRules
from killswitch.journal import Journal
from killswitch.kafka.alerts import KafkaAlertConsumer
from killswitch.kafka.events import KafkaEventSink
from killswitch.kafka.replicas import LatchReplicator
from killswitch.kill.config import Account, EngineConfig
from killswitch.kill.engine import Engine
from killswitch.model import AccountRef
from killswitch.readiness.checks import Target
from killswitch.readiness.service import ReadinessService
from killswitch.sinks.audit import AuditLog
from killswitch.sinks.kafka_metrics import KafkaCollector
from killswitch.state_lock import StateDirLock, StateDirUnavailable
from killswitch.streams.supervisor import EventCallback, StateCallback, StreamSupervisor
from killswitch.streams.tracker import OrderTracker

if TYPE_CHECKING:
    from killswitch.daemon import Service
    from killswitch.settings import AccountSettings, EngineSettings, Settings
    from killswitch.sinks.metrics import Metrics

log = logging.getLogger(__name__)
START_TIMEOUT_S = 30.0  # a venue's start, under the unit's TimeoutStartSec=90s

P = ParamSpec("P")


def build_services(settings: Settings, critical: CriticalTasks) -> list[Service]:
    """Return the services to run, in start order (stopped in reverse)."""
    parts = build_parts(settings, critical)
    services: list[Service] = [parts.venues, parts.engine_service, parts.control]
    if parts.metrics_service is not None:
        services.append(parts.metrics_service)
    # After the venues (started connectors) and the control socket (status answers while the
    # first round runs); before the inputs. Its first round is part of startup.
    services.append(parts.readiness)
    services += input_services(settings, parts)
    return services


def input_services(settings: Settings, parts: Parts) -> list[Service]:
    """Risk rules on the streams and, with Kafka, the latch replicator, the events producer,
    the heartbeat watch and the alert consumer (last: it is the input that brings triggers)."""
    engine = parts.engine
    services: list[Service] = []
    if parts.rules is not None:
        services.append(parts.rules)
    kafka = settings.kafka
    if not kafka.enabled:
        return services
    refs = [AccountRef(a.venue, a.name) for a in settings.accounts]
    # events and latches carry the replica's name: keyed, ordered, never echoed
    replica = kafka.replica_name()
    sink = KafkaEventSink(kafka, key=replica)
    parts.events.add(sink)
    replicator = parts.replicator
    if replicator is not None:
        parts.events.add(replicator)
        # Read before the journal's latched kills resume (in the engine's start): a latch a
        # peer reset while this replica was down is released, not killed again.
        parts.engine_service.before_resume = replicator.before_resume
        services.append(replicator)
    services.append(sink)
    # A kill a peer latched and reset while this replica was down is not killed again.
    watch = None
    if settings.heartbeats:
        watch = HeartbeatWatch(
            settings.heartbeats,
            engine.submit,
            hearing=lambda: consumer.connected,
            emit=parts.events.emit,
        )
        services.append(watch)
    consumer = KafkaAlertConsumer(
        kafka, engine, accounts=refs, cluster=replicator, heartbeats=watch
    )
    services.append(consumer)
    if parts.metrics is not None:
        parts.metrics.registry.register(KafkaCollector(consumer, sink, replicator))
    return services


def _chain(first: Callable[P, None] | None, second: Callable[P, None]) -> Callable[P, None]:
    """Call `first` (if any), then `second`, with the same arguments."""
    if first is None:
        return second

    def both(*args: P.args, **kwargs: P.kwargs) -> None:
        first(*args, **kwargs)
        second(*args, **kwargs)

    return both


@dataclass(slots=True)
class Parts:
    """Everything `build_services` wires together, for tests and the Kafka services."""

    events: FanOut
    audit: AuditLog
    engine: Engine
    venues: VenueService
    engine_service: EngineService
    control: ControlServer
    readiness: ReadinessService
    rules: RiskRules | None = None
    replicator: LatchReplicator | None = None  # with a shared latch (Kafka's `share_latch`)
    metrics: Metrics | None = None
    metrics_service: MetricsService | None = None


def build_parts(settings: Settings, critical: CriticalTasks | None = None) -> Parts:
    """Build connectors, trackers, supervisors, the engine and the control socket."""
    events = FanOut()
    audit = AuditLog(settings.state_dir / "audit.jsonl")
    events.add(audit)
    venues = VenueService()
    r = settings.readiness
    readiness = ReadinessService(
        events, interval_s=r.interval_s, timeout_s=r.timeout_s, stream_grace_s=r.stream_grace_s
    )
    accounts: list[Account] = []
    trackers: list[OrderTracker] = []
    set_fleet(settings.limits.daemons)  # before any budget is made
    # What the venues hold against us (charges in their windows, bans, BingX error counts)
    # outlives a restart: before any connector is made (review 66).
    persist_to(settings.state_dir / "venue-limits.json")
    for account_settings in settings.accounts:
        ref = AccountRef(account_settings.venue, account_settings.name)
        exchange = connector(account_settings, state_dir=settings.state_dir)
        trackers.append(OrderTracker(ref))
        readiness.add(Target.of(account_settings, exchange), watch_stream=True)
        accounts.append(
            Account(
                ref,
                exchange,
                symbols=tuple(account_settings.symbols),
                tracker=trackers[-1],
                dead_mans_switch_s=account_settings.dead_mans_switch_s,
                stream_state=readiness.stream_state(ref),
                not_ready=_first_reason(venues.start_failure, readiness.not_ready(ref), ref),
                learned=_learned(exchange, ref, events),
                headroom_known=(
                    exchange.headroom_known if isinstance(exchange, VenueConnector) else None
                ),
                first_look_fits=(
                    exchange.first_look_fits if isinstance(exchange, VenueConnector) else None
                ),
            )
        )
    engine = Engine(
        accounts,
        Journal(settings.state_dir / "journal.jsonl"),
        engine_config(settings.engine),
        events=events,
        spawn=critical.spawn if critical is not None else None,
    )
    rules = RiskRules(settings.rules, engine.submit, emit=events.emit) if settings.rules else None
    kafka = settings.kafka
    replicator = None
    if kafka.enabled and kafka.share_latch:
        refs = [AccountRef(a.venue, a.name) for a in settings.accounts]
        replicator = LatchReplicator(kafka, engine, replica_id=kafka.replica_name(), accounts=refs)
    on_event: EventCallback = engine.on_stream_event
    on_state: StateCallback = readiness.on_state
    if rules is not None:
        on_event = _chain(on_event, rules.on_event)
        on_state = _chain(on_state, rules.on_state)
    for account, tracker in zip(accounts, trackers, strict=True):
        supervisor = StreamSupervisor(
            account.exchange,
            tracker,
            on_event=on_event,
            on_state=on_state,
            backoff_initial_s=settings.streams.backoff_initial_s,
            backoff_max_s=settings.streams.backoff_max_s,
            reconcile_interval_s=settings.streams.reconcile_interval_s,
        )
        venues.add(account.exchange, supervisor)
    parts = Parts(
        events=events,
        audit=audit,
        engine=engine,
        venues=venues,
        engine_service=EngineService(engine, audit, grace_s=settings.engine.grace_period_s),
        control=ControlServer(
            engine,
            settings.control.socket_path,
            readiness=readiness.results,
            latch_share=replicator,
        ),
        readiness=readiness,
        rules=rules,
        replicator=replicator,
    )
    if settings.metrics.enabled:
        from killswitch.sinks.metrics import Metrics

        parts.metrics = Metrics(status=engine.status)
        events.add(parts.metrics)
        parts.metrics_service = MetricsService(
            parts.metrics, settings.metrics.host, settings.metrics.port
        )
    return parts


def _first_reason(
    start_failure: Callable[[AccountRef], str | None],
    not_ready: Callable[[], str | None],
    ref: AccountRef,
) -> Callable[[], str | None]:
    """The account's not-ready reason for status: a start still failing (review 79: shown
    nowhere), else the readiness checks' reason."""
    return lambda: start_failure(ref) or not_ready()


def engine_config(e: EngineSettings) -> EngineConfig:
    """The engine's timing from its settings section."""
    return EngineConfig(
        deadline_s=e.deadline_s,
        retry_initial_s=e.retry_initial_s,
        retry_max_s=e.retry_max_s,
        quiet_window_s=e.quiet_window_s,
        sweep_interval_s=e.sweep_interval_s,
    )


def connector(account: AccountSettings, *, state_dir: Path | None = None) -> Exchange:
    """Build one account's connector from its settings (secrets unwrapped only here). With a
    `state_dir`, what the connector learns of the venue (BingX) and the listenKey it made (MEXC:
    reused by the next process, so that restarts do not use up the UID's 60) are kept there."""
    learned_path = listen_key_path = None
    if state_dir is not None and account.venue == "bingx":
        learned_path = state_dir / f"learned-{account.venue}-{account.name}.json"
    if state_dir is not None and account.venue == "mexc":
        listen_key_path = state_dir / f"listen-key-{account.venue}-{account.name}.json"
    return build_exchange(
        account.venue,
        account=account.name,
        api_key=account.api_key.get_secret_value(),
        api_secret=account.api_secret.get_secret_value(),
        key_type=account.key_type,
        rest_url=account.rest_url,
        ws_url=account.ws_url,
        timeout_s=account.timeout_s,
        recv_window_ms=account.recv_window_ms,
        learned_path=learned_path,
        listen_key_path=listen_key_path,
        symbols=account.symbols,
    )


def _learned(
    exchange: Exchange, ref: AccountRef, events: FanOut
) -> Callable[[], dict[str, object]] | None:
    """Tell the world each thing the connector learns of the venue; return its reader."""
    if not isinstance(exchange, BingxExchange):
        return None

    def learned(key: str, value: bool | str) -> None:
        log.warning("learned account=%s %s=%s", ref, key, value)
        events.emit(make_event(EventType.LEARNED, account=str(ref), path=key, value=value))

    exchange.on_learned(learned)
    return exchange.learned_paths


@dataclass(slots=True)
class VenueService:
    """The connectors and their stream supervisors."""

    name: str = "venues"
    exchanges: list[Exchange] = field(default_factory=list)
    supervisors: list[StreamSupervisor] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)
    failed_starts: dict[str, str] = field(default_factory=dict)
    retry_backoff: Callable[[], Backoff] = lambda: Backoff(initial_s=1.0, max_s=60.0)
    _retries: list[asyncio.Task[None]] = field(default_factory=list)

    def add(self, exchange: Exchange, supervisor: StreamSupervisor) -> None:
        self.exchanges.append(exchange)
        self.supervisors.append(supervisor)

    async def start(self) -> None:
        """Open sessions and sync clocks. A venue that fails to start is logged, not fatal:
        the other venues must stay killable, and its start is retried in the background until
        it succeeds (review 66: it never was, though this said so; a Binance account whose
        first time read got a 429 ran without its ws-api session and clock keeper for good)."""

        async def one(exchange: Exchange) -> None:
            try:
                # A ban remembered from the last life makes a start wait in the budget: bound
                # it (under systemd's TimeoutStartSec) and retry in the background instead.
                async with asyncio.timeout(START_TIMEOUT_S):
                    await exchange.start()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one venue down must not stop the daemon
                label = f"{exchange.venue}/{exchange.account}"
                self.failed_starts[label] = type(exc).__name__
                log.error("venue start failed account=%s error=%s", label, str(exc) or repr(exc))
                retry = self._retry_start(exchange, label, exc)
                self._retries.append(asyncio.create_task(retry, name=f"start {label}"))

        await asyncio.gather(*(one(e) for e in self.exchanges))

    async def _retry_start(self, exchange: Exchange, label: str, error: Exception) -> None:
        backoff = self.retry_backoff()
        while True:
            wait_s = backoff.next_delay()
            if isinstance(error, RateLimited):
                wait_s = max(wait_s, error.retry_after_s)  # the venue said how long
            await wait_or_stop(self._stopped, wait_s)
            if self._stopped.is_set():
                return
            try:
                await exchange.start()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - logged, and tried again
                error = exc
                self.failed_starts[label] = type(exc).__name__
                log.warning(
                    "venue start failed again account=%s error=%s", label, str(exc) or repr(exc)
                )
                continue
            self.failed_starts.pop(label, None)
            log.warning("venue started on a retry account=%s", label)
            return

    async def run(self) -> None:
        self._tasks = [
            asyncio.create_task(s.run(), name=f"stream {s.ref}") for s in self.supervisors
        ]
        await self._stopped.wait()

    async def stop(self) -> None:
        self._stopped.set()
        tasks = [*self._retries, *self._tasks]
        for task in tasks:
            task.cancel()
        try:
            # `asyncio.wait`, not `await task`: what a task ended with is not raised here (it
            # would skip the closes below), and a cancel aimed at this stop is not swallowed.
            if tasks:
                await asyncio.wait(tasks)
            for task in tasks:
                if not task.cancelled() and task.exception() is not None:
                    log.error(
                        "venue task failed task=%s", task.get_name(), exc_info=task.exception()
                    )
        finally:
            await self._close_exchanges()

    async def _close_exchanges(self) -> None:
        for exchange in self.exchanges:
            try:
                await exchange.close()
            except asyncio.CancelledError:
                raise
            except Exception:  # closing is best effort at shutdown
                log.warning("venue close failed account=%s", exchange.account, exc_info=True)

    def healthy(self) -> bool:
        # A venue's stream being down is the venue's state (status shows it), not a wedged
        # daemon: restarting us would not bring it back.
        return all(not t.done() for t in self._tasks)

    def status(self) -> str:
        states = []
        for supervisor in self.supervisors:
            state = f"{supervisor.ref}={supervisor.state.value}"
            error = self.failed_starts.get(str(supervisor.ref))
            states.append(state if error is None else f"{state} (start failing: {error})")
        return " ".join(states) or "no accounts"

    def start_failure(self, ref: AccountRef) -> str | None:
        """Why the account's connector has not started yet (its start is being retried)."""
        error = self.failed_starts.get(str(ref))
        return None if error is None else f"venue start failed ({error}), retrying"


class EngineService:
    """The engine as a daemon service; closes the audit log after the engine stops."""

    name = "engine"

    def __init__(
        self,
        engine: Engine,
        audit: AuditLog,
        *,
        grace_s: float,
        before_resume: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.engine = engine
        self.audit = audit
        self.grace_s = grace_s
        # Run by the engine's start once the journal's latches are in place, before any
        # latched kill resumes (the latch replicator's read of the cluster's resets).
        self.before_resume = before_resume
        self._stopped = asyncio.Event()
        self._entered = False  # the engine's start began: kills may be resuming
        self._started = False

    async def start(self) -> None:
        self._entered = True
        await self.engine.start(before_resume=self.before_resume)
        self._started = True

    async def run(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        # A stop during the start (kills resuming before READY) stops the engine too: its
        # kills end aborted, to resume at the next start, not run on against closed venues.
        if self._entered:
            await self.engine.stop(self.grace_s)
        self.audit.close()

    def healthy(self) -> bool:
        return self._started and self.engine.healthy()

    def status(self) -> str:
        failing = self.engine.journal.failing
        # A journal that refuses writes refuses every kill: said before anything else.
        refusing = f"JOURNAL UNWRITABLE, kills refused ({failing}); " if failing else ""
        if not self.engine.latched():
            return f"{refusing}armed, not latched"
        return f"{refusing}LATCHED ({len(self.engine.latch_scopes())})"


class MetricsService:
    """The Prometheus endpoint."""

    name = "metrics"

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        self.port = await asyncio.to_thread(self.metrics.serve, self.host, self.port)

    async def run(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        self._stopped.set()
        self.metrics.close()

    def healthy(self) -> bool:
        return True

    def status(self) -> str:
        return f"port {self.port}"


async def async_run(settings: Settings) -> int:
    """Build the services from `settings` and serve them until stopped; return the exit code."""
    critical = CriticalTasks()
    services = build_services(settings, critical)
    daemon = Daemon(
        services,
        critical=critical,
        grace_period_s=settings.engine.grace_period_s,
        # The engine's last events (a kill ending in the grace period) still reach Kafka.
        stop_last=[s for s in services if isinstance(s, KafkaEventSink)],
    )
    return await daemon.serve()


def run(settings: Settings) -> int:
    """Hold the state_dir, then serve the daemon in a fresh event loop; return the exit code.
    Raise `ConfigError` when the state_dir cannot be held (another daemon holds it: review 79,
    two daemons on one journal each compacted away the other's latches)."""
    lock = StateDirLock(settings.state_dir)
    try:
        lock.acquire()  # before anything in the state_dir is read or written
    except StateDirUnavailable as exc:
        raise ConfigError([str(exc)]) from None
    with lock:
        return asyncio.run(async_run(settings))
