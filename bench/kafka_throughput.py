"""Kafka input figures: alerts consumed per second, and alert to first cancel.

Everything is real and on this machine: a Tansu broker started the way the test fixture starts
it (or the Kafka named by KILLSWITCH_TEST_KAFKA), the alert consumer, the real engine and its
fsynced journal, and, for latency, the daemon's own composition (`app.build_parts` and
`app.input_services`, in this process) against the simulated venues on loopback.

1. Throughput. The topic is filled first and the consumer group pinned at offset 0, then a
   consumer starts; the clock runs from its start to the commit past the last record. Three
   record kinds, each a separate run: heartbeats (no journal write), malformed records (each
   one dead-lettered and confirmed before the commit), kill alerts with distinct ids (each one
   journaled with an fsync before the commit: at-least-once costs a disk flush per alert).
2. Latency, per trial: orders are placed on every account, the daemon's trackers see them, an
   alert is produced; the engine's own event records (same process, same monotonic clock) give
   alert -> journaled and latched ("triggered") and alert -> first acknowledged cancel
   (first "outcome" with cancelled > 0, one venue round trip included: `--rtt-ms`).

Usage: python bench/kafka_throughput.py [--quick] [--trials 20] [--rtt-ms 0] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the Kafka test fixture's broker start function

from tests.fixtures.kafka import create_topics, producer, running_tansu, unique_name  # noqa: E402
from tests.fixtures.kafka_daemon import toml_table  # noqa: E402

from killswitch.app import build_parts, input_services  # noqa: E402
from killswitch.config import load_settings  # noqa: E402
from killswitch.daemon import CriticalTasks  # noqa: E402
from killswitch.drill.demo import Workload, daemon_toml, drill_accounts, sim_toml  # noqa: E402
from killswitch.events import EventRecord  # noqa: E402
from killswitch.handlers.heartbeat import HeartbeatWatch  # noqa: E402
from killswitch.journal import Journal  # noqa: E402
from killswitch.kafka.alerts import KafkaAlertConsumer  # noqa: E402
from killswitch.kill.config import EngineConfig  # noqa: E402
from killswitch.kill.engine import Engine  # noqa: E402
from killswitch.settings import HeartbeatSettings, KafkaSettings  # noqa: E402
from killswitch.sim.book import OrderSpec  # noqa: E402
from killswitch.sim.server import SimCluster  # noqa: E402


def alert(alert_id: str, action: str = "kill", **fields: Any) -> bytes:
    body = {"id": alert_id, "ts": int(time.time() * 1000), "source": "bench"}
    return orjson.dumps(body | {"action": action} | fields)


@contextlib.contextmanager
def broker() -> Iterator[str]:
    external = os.environ.get("KILLSWITCH_TEST_KAFKA")
    if external:
        yield external
        return
    with running_tansu() as tansu:
        yield tansu.bootstrap


# -- throughput -------------------------------------------------------------------------------


@dataclass
class Throughput:
    kind: str
    records: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.records / self.seconds


async def pin(bootstrap: str, group: str, topic: str) -> None:
    writer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await writer.start()
    try:
        tp = TopicPartition(topic, 0)
        writer.assign([tp])
        await writer.commit({tp: 0})
    finally:
        await writer.stop()


async def throughput(bootstrap: str, kind: str, count: int, workdir: Path) -> Throughput:
    settings = KafkaSettings(
        bootstrap_servers=bootstrap,
        alerts_topic=unique_name("bench-alerts"),
        dead_letter_topic=unique_name("bench-dlq"),
        group_id=unique_name("bench"),
    )
    await create_topics(bootstrap, settings.alerts_topic, settings.dead_letter_topic)
    await pin(bootstrap, settings.group_id, settings.alerts_topic)
    async with producer(bootstrap) as prod:
        for i in range(count):
            if kind == "heartbeat":
                value = alert(f"hb-{i}", action="heartbeat")
            elif kind == "malformed":
                value = b'{"id": "x", "action": "nuke"}'
            else:
                value = alert(f"kill-{i}")
            await prod.send(settings.alerts_topic, value)
        await prod.flush()
    journal = Journal(workdir / f"journal-{kind}.jsonl")
    engine = Engine([], journal, EngineConfig(quiet_window_s=0.0, sweep_interval_s=3600.0))
    await engine.start()
    watch = HeartbeatWatch([HeartbeatSettings(source="bench", timeout_s=3600)], engine.submit)
    consumer = KafkaAlertConsumer(settings, engine, heartbeats=watch)
    started = time.perf_counter()
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    try:
        while not (consumer.stats.consumed >= count and consumer.commit_offsets() == {}):
            await asyncio.sleep(0.005)
        seconds = time.perf_counter() - started
    finally:
        await consumer.stop()
        await task
        await engine.stop(grace_s=1.0)
    return Throughput(kind, count, seconds)


# -- latency ----------------------------------------------------------------------------------


class Clocked:
    """An event sink stamping every record with this process's monotonic clock."""

    def __init__(self) -> None:
        self.records: list[tuple[float, EventRecord]] = []

    def emit(self, event: EventRecord) -> None:
        self.records.append((time.perf_counter(), event))


@dataclass
class Trial:
    to_journaled_ms: float
    to_first_cancel_ms: float


