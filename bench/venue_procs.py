"""The time-to-flat bench's simulated venues: each in its own process, or all in this one.

Three real venues are three independent sets of machines: what Binance's servers do is never
queued behind MEXC's or BingX's. One Python process serving all three runs their handlers one
after another on one event loop: in S's first wave BingX's cancel-all (50 orders, 50 gzipped
pushes, about 3.5 ms) and MEXC's (50 protobuf pushes, about 2.5 ms) ran before Binance's five
cancel-alls, which were answered 8 to 10 ms after their simulated round trip was up. So by
default each venue's `SimCluster` runs in a process of its own (`VenueProcess`); the round trip
each request pays is still the configured R (the bench measures and prints it), and everything
a client sees (answers, pushes, their order, limits) is the same simulator's.
`--sims-in-process` keeps the three in the bench's own process, as before.

The bench uses a venue through `Venue`: seed a generated workload, count what a book holds,
reset its limits, read and clear its request log (each entry stamped on arrival with the host's
monotonic clock, `mono`, which the daemon's events share), read its throttle counters.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections import deque
from multiprocessing.connection import Connection
from typing import Any

from killswitch.sim.server import SimCluster
from killswitch.sim.venue import SimVenue, generate_workload


class StampedLog(deque[dict[str, Any]]):
    """A simulator request log that also stamps each entry with the host's monotonic clock on
    arrival (`mono`), which the daemon's events share (`mono_ms`)."""

    def append(self, entry: dict[str, Any]) -> None:
        entry["mono"] = time.monotonic()
        super().append(entry)


class Venue:
    """One simulated venue served in this process."""

    def __init__(self, sim: SimVenue) -> None:
        self.sim = sim
        if not isinstance(sim.request_log, StampedLog):
            sim.request_log = StampedLog(sim.request_log, maxlen=sim.request_log.maxlen)
        self.base_url = sim.base_url
        self.info = sim.describe()

    def describe(self) -> dict[str, Any]:
        return self.info

    def seed_generated(
        self,
        account: str,
        symbols: list[str],
        per_symbol: int,
        list_fraction: float,
        client_id_prefix: str,
    ) -> list[tuple[str, str | None]]:
        """Place a generated workload; return every open order's (symbol, list id)."""
        sim = self.sim
        orders, lists = generate_workload(
            symbols=symbols,
            per_symbol=per_symbol,
            list_fraction=list_fraction,
            client_id_prefix=client_id_prefix,
            rng=sim.rng,
        )
        acct = sim.accounts[account]
        sim.seed(acct, orders, lists)
        return [(o.symbol, o.list_id) for o in sim.book(acct).open_orders()]

    def open_counts(self, account: str) -> tuple[int, int]:
        """(open orders, open lists) in `account`'s book."""
        book = self.sim.book(self.sim.accounts[account])
        return len(book.orders), len(book.lists)

    def reset_limits(self) -> None:
        self.sim.reset_limits()

    def clear_log(self) -> None:
        self.sim.request_log.clear()

    def log(self) -> list[dict[str, Any]]:
        return list(self.sim.request_log)

    def pop_counter(self, key: str) -> int:
        return self.sim.counters.pop(key, 0)


