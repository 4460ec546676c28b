"""`killswitch demo`: a full kill drill on this machine, proved from the simulator's books.

1. Serve Binance, MEXC and BingX spot on loopback (the simulator), seeded with several
   accounts, dozens of symbols, hundreds of orders and order lists, ~30 ms round trip.
2. Start the daemon as systemd would: `killswitch run --config FILE` as a subprocess, keys in
   a credentials directory (`$CREDENTIALS_DIRECTORY`), a notify socket the demo binds
   (`$NOTIFY_SOCKET`); wait for READY=1 and for every user stream to be live.
3. Start a rogue bot that keeps placing orders on one account, and fire a kill through the
   daemon's control socket.
4. Wait for the kill to be confirmed, stop the bot, and check the simulator's own books (not the
   daemon's word) until every account is empty. Print a report; exit 0 only if all are flat.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from killswitch.control_client import ControlUnreachable, format_kill, request
from killswitch.sim.broker import BrokerUnavailable, DrillKafka
from killswitch.sim.rogue import RogueBot
from killswitch.sim.server import SimCluster
from killswitch.sim.venue import SimVenue

log = logging.getLogger(__name__)

BASES = (
    "BTC", "ETH", "SOL", "XRP", "ADA", "DOGE", "TRX", "DOT", "LINK", "LTC", "AVAX", "ATOM",
)  # fmt: skip
VENUE_ORDER = ("binance", "mexc", "bingx")


@dataclass(frozen=True, slots=True)
class DrillAccount:
    """One simulated account and its throwaway HMAC key."""

    venue: str
    name: str
    api_key: str
    secret: str

    @property
    def label(self) -> str:
        return f"{self.venue}/{self.name}"


@dataclass(frozen=True, slots=True)
class Workload:
    """How much to seed and how slow the network is."""

    accounts_per_venue: int = 2
    symbols_per_venue: int = len(BASES)  # every one
    orders_per_symbol: int = 8
    list_fraction: float = 0.25
    latency_ms: float = 30.0
    jitter_ms: float = 5.0
    seed: int = 20261120


def symbol(venue: str, base: str) -> str:
    """The venue's spelling of `base`/USDT."""
    return f"{base}-USDT" if venue == "bingx" else f"{base}USDT"


def drill_accounts(per_venue: int) -> list[DrillAccount]:
    """Fresh random keys for every account: never a real key, never the same twice."""
    return [
        DrillAccount(venue, f"mm-{i + 1}", secrets.token_hex(24), secrets.token_hex(32))
        for venue in VENUE_ORDER
        for i in range(per_venue)
    ]


def sim_toml(accounts: Sequence[DrillAccount], workload: Workload) -> str:
    """The simulator config: three venues, their accounts, generated orders and lists."""
    lines = ['host = "127.0.0.1"', f"seed = {workload.seed}", ""]
    bases = BASES[: workload.symbols_per_venue]
    for venue in VENUE_ORDER:
        symbols = [symbol(venue, b) for b in bases]
        lines += [
            f"[venues.{venue}]",
            "port = 0",
            f"latency_ms = {workload.latency_ms}",
            f"jitter_ms = {workload.jitter_ms}",
            f"symbols = {_toml_list(symbols)}",
            "",
        ]
        for account in (a for a in accounts if a.venue == venue):
            lines += sim_account_toml(account)
        for i, account in enumerate(a for a in accounts if a.venue == venue):
            # Each account trades its own slice of the symbols, overlapping the next one's.
            mine = symbols[i * 2 :] + symbols[: i * 2]
            lines += [
                f"[[venues.{venue}.generate]]",
                f'account = "{account.name}"',
                f"symbols = {_toml_list(mine[: max(1, len(mine) - i)])}",
                f"per_symbol = {workload.orders_per_symbol}",
                f"list_fraction = {workload.list_fraction if venue != 'mexc' else 0.0}",
                f'client_id_prefix = "desk{i + 1}_"',
                "",
            ]
    return "\n".join(lines)


def ws_url(venue: str, sim: SimVenue) -> str:
    """The websocket URL a connector of `venue` is configured with."""
    info = sim.describe()
    if "ws_api_url" in info:
        return str(info["ws_api_url"])
    url = str(info["ws_url"])
    suffix = {"mexc": "/ws", "bingx": "/market"}.get(venue, "")
    return url if url.endswith(suffix) else url + suffix