async def latency(bootstrap: str, trials: int, rtt_ms: float, workdir: Path) -> list[Trial]:
    workload = Workload(
        accounts_per_venue=1,
        symbols_per_venue=4,
        orders_per_symbol=3,
        latency_ms=rtt_ms,
        jitter_ms=0.0,
    )
    accounts = drill_accounts(1)
    workdir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - setup, before any timing
    cluster = SimCluster.from_toml(sim_toml(accounts, workload))
    await cluster.start()
    topics = {
        "alerts_topic": unique_name("bench-alerts"),
        "events_topic": unique_name("bench-events"),
        "dead_letter_topic": unique_name("bench-dlq"),
        "latch_topic": unique_name("bench-latch"),
    }
    await create_topics(bootstrap, *topics.values())
    text = daemon_toml(
        workdir / "state",
        workdir / "control.sock",
        accounts,
        cluster,
        engine={"deadline_s": 30.0, "quiet_window_s": 0.0, "sweep_interval_s": 3600.0},
        inline_secrets=True,
    )
    section = {"bootstrap_servers": bootstrap, "group_id": unique_name("bench"), **topics}
    text = text.replace("[kafka]\nenabled = false\n", "\n".join(toml_table("[kafka]", section)))
    config = workdir / "killswitch.toml"
    config.write_text(text)
    settings = load_settings(config)
    parts = build_parts(settings, CriticalTasks())
    clocked = Clocked()
    parts.events.add(clocked)
    services = [parts.venues, parts.engine_service, *input_services(settings, parts)]
    for service in services:
        await service.start()
    runs = [asyncio.create_task(s.run()) for s in services]
    results: list[Trial] = []
    try:
        engine = parts.engine
        async with producer(bootstrap) as prod:
            for n in range(trials):
                for account in accounts:
                    sim = cluster.venues[account.venue]
                    book = sim.book(sim.accounts[account.name])
                    symbol = "BTC-USDT" if account.venue == "bingx" else "BTCUSDT"
                    for k in range(3):
                        book.place(OrderSpec(symbol, client_order_id=f"bench{n}_{k}"))
                while not all(
                    int(a.get("open_orders", 0)) >= 3  # type: ignore[call-overload]
                    and a.get("stream") == "live"
                    for a in engine.status()["accounts"]  # type: ignore[union-attr]
                ):
                    await asyncio.sleep(0.005)
                clocked.records.clear()
                alert_id = f"latency-{n}"
                sent = time.perf_counter()
                await prod.send_and_wait(settings.kafka.alerts_topic, alert(alert_id))
                while (kill := engine.kill_for(alert_id)) is None:
                    await asyncio.sleep(0.001)
                await asyncio.wait_for(kill.finished.wait(), 60)
                triggered = next(t for t, e in clocked.records if e["type"] == "triggered")
                first = next(
                    t
                    for t, e in clocked.records
                    if e["type"] == "outcome" and int(e["cancelled"]) > 0  # type: ignore[call-overload]
                )
                results.append(Trial((triggered - sent) * 1000, (first - sent) * 1000))
                await engine.reset(actor="bench", reason="next trial")
    finally:
        for service in reversed(services):
            await service.stop()
        await asyncio.wait(runs, timeout=30)
        await cluster.stop()
    return results


# -- report -----------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--rtt-ms", type=float, default=0.0, help="simulated venue round trip")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the kills' WARNING lines would bury the figures
    counts = {"heartbeat": 20_000, "malformed": 20_000, "kill": 3_000}
    if args.quick:
        counts = {k: v // 10 for k, v in counts.items()}
        args.trials = min(args.trials, 5)
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cpus")
    with broker() as bootstrap, tempfile.TemporaryDirectory(prefix="ks-bench-") as tmp:
        workdir = Path(tmp)
        kind = "external" if "KILLSWITCH_TEST_KAFKA" in os.environ else "tansu"
        print(f"broker {bootstrap} ({kind})")
        rates = []
        for kind, count in counts.items():
            result = await throughput(bootstrap, kind, count, workdir)
            rates.append(result)
            print(
                f"consume {kind:>9}: {result.records:>6} records in {result.seconds:6.2f} s = "
                f"{result.per_second:8.0f} records/s"
            )
        trials = await latency(bootstrap, args.trials, args.rtt_ms, workdir / "latency")
        journaled = [t.to_journaled_ms for t in trials]
        first = [t.to_first_cancel_ms for t in trials]
        print(
            f"alert -> journaled+latched ({len(trials)} trials): median "
            f"{statistics.median(journaled):.1f} ms, p90 {pct(journaled, 0.9):.1f} ms, "
            f"max {max(journaled):.1f} ms"
        )
        print(
            f"alert -> first acknowledged cancel (venue rtt {args.rtt_ms:g} ms): median "
            f"{statistics.median(first):.1f} ms, p90 {pct(first, 0.9):.1f} ms, "
            f"max {max(first):.1f} ms"
        )
        if args.json:
            args.json.write_text(
                orjson.dumps(
                    {
                        "throughput": [asdict(r) | {"per_second": r.per_second} for r in rates],
                        "latency": [asdict(t) for t in trials],
                        "rtt_ms": args.rtt_ms,
                    },
                    option=orjson.OPT_INDENT_2,
                ).decode()
            )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