class VenueProcess:
    """One simulated venue served by a child process; the same calls as `Venue`, over a pipe.

    Calls block the caller for a pipe round trip (well under a millisecond): the bench makes
    them between kills, never while one is measured."""

    def __init__(self, toml: str, source: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(toml, source, child), daemon=True)
        self.base_url = ""
        self.info: dict[str, Any] = {}

    async def start(self, timeout_s: float = 60.0) -> None:
        self.proc.start()
        if not await asyncio.to_thread(self.conn.poll, timeout_s):
            raise RuntimeError("a simulator process did not start")
        self.info = self._answer()
        self.base_url = str(self.info["rest_url"])

    def _answer(self) -> Any:
        status, value = self.conn.recv()
        if status != "ok":
            raise RuntimeError(f"simulator process: {value}")
        return value

    def call(self, method: str, *args: Any) -> Any:
        self.conn.send((method, args))
        return self._answer()

    async def stop(self) -> None:
        if self.proc.is_alive():
            try:
                self.conn.send(("stop", ()))
                if await asyncio.to_thread(self.conn.poll, 10.0):
                    self.conn.recv()
            except (BrokenPipeError, EOFError, OSError):
                pass
        await asyncio.to_thread(self.proc.join, 10.0)
        if self.proc.is_alive():
            self.proc.kill()
            await asyncio.to_thread(self.proc.join, 5.0)
        self.conn.close()

    def describe(self) -> dict[str, Any]:
        return self.info

    def seed_generated(
        self,
        account: str,
        symbols: list[str],
        per_symbol: int,
        list_fraction: float,
        client_id_prefix: str,
    ) -> list[tuple[str, str | None]]:
        rows: list[tuple[str, str | None]] = self.call(
            "seed_generated", account, symbols, per_symbol, list_fraction, client_id_prefix
        )
        return rows

    def open_counts(self, account: str) -> tuple[int, int]:
        orders, lists = self.call("open_counts", account)
        return int(orders), int(lists)

    def reset_limits(self) -> None:
        self.call("reset_limits")

    def clear_log(self) -> None:
        self.call("clear_log")

    def log(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = self.call("log")
        return entries

    def pop_counter(self, key: str) -> int:
        return int(self.call("pop_counter", key))


class Venues:
    """The bench's simulated venues, by name: in their own processes or in this one."""

    def __init__(self, tomls: dict[str, str], *, in_process: bool) -> None:
        self.tomls = tomls
        self.in_process = in_process
        self.venues: dict[str, Venue | VenueProcess] = {}
        self._clusters: list[SimCluster] = []
        self._procs: list[VenueProcess] = []

    @classmethod
    def of(cls, cluster: SimCluster) -> Venues:
        """The venues of a cluster already served in this process (its owner stops it)."""
        venues = cls({}, in_process=True)
        venues.venues = {name: Venue(sim) for name, sim in cluster.venues.items()}
        return venues

    async def start(self) -> None:
        try:
            if self.in_process:
                for name, toml in self.tomls.items():
                    cluster = SimCluster.from_toml(toml, f"<bench {name}>")
                    await cluster.start()
                    self._clusters.append(cluster)
                    self.venues[name] = Venue(cluster.venues[name])
                return
            procs = {
                name: VenueProcess(toml, f"<bench {name}>") for name, toml in self.tomls.items()
            }
            self._procs = list(procs.values())
            await asyncio.gather(*(p.start() for p in self._procs))
            self.venues = dict(procs)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        clusters, self._clusters = self._clusters, []
        procs, self._procs = self._procs, []
        for cluster in clusters:
            await cluster.stop()
        await asyncio.gather(*(p.stop() for p in procs))


def _serve(toml: str, source: str, conn: Connection) -> None:
    """A child process's main: serve one venue, answer the bench's calls until told to stop."""
    asyncio.run(_serve_async(toml, source, conn))


async def _serve_async(toml: str, source: str, conn: Connection) -> None:
    try:
        cluster = SimCluster.from_toml(toml, source)
        await cluster.start()
    except Exception as exc:  # the parent reports it
        conn.send(("error", repr(exc)))
        return
    ((_, sim),) = cluster.venues.items()
    venue = Venue(sim)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_call() -> None:
        while not stop.is_set() and conn.poll():
            try:
                method, args = conn.recv()
            except (EOFError, OSError):
                stop.set()
                return
            if method == "stop":
                stop.set()
                return
            try:
                conn.send(("ok", getattr(venue, method)(*args)))
            except Exception as exc:  # an answer, not a dead child
                conn.send(("error", repr(exc)))

    loop.add_reader(conn.fileno(), on_call)
    conn.send(("ok", venue.describe()))
    try:
        await stop.wait()
    finally:
        loop.remove_reader(conn.fileno())
        await cluster.stop()
        conn.send(("ok", None))