def daemon_toml(
    state_dir: Path,
    socket_path: Path,
    accounts: Sequence[DrillAccount],
    cluster: SimCluster,
    *,
    engine: dict[str, float] | None = None,
    inline_secrets: bool = False,
    kafka: Sequence[str] | None = None,
) -> str:
    """The daemon's config for the drill. Keys go to the credentials directory unless
    `inline_secrets` (tests that start the daemon without one); `kafka` is the `[kafka]`
    section's lines (Kafka off when None)."""
    symbols_of = {
        v: [symbol(v, b) for b in BASES] for v in VENUE_ORDER
    }  # configured symbols: a superset, as a desk would list them
    lines = [f'state_dir = "{state_dir}"', ""]
    for account in accounts:
        lines += daemon_account_toml(account, cluster)[:-1]
        lines.append(f"symbols = {_toml_list(symbols_of[account.venue][:4])}")
        if inline_secrets:
            lines += [f'api_key = "{account.api_key}"', f'api_secret = "{account.secret}"']
        lines.append("")
    lines += [*(kafka or ["[kafka]", "enabled = false"]), "", "[engine]"]
    settings = {"deadline_s": 30.0, "quiet_window_s": 1.0, "sweep_interval_s": 5.0}
    settings.update(engine or {})
    lines += [f"{k} = {v}" for k, v in settings.items()]
    lines += ["", "[control]", f'socket_path = "{socket_path}"', ""]
    return "\n".join(lines)


def sim_account_toml(account: DrillAccount) -> list[str]:
    """An account's `[[venues.<venue>.accounts]]` table in a simulator config."""
    return [
        f"[[venues.{account.venue}.accounts]]",
        f'name = "{account.name}"',
        f'api_key = "{account.api_key}"',
        f'secret = "{account.secret}"',
        "",
    ]


def daemon_account_toml(account: DrillAccount, cluster: SimCluster) -> list[str]:
    """An account's `[[accounts]]` table in the daemon's config, at `cluster`'s URLs (keys
    from the credentials directory); the last line is blank."""
    sim = cluster.venues[account.venue]
    return [
        "[[accounts]]",
        f'venue = "{account.venue}"',
        f'name = "{account.name}"',
        f'rest_url = "{sim.base_url}"',
        f'ws_url = "{ws_url(account.venue, sim)}"',
        "",
    ]


def write_credentials(directory: Path, accounts: Sequence[DrillAccount]) -> None:
    """Write one file per secret, as systemd's `LoadCredential=` presents them."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for account in accounts:
        stem = f"killswitch_accounts__{account.venue}__{account.name}__"
        for fld, value in (("api_key", account.api_key), ("api_secret", account.secret)):
            path = directory / f"{stem}{fld}"
            path.write_text(value)
            path.chmod(0o400)


def _toml_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"


# -- the systemd side --------------------------------------------------------------------------


class NotifySocket:
    """A bound AF_UNIX datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._drain)

    def _drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            self.lines.extend(data.decode(errors="replace").splitlines())
        self._changed.set()

    async def wait_for(self, line: str, timeout_s: float) -> bool:
        """Wait until `line` has been sent; False on timeout."""
        try:
            async with asyncio.timeout(timeout_s):
                while line not in self.lines:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()


def killswitch_command() -> list[str]:
    """How to run this package's CLI in a child process."""
    script = Path(sys.executable).parent / "killswitch"
    return [str(script)] if script.exists() else [sys.executable, "-m", "killswitch"]


