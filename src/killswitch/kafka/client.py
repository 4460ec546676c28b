"""What every Kafka client of the daemon shares: connection options, one reconnecting loop,
one full-jitter backoff, and one way to hand a record's work to the engine until it is journaled.

    ReconnectingClient
      start()   connect once, bounded; a broker that is down is retried by run(), not fatal
      run()     until stop(): connected -> _step(); broker error -> _disconnect() (teardown,
                status), then reconnect after Backoff.next_delay(); on stop -> _at_stop()
      stop()    safe twice and before start()
    Subclasses: the events producer; and through EngineFeed (a consumer and a producer on the
    engine's behalf, both stopped by one _teardown) the alert consumer and the latch replicator.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context

from killswitch.backoff import Backoff, Stopping, wait_or_stop
from killswitch.kill.port import EnginePort
from killswitch.settings import KafkaSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

BROKER_ERRORS: tuple[type[BaseException], ...] = (KafkaError, OSError, TimeoutError)


def broker_error(exc: BaseException) -> str:
    """What a broker error says, named once: aiokafka's messages often open with their class's
    name already (review 92: "KafkaConnectionError: KafkaConnectionError: Unable to ...")."""
    name, text = type(exc).__name__, str(exc)
    said = text if text.startswith(name) else f"{name}: {text}" if text else name
    return said[:300]


def client_options(settings: KafkaSettings) -> dict[str, Any]:
    """Return the connection and security options every aiokafka client of ours uses."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": settings.security_protocol,
    }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None,
            certfile=str(settings.ssl_certfile) if settings.ssl_certfile else None,
            keyfile=str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
        )
    elif settings.ssl_cafile:
        options["ssl_context"] = ssl.create_default_context(cafile=str(settings.ssl_cafile))
    if settings.security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        if settings.sasl_password is not None:
            options["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    return options


def new_producer(settings: KafkaSettings, **overrides: Any) -> AIOKafkaProducer:
    """Return a producer with acks=all (not idempotent: not every broker we meet supports it)."""
    options = client_options(settings) | {
        "acks": "all",
        "enable_idempotence": False,
        "request_timeout_ms": 10_000,
        "client_id": f"killswitch-{settings.group_id}",
    }
    return AIOKafkaProducer(**(options | overrides))


async def stop_client(client: AIOKafkaConsumer | AIOKafkaProducer) -> None:
    """Stop an aiokafka client; its own failures are logged, a cancel aimed at us still raises.

    aiokafka's fetcher `close()` awaits its cancelled fetch tasks, and one caught in its retry
    sleep re-raises that CancelledError into `stop()`. Run it as a task: `asyncio.wait` tells a
    cancelled child (dropped) from a cancel of the caller (raised).
    """
    task = asyncio.ensure_future(client.stop())
    await asyncio.wait({task})
    if task.cancelled():
        log.debug("kafka client stop was cancelled inside aiokafka")
    elif (exc := task.exception()) is not None:
        log.debug("kafka client stop failed error=%s", exc)


class ReconnectingClient:
    """A Kafka-facing service that reconnects by itself; see the module docstring."""

    what = "kafka"  # how logs name it
    reconnect_errors: tuple[type[BaseException], ...] = BROKER_ERRORS
    start_timeout_s: float = 5.0

    def __init__(self, *, backoff: Backoff | None, clock: Callable[[], float]) -> None:
        self.backoff = backoff or Backoff()
        self._clock = clock
        self._last_tick = clock()
        self._stopping = asyncio.Event()
        self._started = False
        self._running = False
        self.connected = False
        self.last_error = ""
        self.connects = 0
        self.disconnects = 0

    # -- what a client is made of --------------------------------------------------------------
    async def _connect(self) -> None:
        """Open the clients; raise one of `reconnect_errors` when the broker is away."""
        raise NotImplementedError

    async def _step(self) -> None:
        """One unit of work while connected."""
        raise NotImplementedError

    async def _teardown(self) -> None:
        """Close whatever `_connect` opened; safe when nothing is open."""
        raise NotImplementedError

    async def _at_start(self) -> None:
        """Work to do once connected at start, inside the start timeout."""

    async def _at_stop(self) -> None:
        """Work to do when stopping (flush, last commit); `connected` says if it can."""

    def _connect_at_start(self) -> bool:
        """Whether `start()` tries to connect; False leaves it to `run()`'s backoff."""
        return True

    def _on_connected(self) -> None:
        log.info("%s connected", self.what)

    def _on_disconnected(self, was_connected: bool) -> None:
        if was_connected:
            log.warning("%s disconnected error=%s", self.what, self.last_error)
        else:
            log.info("%s connect failed error=%s", self.what, self.last_error)

    # -- Service ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect once, bounded; a broker that is down is retried by `run()`, not fatal."""
        if self._started:
            raise RuntimeError(f"{self.what} already started")
        self._started = True
        if not self._connect_at_start():
            log.warning(
                "%s not connected at start, will retry error=%s", self.what, self.last_error
            )
            return
        try:
            async with asyncio.timeout(self.start_timeout_s):
                await self._open()
                await self._at_start()
        except asyncio.CancelledError:
            raise
        except self.reconnect_errors as exc:
            await self._disconnect(exc)
            log.warning("%s not connected at start, will retry error=%s", self.what, exc)

    async def run(self) -> None:
        """Work until `stop()`, reconnecting on broker loss; then `_at_stop()`."""
        self._running = True
        try:
            while not self._stopping.is_set():
                self._last_tick = self._clock()
                if not self.connected:
                    await self._reconnect()
                    continue
                try:
                    await self._step()
                except asyncio.CancelledError:
                    raise
                except Stopping:
                    break
                except self.reconnect_errors as exc:
                    await self._disconnect(exc)
            await self._at_stop()
        finally:
            await self._teardown()

    async def stop(self) -> None:
        """Stop after the work in hand; safe twice and before `start()`."""
        self._stopping.set()
        self._wake()
        if not self._running:  # no run() to tear the clients down
            await self._teardown()

    def healthy(self) -> bool:
        """True while the loop turns; a broker outage is reported, not a reason to restart."""
        return self._clock() - self._last_tick < max(30.0, 3 * self.backoff.max_s)

    def _wake(self) -> None:
        """Interrupt a `_step` that waits for work (the events producer's idle wait)."""

    # -- connection ------------------------------------------------------------------------------
    async def _open(self) -> None:
        await self._connect()
        self.connected = True
        self.last_error = ""
        self.backoff.reset()
        self.connects += 1
        self._on_connected()

    async def _reconnect(self) -> None:
        if self.disconnects and await wait_or_stop(self._stopping, self.backoff.next_delay()):
            return
        try:
            await self._open()
        except asyncio.CancelledError:
            raise
        except self.reconnect_errors as exc:
            await self._disconnect(exc)

    async def _disconnect(self, exc: BaseException) -> None:
        was_connected = self.connected
        self.connected = False
        self.last_error = broker_error(exc)
        self.disconnects += 1
        self._on_disconnected(was_connected)
        await self._teardown()


class EngineFeed(ReconnectingClient):
    """A reconnecting client that reads a topic into the engine and writes records back.

    It holds one consumer and one producer while connected; `_teardown` stops both after
    `_drop_in_flight()` has let go of the work that depended on them.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        engine: EnginePort,
        *,
        backoff: Backoff | None,
        clock: Callable[[], float],
        wall_ms: Callable[[], int],
    ) -> None:
        super().__init__(backoff=backoff, clock=clock)
        self.settings = settings
        self.engine = engine
        self._wall_ms = wall_ms
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None

    async def _drop_in_flight(self) -> None:
        """Let go of work in flight on the clients about to be stopped."""

    async def _teardown(self) -> None:
        consumer, self._consumer = self._consumer, None
        producer, self._producer = self._producer, None
        self.connected = False
        await self._drop_in_flight()
        for client in (consumer, producer):
            if client is not None:
                await stop_client(client)
