"""Time to flat, end to end, next to the lower bound and a naive baseline, in one run.

Everything is real and on this machine:

* the simulator: Binance, MEXC and BingX spot on loopback, every request delayed by a set
  round trip (`--rtt-ms`, default 30), each venue's documented rate limits;
* a Tansu Kafka broker, started the way the test fixture starts it;
* the daemon as systemd runs it: `killswitch run --config FILE`, keys from a credentials
  directory, READY=1 on a notify socket, alerts from Kafka.

One measured run: seed the workload into the simulator's books, wait until the daemon's
trackers hold every order, publish a kill alert (its `ts` is the produce time), then read

* time to first cancel: the first cancel request the simulator received (its request log is
  stamped on arrival, before the simulated round trip is added) minus the alert's `ts`;
* time to flat: the daemon's `flat` event (audit log, the same record the events topic gets):
  the first all-empty verification snapshot, minus the alert's `ts`.

then wait for the kill to be confirmed, check the books are empty, reset the latch.

Workloads: S = 3 venues x 1 account x 5 symbols x 10 orders; L = 3 venues x 2 accounts, 20
orders per symbol, 100 symbols per account on Binance and BingX and 25 on MEXC (its cap is 500
open orders per account), a tenth of the orders in two-leg OCO lists where the venue has lists
(9,000 orders). The lower bound comes from `killswitch.kill.bound` (its docstring explains it).

The baseline is what most trading bots do on shutdown: per account, fetch the open orders, then
cancel them one by one, waiting out any 429. It runs on the same simulator through the same
connectors (same signing, warm pool and rate budget), one client per account, all accounts at
once, so only the strategy differs; its time runs from its first request to its last cancel.

The breakdown (issue 15): each kill's audit events (`triggered`, `wave`, `outcome`, `flat`,
stamped with the daemon's monotonic clock) and the simulators' request logs (stamped with the
same clock on arrival, by this harness) give, on the critical path (the account proved flat
last): produce to consumed (the trigger's `received_ms`, 1 ms grain), journaled, first request
on the wire, first and last acknowledgement, verification read on the wire, flat; and per
account its rounds on the wire. Warm kills (fired 2.5 s after the last, within the engine's
`open_for_s`) show the same workload without the probe-first round trip.

The user-script baseline: an unmodified ccxt client per account (URLs pointed at a fresh
simulator of the same config), `asyncio.gather` of `cancel_all_orders(symbol)` over the
symbols, then `fetch_open_orders(symbol)` for each, repeated until all are empty (at most 20
rounds or 15 s); with ccxt's defaults and with its rate limiter off. It prints its time, the
429s, 418s and BingX 100410s it earned, and whether it ended flat, per venue.

Usage: python bench/time_to_flat.py [--quick] [--runs 20] [--l-runs 5] [--warm-runs 10]
       [--script-runs 3] [--baseline-runs 3] [--baseline-on S] [--rtt-ms 30]
       [--workloads S,L] [--trigger kafka|control] [--json results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import re
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the Kafka test fixture's broker start function

from tests.fixtures.kafka import create_topics, producer, running_tansu  # noqa: E402

from killswitch.control_client import ControlUnreachable, request  # noqa: E402
from killswitch.drill.demo import (  # noqa: E402
    DrillAccount,
    NotifySocket,
    daemon_account_toml,
    daemon_env,
    killswitch_command,
    sim_account_toml,
    write_credentials,
    ws_url,
)
from killswitch.exchanges.base import (  # noqa: E402
    AlreadyGone,
    Capabilities,
    Exchange,
    OutcomeUnknown,
    RateLimited,
    Transient,
)
from killswitch.exchanges.factory import build_exchange  # noqa: E402
from killswitch.kill.bound import AccountLoad, loads_of, lower_bound  # noqa: E402
from killswitch.sim.server import SimCluster  # noqa: E402
from killswitch.sim.venue import SimVenue  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from venue_procs import Venue, VenueProcess, Venues  # noqa: E402

VENUES = ("binance", "mexc", "bingx")
CANCEL_ENDPOINTS = frozenset(
    {
        "openOrders.cancelAll",
        "order.cancel",
        "orderList.cancel",
        "DELETE /api/v3/openOrders",
        "DELETE /api/v3/order",
        "DELETE /api/v3/orderList",
        "POST /openApi/spot/v1/trade/cancelOpenOrders",
        "POST /openApi/spot/v1/trade/cancel",
        "POST /openApi/spot/v1/trade/cancelOrders",
        "POST /openApi/spot/v1/oco/cancel",
    }
)
TOPICS = ("risk.alerts", "risk.killswitch.events", "risk.alerts.dlq")
LATCH_TOPIC = "risk.killswitch.latch"


@dataclass(frozen=True)
class Spec:
    """A workload: per venue, accounts and symbols per account; orders per symbol; lists."""

    name: str
    accounts: int
    symbols: dict[str, int]
    per_symbol: int
    list_fraction: float

    def symbol_names(self, venue: str) -> list[str]:
        sep = "-" if venue == "bingx" else ""
        return [f"B{i:03d}{sep}USDT" for i in range(self.symbols[venue])]


WORKLOADS = {
    "S": Spec("S", 1, dict.fromkeys(VENUES, 5), per_symbol=10, list_fraction=0.0),
    "L": Spec("L", 2, {"binance": 100, "mexc": 25, "bingx": 100}, per_symbol=20, list_fraction=0.1),
}


@dataclass
class Run:
    time_to_flat_ms: float
    first_cancel_ms: float
    alert_to_trigger_ms: float | None
    requests: int
    warm: bool = False  # fired within the engine's open_for_s of the last OK: no probe
    # the stages of this kill on its critical path (the account proved flat last), ms from the
    # alert's produce time; see `breakdown`
    stages: dict[str, float] = field(default_factory=dict)
    # per account: its sequential rounds on the wire and where its time went
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    # every request the daemon sent in this kill: (account, ms since produce, kind)
    timeline: list[tuple[str, float, str]] = field(default_factory=list)


@dataclass
class Result:
    """Everything measured on one workload."""

    workload: str
    orders: int
    lists: int
    bound: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    baseline_s: list[float] = field(default_factory=list)
    baseline_requests: int = 0
    baseline_429s: int = 0
    # the user-script baseline (ccxt): per run its seconds, throttling answers, and flatness
    script: list[dict[str, Any]] = field(default_factory=list)
    script_note: str = ""
    peak_rss_mb: float | None = None
    rss_mb: float | None = None
    first_peak_rss_mb: float | None = None  # after the first kill: tracking plus one kill

    def cold(self) -> list[Run]:
        return [r for r in self.runs if not r.warm]

    def ttf(self) -> list[float]:
        return [r.time_to_flat_ms for r in self.cold()]

    def warm_ttf(self) -> list[float]:
        return [r.time_to_flat_ms for r in self.runs if r.warm]


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile (nearest rank) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# -- set-up ------------------------------------------------------------------------------------


def accounts_for(spec: Spec) -> list[DrillAccount]:
    return [
        DrillAccount(v, f"mm-{i + 1}", secrets.token_hex(24), secrets.token_hex(32))
        for v in VENUES
        for i in range(spec.accounts)
    ]


def sim_toml(
    spec: Spec, accounts: Sequence[DrillAccount], rtt_ms: float, venues: Sequence[str] = VENUES
) -> str:
    lines = ['host = "127.0.0.1"', "seed = 7", ""]
    for venue in venues:
        names = ", ".join(f'"{s}"' for s in spec.symbol_names(venue))
        lines += [
            f"[venues.{venue}]",
            "port = 0",
            f"latency_ms = {rtt_ms}",
            f"symbols = [{names}]",
            "",
        ]
        for account in (a for a in accounts if a.venue == venue):
            lines += sim_account_toml(account)
    return "\n".join(lines)


def daemon_toml(
    workdir: Path, accounts: Sequence[DrillAccount], cluster: Venues, bootstrap: str
) -> str:
    lines = [f'state_dir = "{workdir / "state"}"', ""]
    for account in accounts:
        lines += daemon_account_toml(account, cluster)  # type: ignore[arg-type]
    lines += [
        "[kafka]",
        f'bootstrap_servers = "{bootstrap}"',
        f'group_id = "bench-{secrets.token_hex(4)}"',
        "",
        "[engine]",
        "deadline_s = 60.0",
        "quiet_window_s = 0.5",
        "sweep_interval_s = 300.0",
        "",
        "[control]",
        f'socket_path = "{workdir / "control.sock"}"',
        "",
    ]
    return "\n".join(lines)


def seed(cluster: Venues, spec: Spec, accounts: Sequence[DrillAccount]) -> list[AccountLoad]:
    """Place the workload in the books; return each account's load, read back from its book."""
    loads = []
    for account in accounts:
        rows = cluster.venues[account.venue].seed_generated(
            account.name,
            spec.symbol_names(account.venue),
            spec.per_symbol,
            # "where the venue has them": MEXC spot has no order-list API
            spec.list_fraction if capabilities()[account.venue].has_order_lists else 0.0,
            f"b{secrets.token_hex(2)}_",
        )
        loads += loads_of([(account.venue, rows)])
    return loads