def daemon_env(**extra: str) -> dict[str, str]:
    """The parent's environment without anything that would steer the child daemon."""
    skip = {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "CREDENTIALS_DIRECTORY"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILLSWITCH_") and k not in skip}
    env.update(extra)
    return env


# -- the drill ---------------------------------------------------------------------------------


@dataclass(slots=True)
class AccountReport:
    label: str
    before_orders: int
    before_lists: int
    after_orders: int = -1
    after_lists: int = -1
    kill: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class DrillResult:
    accounts: list[AccountReport]
    kill: dict[str, Any]
    rogue: dict[str, Any]
    sim_counters: dict[str, dict[str, int]]
    fire_to_flat_ms: float | None
    ready_s: float
    flat: bool
    daemon_exit: int | None
    notes: list[str] = field(default_factory=list)
    fired_via: str = "the control socket"

    @property
    def ok(self) -> bool:
        return self.flat and self.daemon_exit == 0


def book_counts(cluster: SimCluster, account: DrillAccount) -> tuple[int, int]:
    sim = cluster.venues[account.venue]
    book = sim.book(sim.accounts[account.name])
    return len(book.orders), len(book.lists)


async def run_drill(
    workdir: Path,
    workload: Workload,
    *,
    rogue_rate_per_s: float = 5.0,
    rogue_after_s: float = 1.0,
    via_kafka: bool = True,
) -> DrillResult:
    """Run the whole drill in `workdir`; return what happened. With `via_kafka` (and Tansu
    installed) a local broker is started and the kill is a risk alert published to Kafka."""
    accounts = drill_accounts(workload.accounts_per_venue)
    cluster = SimCluster.from_toml(sim_toml(accounts, workload), "<demo sim>")
    await cluster.start()
    notify: NotifySocket | None = None
    proc: asyncio.subprocess.Process | None = None
    rogue: RogueBot | None = None
    kafka: DrillKafka | None = None
    notes: list[str] = []
    try:
        if via_kafka:
            try:
                kafka = DrillKafka.start()
                await kafka.create_topics()
            except BrokerUnavailable as exc:
                notes.append(f"no local Kafka broker ({exc}): the kill goes through the socket")
        state_dir = workdir / "state"
        socket_path = workdir / "control.sock"
        config = workdir / "killswitch.toml"
        config.write_text(
            daemon_toml(
                state_dir,
                socket_path,
                accounts,
                cluster,
                kafka=kafka.toml_lines() if kafka is not None else None,
            )
        )
        credentials = workdir / "credentials"
        write_credentials(credentials, accounts)
        notify = NotifySocket(workdir / "notify.sock")
        log_file = (workdir / "daemon.log").open("wb")
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *killswitch_command(),
            "run",
            "--config",
            str(config),
            env=daemon_env(
                NOTIFY_SOCKET=str(notify.path),
                CREDENTIALS_DIRECTORY=str(credentials),
                KILLSWITCH_LOGGING__FORMAT="text",
            ),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
        )
        log_file.close()
        if not await notify.wait_for("READY=1", 60.0):
            raise DrillError(f"the daemon did not report READY=1 (log: {workdir / 'daemon.log'})")
        ready_s = time.monotonic() - started
        if not await _wait_streams_live(socket_path, 20.0):
            notes.append("not every user stream was live before the kill (tracker untrusted)")

        target = accounts[0]
        rogue = RogueBot(
            venue=target.venue,
            rest_url=cluster.venues[target.venue].base_url,
            api_key=target.api_key,
            api_secret=target.secret,
            symbols=[symbol(target.venue, b) for b in BASES[:3]],
            rate_per_s=rogue_rate_per_s,
            client_id_prefix="rogue_",
        )
        await rogue.start()
        await rogue.wait_placed(3)
        before = {a.label: book_counts(cluster, a) for a in accounts}

        fired = time.monotonic()
        if kafka is not None:
            alert_id = f"demo-{int(time.time() * 1000)}"
            await kafka.publish_kill(alert_id, "demo drill: flatten everything")
            answer = await _wait_kill(socket_path, alert_id, 60.0)
        else:
            answer = await asyncio.to_thread(
                request,
                socket_path,
                {
                    "op": "fire",
                    "reason": "demo drill: flatten everything",
                    "wait": "done",
                    "timeout_s": 60,
                    "actor": "demo",
                },
                timeout_s=90.0,
            )
        fire_to_flat_ms = (time.monotonic() - fired) * 1000
        if not answer.get("trigger_id"):
            raise DrillError(f"the daemon refused the kill: {answer.get('error')}")
        # Latched now: the bot keeps placing for a while, and the stream cancels each order.
        await asyncio.sleep(rogue_after_s)
        await rogue.stop()
        confirmed = await asyncio.to_thread(
            request,
            socket_path,
            {"op": "wait", "trigger_id": answer["trigger_id"], "until": "confirmed"},
            timeout_s=90.0,
        )
        kill = confirmed.get("kill")
        if not isinstance(kill, dict):
            kill = answer.get("kill") if isinstance(answer.get("kill"), dict) else {}
        assert isinstance(kill, dict)
        flat = await _wait_books_empty(cluster, accounts, 30.0)
        reports = []
        by_label = {f"{a['venue']}/{a['account']}": a for a in kill.get("accounts", [])}
        for account in accounts:
            after = book_counts(cluster, account)
            reports.append(
                AccountReport(
                    account.label,
                    *before[account.label],
                    after_orders=after[0],
                    after_lists=after[1],
                    kill=by_label.get(account.label, {}),
                )
            )
        counters = {name: dict(sim.counters) for name, sim in cluster.venues.items()}
        exit_code = await _stop_daemon(proc)
        proc = None
        return DrillResult(
            accounts=reports,
            kill=kill,
            rogue=rogue.stats(),
            sim_counters=counters,
            fire_to_flat_ms=fire_to_flat_ms,
            ready_s=ready_s,
            flat=flat,
            daemon_exit=exit_code,
            notes=notes,
            fired_via=(
                f"a Kafka alert on {kafka.topics['alerts_topic']}"
                if kafka
                else "the control socket"
            ),
        )
    finally:
        if rogue is not None and rogue.running:
            await rogue.stop()
        if proc is not None:
            await _stop_daemon(proc)
        if notify is not None:
            notify.close()
        if kafka is not None:
            kafka.stop()
        await cluster.stop()