def book_open(cluster: Venues, account: DrillAccount) -> int:
    return sum(cluster.venues[account.venue].open_counts(account.name))


# -- the daemon --------------------------------------------------------------------------------


class Daemon:
    """`killswitch run` as a subprocess, with its notify socket and control socket."""

    def __init__(self, workdir: Path, accounts: Sequence[DrillAccount]) -> None:
        self.workdir = workdir
        self.accounts = accounts
        self.socket = workdir / "control.sock"
        self.audit = workdir / "state" / "audit.jsonl"
        self.proc: asyncio.subprocess.Process | None = None
        self.notify: NotifySocket | None = None
        self._audit_offset = 0
        self._audit_records: list[dict[str, Any]] = []
        self.lenient_s: float | None = None
        self.notes: list[str] = []

    async def start(self, config: Path) -> float:
        credentials = self.workdir / "credentials"
        write_credentials(credentials, self.accounts)
        self.notify = NotifySocket(self.workdir / "notify.sock")
        log = (self.workdir / "daemon.log").open("wb")
        started = time.monotonic()
        self.proc = await asyncio.create_subprocess_exec(
            *killswitch_command(),
            "run",
            "--config",
            str(config),
            env=daemon_env(
                NOTIFY_SOCKET=str(self.notify.path),
                CREDENTIALS_DIRECTORY=str(credentials),
                KILLSWITCH_LOGGING__FORMAT="text",
            ),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()
        if not await self.notify.wait_for("READY=1", 120.0):
            raise RuntimeError(f"daemon not READY; log: {self.workdir / 'daemon.log'}")
        return time.monotonic() - started

    async def control(self, payload: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
        return await asyncio.to_thread(request, self.socket, payload, timeout_s=timeout_s)

    async def wait_tracking(self, cluster: Venues, timeout_s: float = 300.0) -> None:
        """Wait until every stream is live and each tracker holds what the book holds; or,
        after `lenient_s`, until every stream is live (a tracker that cannot catch up, such as
        BingX's over a capped openOrders read, is noted: the kill then plans from its read)."""
        want = {f"{a.venue}/{a.name}": a for a in self.accounts}
        started = time.monotonic()
        deadline = started + timeout_s
        behind: dict[str, object] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(ControlUnreachable):
                status = (await self.control({"op": "status"})).get("status") or {}
                behind = {}
                for acc in status.get("accounts") or []:
                    label = f"{acc['venue']}/{acc['account']}"
                    if label not in want:
                        continue
                    orders, lists = cluster.venues[acc["venue"]].open_counts(acc["account"])
                    tracked = (acc.get("stream"), acc.get("open_orders"), acc.get("open_lists"))
                    if tracked != ("live", orders, lists):
                        behind[label] = (tracked, orders, lists)
                if not behind and status.get("accounts"):
                    return
                live = all(t[0][0] == "live" for t in behind.values())  # type: ignore[index]
                lenient = self.lenient_s is not None and status.get("accounts")
                if lenient and live and time.monotonic() - started > (self.lenient_s or 0.0):
                    note = f"trackers behind the books (streams live): {behind}"
                    if note not in self.notes:
                        self.notes.append(note)
                        print(f"  note: {note}", flush=True)
                    return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"the daemon did not catch up with the books: {behind}")

    def read_audit(self) -> list[dict[str, Any]]:
        """Records appended to the audit log since the last call."""
        if not self.audit.exists():
            return []
        with self.audit.open("rb") as f:
            f.seek(self._audit_offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self._audit_offset += end
        fresh = [orjson.loads(line) for line in data[:end].splitlines() if line.strip()]
        self._audit_records += fresh
        return fresh

    async def wait_event(self, event_type: str, kill_id: str, timeout_s: float) -> dict[str, Any]:
        # Each poll looks only at the records it has not seen: this process also runs the
        # simulators, and a scan of every record so far, every 5 ms, slows their answers.
        deadline = time.monotonic() + timeout_s
        fresh = self._audit_records
        while time.monotonic() < deadline:
            for record in fresh:
                if record.get("type") == event_type and (
                    record.get("kill_id") == kill_id
                    or kill_id in (record.get("trigger_ids") or ())
                    or (record.get("trigger") or {}).get("id") == kill_id
                ):
                    return record
            await asyncio.sleep(0.005)
            fresh = self.read_audit()
        raise RuntimeError(f"no {event_type} event for {kill_id} within {timeout_s}s")

    def kill_records(self, kill_id: str) -> list[dict[str, Any]]:
        """Every audit record of one kill, in order, up to its `flat` (the wave's events)."""
        out = []
        for record in self._audit_records:
            if (
                record.get("kill_id") == kill_id
                or (record.get("trigger") or {}).get("id") == kill_id
            ):
                out.append(record)
                if record.get("type") == "flat":
                    break
        return out

    def rss_mb(self) -> tuple[float, float]:
        """(current, peak) resident set size of the daemon, in MB."""
        assert self.proc is not None
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                async with asyncio.timeout(30):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self.notify is not None:
            self.notify.close()


# -- one workload ------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rtt_ms: float = args.rtt_ms
        # 418s and 429s the simulators answered, to our daemon and to the baseline
        self.counters: dict[str, int] = {
            "ours 418": 0,
            "ours 429": 0,
            "baseline 418": 0,
            "baseline 429": 0,
        }
        self.measured_rtt_ms: float | None = None
        self.sent_mono = 0.0
        self.last_kill_done = time.monotonic()

    async def workload(self, spec: Spec, bootstrap: str, runs: int, baseline_runs: int) -> Result:
        accounts = accounts_for(spec)
        cluster = Venues(
            {v: sim_toml(spec, accounts, self.rtt_ms, (v,)) for v in VENUES},
            in_process=self.args.sims_in_process,
        )
        await cluster.start()
        workdir = Path(tempfile.mkdtemp(prefix=f"ks-bench-{spec.name}-"))
        daemon = Daemon(workdir, accounts)
        if spec.name in self.args.lenient_on.split(","):
            daemon.lenient_s = self.args.lenient_s
        try:
            config = workdir / "killswitch.toml"
            config.write_text(daemon_toml(workdir, accounts, cluster, bootstrap))
            ready_s = await daemon.start(config)
            print(f"  [{spec.name}] daemon READY after {ready_s:.1f} s", flush=True)
            if self.measured_rtt_ms is None:
                self.measured_rtt_ms = await measure_rtt(cluster.venues["binance"])
            async with producer(bootstrap) as prod:
                warm = await self.warm_up(daemon, prod)
                # A kill's confirmation re-sweeps its scope: seed only once it is over.
                await daemon.control(
                    {"op": "wait", "trigger_id": warm, "until": "confirmed", "timeout_s": 60},
                    timeout_s=90.0,
                )
                self.last_kill_done = time.monotonic()
                loads = seed(cluster, spec, accounts)
                caps = capabilities()
                bound = lower_bound(loads, caps, self.rtt_ms / 1000.0)
                result = Result(
                    spec.name,
                    orders=sum(a.orders for a in loads),
                    lists=sum(a.lists for a in loads),
                    bound=asdict(bound) | {"ms": bound.ms},
                )
                warm_runs = self.args.warm_runs if spec.name in self.args.warm_on.split(",") else 0
                for i in range(runs + warm_runs):
                    if i:
                        seed(cluster, spec, accounts)
                    warm = i >= runs
                    run = await self.one_run(spec, i, cluster, daemon, prod, accounts, warm=warm)
                    result.runs.append(run)
                    rss, peak = daemon.rss_mb()
                    result.rss_mb, result.peak_rss_mb = rss, peak
                    if result.first_peak_rss_mb is None:
                        result.first_peak_rss_mb = peak
                    print(
                        f"  [{spec.name}] {'warm' if warm else 'cold'} run {i + 1}/"
                        f"{runs + warm_runs}: time to flat "
                        f"{run.time_to_flat_ms:.0f} ms, first cancel {run.first_cancel_ms:.1f} ms, "
                        f"bound {bound.ms:.0f} ms, daemon RSS {rss:.0f} MB (peak {peak:.0f})",
                        flush=True,
                    )
            self.count(cluster, "ours")
            await self.user_script(spec, result)
            for i in range(baseline_runs):
                seed(cluster, spec, accounts)
                await daemon.wait_tracking(cluster)
                seconds, requests, limited = await naive_baseline(cluster, accounts)
                result.baseline_s.append(seconds)
                result.baseline_requests = requests
                result.baseline_429s += limited
                left = {a.label: book_open(cluster, a) for a in accounts if book_open(cluster, a)}
                if left:
                    raise RuntimeError(f"the baseline left orders open: {left}")
                print(
                    f"  [{spec.name}] baseline {i + 1}/{baseline_runs}: {seconds:.1f} s, "
                    f"{requests} requests, {limited} x 429 waited out",
                    flush=True,
                )
                for sim in cluster.venues.values():
                    sim.reset_limits()
            return result
        finally:
            await daemon.stop()
            self.count(cluster, "baseline" if baseline_runs else "ours")
            await cluster.stop()
            failed = sys.exc_info()[0] is not None
            if self.args.keep or failed:
                print(f"  [{spec.name}] work directory kept: {workdir}", flush=True)
            else:
                shutil.rmtree(workdir, ignore_errors=True)

    async def user_script(self, spec: Spec, result: Result) -> None:
        """The ccxt baseline, each run on a fresh simulator of the same config (same venues,
        symbols, limits and round trip): its throttling and bans must not touch the daemon's."""
        runs = self.args.script_runs if spec.name in self.args.script_on.split(",") else 0
        for i in range(runs):
            for throttle in (True, False) if spec.name == "S" else (True,):
                accounts = accounts_for(spec)
                cluster = SimCluster.from_toml(
                    sim_toml(spec, accounts, self.rtt_ms), f"<user script {spec.name}>"
                )
                await cluster.start()
                try:
                    seed(Venues.of(cluster), spec, accounts)
                    outcome = await script_baseline(cluster, spec, accounts, throttle=throttle)
                finally:
                    await cluster.stop()
                result.script_note = outcome.pop("note")
                result.script.append(outcome)
                print(
                    f"  [{spec.name}] user script (ccxt, enableRateLimit={throttle}) "
                    f"{i + 1}/{runs}: {outcome['ms']:.0f} ms, {outcome['rounds']} "
                    f"rounds, {outcome['requests']} requests, throttled "
                    f"{outcome['throttled']}, flat: {outcome['flat']}",
                    flush=True,
                )
                for venue, v in outcome["venues"].items():
                    print(
                        f"      {venue}: {v['ms']:.0f} ms, {v['rounds']} rounds, "
                        f"{v['requests']} requests, throttled {v['throttled']}, "
                        f"flat: {v['flat']}",
                        flush=True,
                    )

    def count(self, cluster: Venues, phase: str) -> None:
        """Add the 418s and 429s the sims answered since the last count to `phase`."""
        for sim in cluster.venues.values():
            for code in ("418", "429"):
                self.counters[f"{phase} {code}"] += sim.pop_counter(f"http {code}")

    async def warm_up(self, daemon: Daemon, prod: Any) -> str:
        """A cancel of nothing, through the whole path: proves the consumer is assigned."""
        # Until the consumer is assigned an alert may go unread: fire again after a while. But
        # an alert that was read is waited for (its `triggered` is in the audit log): firing
        # more meanwhile would pile kills onto the venues' read budgets (BingX's per-IP 2/s).
        for _ in range(30):
            alert_id = f"warmup-{secrets.token_hex(4)}"
            await self.fire(daemon, prod, alert_id, "cancel")
            with contextlib.suppress(RuntimeError):
                await daemon.wait_event("triggered", alert_id, 2.0)
                await daemon.wait_event("flat", alert_id, 120.0)
                return alert_id
        raise RuntimeError("the daemon never acted on a warm-up alert")

    async def fire(self, daemon: Daemon, prod: Any, alert_id: str, action: str) -> float:
        """Publish one alert (or fire over the control socket); return its produce time, s."""
        now = time.time()
        self.sent_mono = time.monotonic()  # processes on one host share CLOCK_MONOTONIC
        now_ms = int(now * 1000)
        if self.args.trigger == "control":
            answer = await daemon.control(
                {"op": "fire", "reason": "bench", "id": alert_id, "cancel_only": action != "kill"}
            )
            if not answer.get("ok"):
                raise RuntimeError(f"fire refused: {answer}")
            return now
        alert = {
            "id": alert_id,
            "ts": now_ms,
            "source": "bench",
            "action": action,
            "reason": "time-to-flat bench",
            "scope": {},
        }
        await prod.send_and_wait("risk.alerts", orjson.dumps(alert))
        return now

    async def one_run(
        self,
        spec: Spec,
        i: int,
        cluster: Venues,
        daemon: Daemon,
        prod: Any,
        accounts: Sequence[DrillAccount],
        *,
        warm: bool = False,
    ) -> Run:
        await daemon.wait_tracking(cluster)
        # A real alert finds the daemon idle: let the last kill's traffic go quiet first, or
        # the engine skips its after-a-quiet-spell probe and the figure flatters us. A warm
        # run waits out the venues' one-second windows but not the engine's open_for_s (5 s):
        # what a kill costs when the account's budget state is fresh and shows headroom.
        settle = self.args.warm_settle_s if warm else self.args.settle_s
        quiet = settle - (time.monotonic() - self.last_kill_done)
        if quiet > 0:
            await asyncio.sleep(quiet)
        for sim in cluster.venues.values():
            sim.reset_limits()
            sim.clear_log()
        alert_id = f"bench-{spec.name}-{i}-{secrets.token_hex(3)}"
        sent = await self.fire(daemon, prod, alert_id, "kill")
        sent_ms = int(sent * 1000)  # the alert's `ts`
        flat = await daemon.wait_event("flat", alert_id, 120.0)
        triggered = await daemon.wait_event("triggered", alert_id, 5.0)
        await daemon.control(
            {"op": "wait", "trigger_id": alert_id, "until": "confirmed", "timeout_s": 60},
            timeout_s=90.0,
        )
        left = {a.label: book_open(cluster, a) for a in accounts if book_open(cluster, a)}
        if left:
            raise RuntimeError(f"flat reported but the books hold {left}")
        logs = {venue: sim.log() for venue, sim in cluster.venues.items()}
        cancels = [
            entry["t"]
            for log in logs.values()
            for entry in log
            if _endpoint(entry) in CANCEL_ENDPOINTS and entry["t"] >= sent
        ]
        requests = sum(1 for log in logs.values() for e in log if e["account"])
        self.last_kill_done = time.monotonic()
        answer = await daemon.control({"op": "reset", "reason": "bench: next run"})
        if not answer.get("ok"):
            raise RuntimeError(f"reset refused: {answer}")
        ttf = flat.get("time_to_flat_ms")
        if not isinstance(ttf, int | float):
            ttf = float(flat["ts_ms"]) - sent_ms
        mine = [r for r in daemon.kill_records(alert_id) if r.get("type") != "confirmed"]
        entries = [
            (venue, e)
            for venue, log in logs.items()
            for e in log
            if e.get("mono", 0.0) >= self.sent_mono
        ]
        stages, per_account, timeline = breakdown(
            mine, entries, self.sent_mono * 1000, sent_ms, self.rtt_ms
        )
        return Run(
            time_to_flat_ms=float(ttf),
            first_cancel_ms=(min(cancels) - sent) * 1000 if cancels else float("nan"),
            # the daemon stamps `mono_ms` with the same clock: sub-millisecond, unlike `ts_ms`
            alert_to_trigger_ms=float(triggered["mono_ms"]) - self.sent_mono * 1000,
            requests=requests,
            warm=warm,
            stages=stages,
            accounts=per_account,
            timeline=timeline,
        )


def request_kind(entry: dict[str, Any]) -> str:
    """cancel, read (an open-orders snapshot) or other."""
    endpoint = _endpoint(entry)
    if endpoint in CANCEL_ENDPOINTS:
        return "cancel"
    if "openOrder" in endpoint and (entry.get("method") in ("GET", "WS")):
        return "read"
    return "other"


STAGES = (
    ("consumed", "Kafka hop: produce to consumed (ms clock)"),
    ("journaled", "consumed to trigger journaled (decode, policy, fsync)"),
    ("first_on_wire", "journaled to first request on the wire"),
    ("first_ack", "first request to its ack (the probe's round trip when alone)"),
    ("last_ack", "first ack to last ack (the rest of the wave, extra waves, reads)"),
    ("verify_sent", "last ack to verification read on the wire"),
    ("verified", "verification sent to flat event (its round trip)"),
)


def breakdown(
    records: Sequence[dict[str, Any]],
    entries: Sequence[tuple[str, dict[str, Any]]],
    sent_mono_ms: float,
    alert_ts_ms: int,
    rtt_ms: float,
) -> tuple[dict[str, float], dict[str, dict[str, Any]], list[tuple[str, float, str]]]:
    """Where one kill's milliseconds went: cumulative stage times from the alert's produce time
    on the critical path (the account proved flat last), each account's rounds on the wire,
    and the timeline of requests. `records` are this kill's audit events; `entries` are
    (venue, request log entry) pairs stamped on arrival at the simulator."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_type.setdefault(str(record["type"]), []).append(record)
    triggered = by_type["triggered"][0]
    flat = by_type["flat"][0]
    trigger = triggered.get("trigger") or {}
    consumed_ms = float(trigger.get("received_ms") or 0) - alert_ts_ms  # wall, 1 ms grain
    journaled = float(triggered["mono_ms"]) - sent_mono_ms
    timeline = sorted(
        (
            (f"{venue}/{e['account']}", e["mono"] * 1000 - sent_mono_ms, request_kind(e))
            for venue, e in entries
            if e.get("account") and "mono" in e and e["mono"] * 1000 >= sent_mono_ms
        ),
        key=lambda row: row[1],
    )
    verified = float(flat["mono_ms"]) - sent_mono_ms
    # up to the flat event: the confirmation's reads come after it
    timeline = [row for row in timeline if row[2] != "other" and row[1] <= verified]
    accounts: dict[str, dict[str, Any]] = {}
    started = float(triggered["mono_ms"])  # the kill starts right after `triggered`
    for summary in flat.get("accounts") or []:
        label = f"{summary['venue']}/{summary['account']}"
        mine = [row for row in timeline if row[0] == label]
        acks = [
            float(o["mono_ms"]) - sent_mono_ms
            for o in by_type.get("outcome", [])
            if o.get("account") == label
        ]
        flat_at = started - sent_mono_ms + float(summary.get("time_to_flat_ms") or 0.0)
        # sequential rounds: requests that reached the venue within half a round trip of the
        # previous one went out together
        rounds: list[list[tuple[str, float, str]]] = []
        for row in mine:
            if rounds and row[1] - rounds[-1][-1][1] < rtt_ms / 2:
                rounds[-1].append(row)
            else:
                rounds.append([row])
        reads = [row[1] for row in mine if row[2] == "read" and row[1] <= flat_at]
        first = mine[0][1] if mine else float("nan")
        # the first round inside the simulator: its requests' log entries, stamped on arrival
        # (`mono`), when their handler started (`start`) and their answer left (`answered`)
        n_first = len(rounds[0]) if rounds else 0
        first_round = sorted(
            (
                e
                for venue, e in entries
                if f"{venue}/{e.get('account')}" == label
                and "mono" in e
                and e["mono"] * 1000 >= sent_mono_ms
                and request_kind(e) != "other"
            ),
            key=lambda e: float(e["mono"]),
        )[:n_first]
        answered = [e for e in first_round if "answered" in e and "start" in e]
        last = max(answered, key=lambda e: float(e["answered"]), default=None)
        in_sim: dict[str, float] = {}
        if first_round and last is not None:
            in_sim = {
                "spread": (first_round[-1]["mono"] - first_round[0]["mono"]) * 1000,
                "last_answered": last["answered"] * 1000 - sent_mono_ms,
                "past_rtt": (last["answered"] - last["mono"]) * 1000 - rtt_ms,
                # the venue acts half a round trip after a request came (`SimVenue._middleware`)
                "late_start": (last["start"] - last["mono"]) * 1000 - rtt_ms / 2,
                "handled": (last["answered"] - last["start"]) * 1000,
            }
        waves = [
            float(w["mono_ms"]) - sent_mono_ms
            for w in by_type.get("wave", [])
            if w.get("account") == label
        ]
        accounts[label] = {
            "first_wave": min(waves) if waves else float("nan"),
            "first_on_wire": first,
            "first_ack": min(acks) if acks else float("nan"),
            "last_ack": max(acks) if acks else float("nan"),
            "verify_sent": max(reads) if reads else float("nan"),
            "flat": flat_at,
            "rounds": [
                "+".join(
                    f"{sum(1 for r in rnd if r[2] == k)}{k[0]}"
                    for k in ("cancel", "read")
                    if any(r[2] == k for r in rnd)
                )
                for rnd in rounds
            ],
            "round_starts": [round(rnd[0][1], 1) for rnd in rounds],
            # a cancel sent alone, the rest of its wave after it: not a wave of one request
            # (MEXC's and BingX's first waves here) followed by the verification read
            "probe": len(rounds) > 1
            and len(rounds[0]) == 1
            and rounds[0][0][2] == "cancel"
            and any(r[2] == "cancel" for r in rounds[1]),
            "first_round_in_sim": in_sim,
        }
    last = max(accounts, key=lambda a: accounts[a]["flat"]) if accounts else None
    stages = {"consumed": consumed_ms, "journaled": journaled}
    if last is not None:
        crit = accounts[last]
        stages |= {k: crit[k] for k in ("first_on_wire", "first_ack", "last_ack", "verify_sent")}
        crit["critical"] = True
    stages["verified"] = verified
    stages["first_on_wire_any"] = min((row[1] for row in timeline), default=float("nan"))
    return stages, accounts, timeline


def _endpoint(entry: dict[str, Any]) -> str:
    if entry.get("method") == "WS":
        return str(entry["path"])
    return f"{entry['method']} {entry['path']}"


def capabilities() -> dict[str, Capabilities]:
    from killswitch.exchanges.binance import CAPABILITIES as BINANCE
    from killswitch.exchanges.bingx import CAPABILITIES as BINGX
    from killswitch.exchanges.mexc import MEXC_CAPABILITIES as MEXC

    return {"binance": BINANCE, "mexc": MEXC, "bingx": BINGX}


async def measure_rtt(sim: Venue | VenueProcess, n: int = 20) -> float:
    """The median time of an unsigned request to the simulator: the round trip R really paid."""
    times = []
    async with aiohttp.ClientSession() as session:
        for _ in range(n + 2):
            t0 = time.perf_counter()
            async with session.get(f"{sim.base_url}/api/v3/time") as resp:
                await resp.read()
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times[2:])


# -- the naive baseline ------------------------------------------------------------------------


async def naive_baseline(
    cluster: Venues, accounts: Sequence[DrillAccount]
) -> tuple[float, int, int]:
    """Per account: fetch open orders, cancel one by one. Returns (seconds, requests, 429s)."""
    exchanges: list[Exchange] = []
    for account in accounts:
        sim = cluster.venues[account.venue]
        options: dict[str, Any] = {"use_ws_api": False} if account.venue == "binance" else {}
        exchange = build_exchange(
            account.venue,
            account=account.name,
            api_key=account.api_key,
            api_secret=account.secret,
            rest_url=sim.base_url,
            ws_url=ws_url(account.venue, sim),  # type: ignore[arg-type]
            **options,
        )
        await exchange.start()
        exchanges.append(exchange)
    started = time.monotonic()
    try:
        results = await asyncio.gather(*(naive_account(e) for e in exchanges))
    finally:
        seconds = time.monotonic() - started
        for exchange in exchanges:
            await exchange.close()
    return seconds, sum(r[0] for r in results), sum(r[1] for r in results)


async def naive_account(exchange: Exchange) -> tuple[int, int]:
    """Fetch, then cancel each order in turn; a list once (its legs go with it)."""
    requests = 1
    limited = 0
    snapshot = await exchange.snapshot(None)
    lists_done: set[str] = set()
    for order in snapshot.orders:
        if order.list_id is not None and order.list_id in lists_done:
            continue
        while True:
            requests += 1
            try:
                if order.list_id is not None and exchange.capabilities.has_order_lists:
                    await exchange.cancel_order_list(order.symbol, order.list_id)
                    lists_done.add(order.list_id)
                else:
                    await exchange.cancel_order(order.symbol, order.order_id)
            except AlreadyGone:
                pass
            except RateLimited as exc:
                limited += 1
                await asyncio.sleep(exc.retry_after_s)
                continue
            except (OutcomeUnknown, Transient):
                await asyncio.sleep(0.05)
                continue
            break
    return requests, limited


# -- the user-script baseline: ccxt -------------------------------------------------------------

THROTTLE_KEYS = ("http 429", "http 418", "bingx 100410")
SCRIPT_DEADLINE_S = 15.0  # a script that is not flat by then is reported not flat


def throttle_counts(sim: SimVenue) -> dict[str, int]:
    """429s, 418s and BingX 100410s one simulator has answered so far. BingX throttles only
    with 100410 (sent as HTTP 429, or 418 for a ban): its HTTP 429s are those 100410s."""
    c = sim.counters
    if "bingx 100410" in c or any(k.startswith(("100410 ", "418 /")) for k in c):
        return {"429": 0, "418": c.get("http 418", 0), "100410": c.get("bingx 100410", 0)}
    return {"429": c.get("http 429", 0), "418": c.get("http 418", 0), "100410": 0}


def point_at(client: Any, base_url: str) -> None:
    """Send every request of a ccxt client to `base_url`, paths unchanged (its only change)."""

    def swap(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: swap(item) for key, item in value.items()}
        if isinstance(value, str):
            return re.sub(r"^https?://[^/]+", base_url.rstrip("/"), value)
        return value

    client.urls["api"] = swap(client.urls["api"])


async def script_baseline(
    cluster: SimCluster, spec: Spec, accounts: Sequence[DrillAccount], *, throttle: bool
) -> dict[str, Any]:
    """What a user would script with ccxt, per account, all accounts at once:

        await asyncio.gather(*(ex.cancel_all_orders(s) for s in symbols))
        then fetch_open_orders(s) for each symbol; repeat until every one is empty.

    An unmodified ccxt client per account (only its URLs point at the simulator), markets
    loaded before the clock starts (a running bot has them); `throttle` is ccxt's
    enableRateLimit. Time runs from the first cancel to the first all-empty fetch; at most 20
    rounds or SCRIPT_DEADLINE_S. Returns ms, rounds, requests, throttling answers
    (429/418/100410) and whether it ended flat, in all and per venue."""
    import ccxt.async_support as ccxt_async  # dev dependency: the bench's second baseline

    clients: list[tuple[Any, list[str]]] = []
    notes: set[str] = set()
    loaded: dict[str, Any] = {}  # a venue's markets, read once: a running bot has them
    try:
        for account in accounts:
            sim = cluster.venues[account.venue]
            client = getattr(ccxt_async, account.venue)(
                {"apiKey": account.api_key, "secret": account.secret, "enableRateLimit": throttle}
            )
            point_at(client, sim.base_url)
            if account.venue in loaded:
                # (L's second BingX account reading them again met BingX's per-IP limit on
                # common/symbols, a 100410 before the clock started, and the bench died)
                markets = client.set_markets(list(loaded[account.venue].values()))
                ids = set(spec.symbol_names(account.venue))
                clients.append((client, [m for m, v in markets.items() if v["id"] in ids]))
                continue
            try:
                markets = await client.load_markets()
            except ccxt_async.BaseError as exc:
                if account.venue != "bingx":
                    raise
                # The BingX sim does not serve all that load_markets() reads yet (swap and
                # wallet endpoints): its spot markets are what the script trades.
                notes.add(f"bingx: load_markets() failed ({type(exc).__name__}); spot markets only")
                markets = client.set_markets(await client.fetch_spot_markets({}))
            loaded[account.venue] = markets
            ids = set(spec.symbol_names(account.venue))
            clients.append((client, [m for m, v in markets.items() if v["id"] in ids]))
        before = {n: throttle_counts(sim) for n, sim in cluster.venues.items()}
        logs_before = {n: len(sim.request_log) for n, sim in cluster.venues.items()}
        started = time.monotonic()
        deadline = started + SCRIPT_DEADLINE_S

        async def flatten(client: Any, symbols: list[str]) -> tuple[bool, int, float]:
            for rounds in range(1, 21):
                await asyncio.gather(
                    *(client.cancel_all_orders(s) for s in symbols), return_exceptions=True
                )
                left = await asyncio.gather(
                    *(client.fetch_open_orders(s) for s in symbols), return_exceptions=True
                )
                if all(isinstance(x, list) and not x for x in left):
                    return True, rounds, time.monotonic()
                if time.monotonic() > deadline:
                    break
            return False, rounds, time.monotonic()

        done = await asyncio.gather(*(flatten(c, s) for c, s in clients))
    finally:
        for client, _ in clients:
            await client.close()
    venues: dict[str, dict[str, Any]] = {}
    for account, (ok, rounds, at) in zip(accounts, done, strict=True):
        sim = cluster.venues[account.venue]
        v = venues.setdefault(account.venue, {"ms": 0.0, "rounds": 0, "flat": True})
        v["ms"] = max(v["ms"], (at - started) * 1000)
        v["rounds"] = max(v["rounds"], rounds)
        v["flat"] = v["flat"] and ok and not book_open(Venues.of(cluster), account)
    for name, sim in cluster.venues.items():
        if name not in venues:
            continue
        after = throttle_counts(sim)
        venues[name]["throttled"] = {k: after[k] - before[name][k] for k in after}
        venues[name]["requests"] = sum(
            1 for e in list(sim.request_log)[logs_before[name] :] if e.get("account")
        )
        # counted here, not as the naive baseline's; a ban must not outlive this baseline
        for key in [k for k in sim.counters if k in THROTTLE_KEYS or k.startswith("418 ")]:
            del sim.counters[key]
        sim.reset_limits()
    return {
        "ms": max(v["ms"] for v in venues.values()),
        "enable_rate_limit": throttle,
        "rounds": max(v["rounds"] for v in venues.values()),
        "requests": sum(v["requests"] for v in venues.values()),
        "throttled": {
            k: sum(v["throttled"][k] for v in venues.values()) for k in ("429", "418", "100410")
        },
        "flat": all(v["flat"] for v in venues.values()),
        "venues": venues,
        "note": "; ".join(sorted(notes)),
    }


# -- the report --------------------------------------------------------------------------------


def script_cell(r: Result) -> str:
    """The user script (ccxt defaults) in the table: median time, and how many ended flat."""
    mine = [x for x in r.script if x["enable_rate_limit"]]
    if not mine:
        return "-"
    flat = sum(1 for x in mine if x["flat"])
    ms = median_of([x["ms"] for x in mine])
    shown = f"{ms:.0f} ms" if ms < 10_000 else f"{ms / 1000:.1f} s"
    return f"{shown} ({flat}/{len(mine)} flat)"


def table(results: Sequence[Result], bench: Bench) -> str:
    head = (
        f"{'workload':<9}{'orders':>7}{'lists':>6}  {'ours: TTF median / p95':>24}  "
        f"{'lower bound':>11}  {'ratio':>6}  {'user script':>16}  {'baseline':>10}  "
        f"{'speed-up':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        ttf = r.ttf()
        med = statistics.median(ttf)
        base = f"{statistics.median(r.baseline_s):.1f} s" if r.baseline_s else "-"
        speed = f"{statistics.median(r.baseline_s) * 1000 / med:.0f}x" if r.baseline_s else "-"
        lines.append(
            f"{r.workload:<9}{r.orders:>7}{r.lists:>6}  "
            f"{f'{med:.0f} / {pct(ttf, 0.95):.0f} ms':>24}  {r.bound['ms']:>8.0f} ms  "
            f"{med / r.bound['ms']:>5.2f}x  {script_cell(r):>16}  {base:>10}  {speed:>9}"
        )
    lines.append("")
    for r in results:
        first = [x.first_cancel_ms for x in r.cold()]
        hop = [x.alert_to_trigger_ms for x in r.cold() if x.alert_to_trigger_ms is not None]
        lines.append(
            f"{r.workload}: {len(r.cold())} runs; alert to first cancel on the wire median "
            f"{statistics.median(first):.1f} ms, p95 {pct(first, 0.95):.1f} ms "
            f"(stamped on arrival, before the simulated round trip); of which alert to trigger "
            f"journaled (Kafka hop, decode, fsync) median {statistics.median(hop):.1f} ms; "
            f"p95 ratio "
            f"{pct(r.ttf(), 0.95) / r.bound['ms']:.2f}x; bound = {r.bound['rounds']} rounds x "
            f"{r.bound['round_trip_s'] * 1000:.0f} ms + {r.bound['rate_span_s']:.1f} s of "
            f"rate-limit span, {r.bound['requests']} cancel requests"
        )
        for throttle in (True, False):
            mine = [x for x in r.script if x["enable_rate_limit"] is throttle]
            if not mine:
                continue
            ms = median_of([x["ms"] for x in mine])
            flat = sum(1 for x in mine if x["flat"])
            per_venue = "; ".join(
                f"{venue} {median_of([x['venues'][venue]['ms'] for x in mine]):.0f} ms "
                f"flat {sum(1 for x in mine if x['venues'][venue]['flat'])}/{len(mine)} "
                + "/".join(
                    str(sum(x["venues"][venue]["throttled"][k] for x in mine))
                    for k in ("429", "418", "100410")
                )
                for venue in mine[0]["venues"]
            )
            how = "defaults" if throttle else "enableRateLimit=False"
            lines.append(
                f"{r.workload}: user script (ccxt {how}), {len(mine)} runs: median {ms:.0f} ms "
                f"= {ms / r.bound['ms']:.2f}x the bound, "
                f"ended flat in {flat} of {len(mine)}; 429/418/100410 "
                + "/".join(
                    str(sum(x["throttled"][k] for x in mine)) for k in ("429", "418", "100410")
                )
                + f"; per venue: {per_venue}"
                + (f" ({r.script_note})" if r.script_note else "")
            )
        if r.baseline_s:
            lines.append(
                f"{r.workload}: baseline {len(r.baseline_s)} runs: "
                + ", ".join(f"{s:.1f} s" for s in r.baseline_s)
                + f"; {r.baseline_requests} requests per run, {r.baseline_429s} x 429 waited out"
            )
        if r.peak_rss_mb is not None:
            lines.append(
                f"{r.workload}: daemon peak RSS {r.first_peak_rss_mb:.0f} MB tracking the "
                f"workload through its first kill; {r.rss_mb:.0f} MB (peak "
                f"{r.peak_rss_mb:.0f} MB) after {len(r.runs)} kills"
            )
    for r in results:
        for warm in (False, True):
            text = breakdown_report(r, bench.rtt_ms, warm=warm)
            if text:
                lines.append(text)
    lines.append(
        f"round trip R: set {bench.rtt_ms:.0f} ms, measured {bench.measured_rtt_ms or 0:.1f} ms "
        f"(median unsigned request); 418s: ours {bench.counters['ours 418']}, baseline "
        f"{bench.counters['baseline 418']}; 429s: ours {bench.counters['ours 429']}, baseline "
        f"{bench.counters['baseline 429']}"
    )
    return "\n".join(lines)


def median_of(values: Sequence[float]) -> float:
    kept = [v for v in values if v == v]  # NaN-free
    return statistics.median(kept) if kept else float("nan")


def breakdown_report(r: Result, rtt_ms: float, *, warm: bool = False) -> str:
    """Where the milliseconds go on `r`'s cold (or warm) runs, and what of it is avoidable."""
    kind = "warm" if warm else "cold"
    runs = [x for x in r.runs if x.stages and x.warm == warm]
    if not runs:
        return ""
    names = [name for name, _ in STAGES]
    lines = [
        f"{r.workload}: breakdown of time to flat, median of {len(runs)} {kind} runs, ms from the "
        f"alert's produce time on the critical path (the account proved flat last):",
        f"  {'stage':<72}{'at':>8}{'step':>8}",
    ]
    prev = "0"
    for name, label in STAGES:
        at = median_of([x.stages.get(name, float("nan")) for x in runs])
        step = median_of(
            [
                x.stages.get(name, float("nan")) - (x.stages.get(prev, 0.0) if prev != "0" else 0)
                for x in runs
            ]
        )
        lines.append(f"  {label:<72}{at:>8.1f}{step:>8.1f}")
        prev = name
    del names
    ttf = median_of([x.time_to_flat_ms for x in runs])
    lines.append(f"  {'time to flat (the flat event, wall clock)':<72}{ttf:>8.1f}")
    sim_rows = []
    for x in runs:
        acc = next(a for a in x.accounts.values() if a.get("critical"))
        got = acc.get("first_round_in_sim") or {}
        if got:
            sim_rows.append(got | {"ack": acc["last_ack"] - got["last_answered"]})
    if sim_rows:

        def med(key: str) -> float:
            return median_of([row[key] for row in sim_rows])

        lines.append(
            "  the first wave on the critical account, stamped inside the simulator (medians): "
            f"its requests reached the venue over {med('spread'):.1f} ms; the last answer left "
            f"{med('past_rtt'):.1f} ms after its round trip was up (its handler started "
            f"{med('late_start'):.1f} ms after half the round trip, and its answer left "
            f"{med('handled'):.1f} ms after that); the daemon's last ack event came "
            f"{med('ack'):.1f} ms after that answer"
        )
    crit: dict[str, int] = {}
    for x in runs:
        for label, acc in x.accounts.items():
            if acc.get("critical"):
                crit[label] = crit.get(label, 0) + 1
    median_run = sorted(runs, key=lambda x: x.time_to_flat_ms)[len(runs) // 2]
    lines.append(
        "  critical account: "
        + ", ".join(f"{a} in {n} of {len(runs)} runs" for a, n in sorted(crit.items()))
    )
    lines.append(
        "  rounds on the wire in the median run (c = cancels, r = reads sent together; "
        "ms from produce):"
    )
    for label, acc in median_run.accounts.items():
        rounds = " | ".join(
            f"{what}@{at:.0f}" for what, at in zip(acc["rounds"], acc["round_starts"], strict=True)
        )
        lines.append(f"    {label:<16} flat at {acc['flat']:>6.1f}: {rounds}")
    # What is avoidable, per run on its critical path
    probe, extra, gap, wire, extra_n = [], [], [], [], []
    engine_part: list[float] = []
    connector_part: list[float] = []
    for x in runs:
        acc = next(a for a in x.accounts.values() if a.get("critical"))
        starts = acc["round_starts"]
        if acc["probe"] and len(starts) > 1:
            probe.append(starts[1] - starts[0])
        # the bound has two rounds (cancel wave, verification): each round beyond them (the
        # probe's included) delays the verification by about a round trip
        extra_n.append(max(0, len(starts) - 2))
        if len(starts) > 2:
            extra.append((starts[-1] - starts[0]) - (acc["flat"] - starts[-1]))
        gap.append(x.stages["verify_sent"] - x.stages["last_ack"])
        wire.append(x.stages["first_on_wire"] - x.stages["journaled"])
        engine_part.append(acc.get("first_wave", float("nan")) - x.stages["journaled"])
        connector_part.append(x.stages["first_on_wire"] - acc.get("first_wave", float("nan")))
    lines.append("  avoidable (medians over the runs where it happened):")
    lines.append(
        f"    probe-first round trip: in {len(probe)} of {len(runs)} runs, "
        f"{median_of(probe):.1f} ms (R = {rtt_ms:.0f} ms)"
    )
    lines.append(
        f"    rounds beyond cancel wave + verification (the probe's included): median "
        f"{median_of(extra_n):.0f}, costing {median_of(extra) if extra else 0.0:.1f} ms"
    )
    lines.append(
        f"    last ack (daemon) to verification read on the wire: {median_of(gap):.1f} ms "
        "(negative: the read was already on its way)"
    )
    lines.append(
        f"    trigger journaled to first request on the wire: {median_of(wire):.1f} ms, of which "
        f"journaled to the first wave event (engine: log, events, launch, plan) "
        f"{median_of(engine_part):.1f} ms and wave event to the wire (connector: sign, send) "
        f"{median_of(connector_part):.1f} ms"
    )
    warm_ttf = r.warm_ttf()
    if warm_ttf and not warm:
        w = median_of(warm_ttf)
        lines.append(
            f"  warm kills (within open_for_s of the last OK: no probe), {len(warm_ttf)} runs: "
            f"median {w:.0f} ms = {w / r.bound['ms']:.2f}x the bound, "
            f"p95 {pct(warm_ttf, 0.95):.0f} ms; cold {ttf:.0f} ms = {ttf / r.bound['ms']:.2f}x"
        )
    return "\n".join(lines)


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}, {platform.system()}"
    )


async def main(args: argparse.Namespace) -> int:
    bench = Bench(args)
    results: list[Result] = []
    print(f"time to flat bench on {machine()}; R = {args.rtt_ms:.0f} ms", flush=True)
    with running_tansu() as broker:
        await create_topics(broker.bootstrap, *TOPICS)
        await create_topics(broker.bootstrap, LATCH_TOPIC, compact=True)
        for name in args.workloads.split(","):
            spec = WORKLOADS[name.strip()]
            baseline = args.baseline_runs if spec.name in args.baseline_on.split(",") else 0
            runs = args.runs if spec.name == "S" else args.l_runs
            results.append(await bench.workload(spec, broker.bootstrap, runs, baseline))
            if args.json:  # after each workload: a later one failing keeps what was measured
                await write_json(args, bench, results, table(results, bench))
    report = table(results, bench)
    print()
    print(report)
    if args.json:
        await write_json(args, bench, results, report)
    return 0 if bench.counters["ours 418"] == 0 else 1


async def write_json(
    args: argparse.Namespace, bench: Bench, results: Sequence[Result], report: str
) -> None:
    if args.json:
        await asyncio.to_thread(
            Path(args.json).write_bytes,
            orjson.dumps(
                {
                    "machine": machine(),
                    "rtt_ms": args.rtt_ms,
                    "measured_rtt_ms": bench.measured_rtt_ms,
                    "counters": bench.counters,
                    "results": [asdict(r) for r in results],
                    "table": report,
                },
                option=orjson.OPT_INDENT_2,
            ),
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="measured kills on S")
    parser.add_argument("--baseline-runs", type=int, default=3, help="naive baseline runs")
    parser.add_argument("--l-runs", type=int, default=5, help="measured kills on L")
    parser.add_argument(
        "--lenient-on",
        default="L",
        help="workloads whose kills may start with trackers behind the books (streams live)",
    )
    parser.add_argument("--lenient-s", type=float, default=30.0)
    # The naive baseline on L waits out BingX's corrected limits one cancel at a time: well
    # over half an hour. It runs when asked (--baseline-on S,L).
    parser.add_argument("--baseline-on", default="S", help="workloads that get the baseline")
    parser.add_argument("--rtt-ms", type=float, default=30.0, help="simulated round trip")
    parser.add_argument("--workloads", default="S,L")
    parser.add_argument("--trigger", choices=("kafka", "control"), default="kafka")
    parser.add_argument(
        "--settle-s",
        type=float,
        default=6.0,
        help="idle time before each kill (the engine probes after 5 s of quiet): cold kills",
    )
    parser.add_argument(
        "--warm-runs",
        type=int,
        default=10,
        help="extra kills fired soon after the last (the engine's gate still open: no probe)",
    )
    parser.add_argument("--warm-on", default="S", help="workloads that get the warm runs")
    parser.add_argument(
        "--warm-settle-s",
        type=float,
        default=2.5,
        help="idle time before a warm kill: past the venues' 1 s windows, within open_for_s",
    )
    parser.add_argument("--script-runs", type=int, default=3, help="user-script (ccxt) runs")
    parser.add_argument("--script-on", default="S,L", help="workloads that get the user script")
    parser.add_argument(
        "--sims-in-process",
        action="store_true",
        help="serve the three simulated venues in the bench's own process (one event loop) "
        "instead of one process each",
    )
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the work directories")
    parser.add_argument(
        "--quick", action="store_true", help="5 runs, baseline once on S: a smoke test"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.runs = min(args.runs, 5)
        args.l_runs = min(args.l_runs, 2)
        args.script_runs = min(args.script_runs, 1)
        args.warm_runs = min(args.warm_runs, 3)
        args.baseline_runs = 1
        args.baseline_on = "S"
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