async def _wait_kill(socket_path: Path, trigger_id: str, timeout_s: float) -> dict[str, Any]:
    """Wait until the daemon has consumed the alert and its kill is done; return the answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = await asyncio.to_thread(
            request,
            socket_path,
            {"op": "wait", "trigger_id": trigger_id, "until": "done", "timeout_s": timeout_s},
            timeout_s=timeout_s + 30.0,
        )
        if answer.get("error") != "no such trigger" or time.monotonic() > deadline:
            return {"trigger_id": trigger_id, **answer}
        await asyncio.sleep(0.02)  # the alert is on its way through Kafka


class DrillError(Exception):
    """The drill could not run (the daemon did not start, the socket did not answer)."""


async def _wait_streams_live(socket_path: Path, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            answer = await asyncio.to_thread(request, socket_path, {"op": "status"})
        except ControlUnreachable:
            answer = {}
        status = answer.get("status") or {}
        accounts = status.get("accounts") or []
        if accounts and all(a.get("stream") == "live" for a in accounts):
            return True
        await asyncio.sleep(0.1)
    return False


async def _wait_books_empty(
    cluster: SimCluster, accounts: Sequence[DrillAccount], timeout_s: float
) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if all(book_counts(cluster, a) == (0, 0) for a in accounts):
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)


async def _stop_daemon(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(40.0):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
    return proc.returncode if proc.returncode is not None else -1


# -- the report --------------------------------------------------------------------------------


def render(result: DrillResult) -> str:
    """The report a person reads after the drill."""
    kill = result.kill
    out = [
        "killswitch demo: kill drill against the simulator",
        "",
        f"daemon READY after {result.ready_s:.1f} s; kill {kill.get('kill_id', '?')} "
        f"state {str(kill.get('state', 'unknown')).upper()}",
        f"time to first cancel {_ms(kill.get('time_to_first_cancel_ms'))}, "
        f"time to flat {_ms(kill.get('time_to_flat_ms'))} (trigger to verified empty); "
        f"fire to flat answer {_ms(result.fire_to_flat_ms)} (kill sent as {result.fired_via})",
        "",
        f"{'VENUE/ACCOUNT':<16} {'BEFORE':>13} {'AFTER':>11} {'REQUESTS':>8} {'RETRIES':>7} "
        f"{'429s':>5} {'1ST CANCEL':>10} {'FLAT':>9}  STATE",
    ]
    totals = [0, 0, 0, 0, 0, 0]
    for acc in result.accounts:
        k = acc.kill
        out.append(
            f"{acc.label:<16} {acc.before_orders:>5} ord {acc.before_lists:>2} lst "
            f"{acc.after_orders:>3} ord {acc.after_lists:>2} lst "
            f"{k.get('requests', 0):>8} {k.get('retries', 0):>7} {k.get('rate_limited', 0):>5} "
            f"{_ms(k.get('time_to_first_cancel_ms')):>10} {_ms(k.get('time_to_flat_ms')):>9}  "
            f"{k.get('state', '?')}"
        )
        totals[0] += acc.before_orders
        totals[1] += acc.before_lists
        totals[2] += acc.after_orders
        totals[3] += acc.after_lists
        totals[4] += int(k.get("requests", 0))
        totals[5] += int(k.get("retries", 0))
    out.append(
        f"{'total':<16} {totals[0]:>5} ord {totals[1]:>2} lst "
        f"{totals[2]:>3} ord {totals[3]:>2} lst {totals[4]:>8} {totals[5]:>7}"
    )
    rogue = result.rogue
    out += [
        "",
        f"rogue bot on {result.accounts[0].label}: placed {rogue.get('placed', 0)} orders during "
        f"the kill and while latched (rejected {rogue.get('rejected', 0)}); all cancelled: "
        f"{'yes' if result.flat else 'NO'} (checked in the simulator's books)",
    ]
    for venue, counters in result.sim_counters.items():
        limited = counters.get("http 429", 0)
        banned = counters.get("http 418", 0)
        total = sum(v for k, v in counters.items() if k.startswith("requests "))
        out.append(f"sim {venue}: {total} requests served, {limited} x 429, {banned} x 418")
    out += [f"note: {n}" for n in result.notes]
    out += [
        "",
        "per-account detail (daemon's own report):",
        format_kill(kill) if kill else "  (no kill summary)",
        "",
        "RESULT: "
        + (
            "PASS: every venue is flat, checked from the simulator's books"
            if result.ok
            else f"FAIL: flat={result.flat} daemon_exit={result.daemon_exit}"
        ),
    ]
    return "\n".join(out) + "\n"


def _ms(value: object) -> str:
    return f"{value:.0f} ms" if isinstance(value, int | float) else "-"


# -- CLI ---------------------------------------------------------------------------------------
