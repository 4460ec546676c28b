"""How one daemon scales with its accounts: 1, 4, 16 and 64 over the three venues (simulator).

Each account has 5 symbols x 10 orders. For each size, one daemon (`killswitch run`, as systemd
runs it, Kafka off, the kill fired over the control socket) and, measured in that one run:

* time to READY=1 from the process start, and to every stream live with its tracker caught up;
* daemon RSS once tracking, and its peak after the kill;
* idle CPU: the daemon's user+system time over a window with streams open and no kill, as a
  share of one core, in all and per account;
* time to flat of one kill of everything (cold: after the idle window, so the engine's
  probe-first applies, as in bench/time_to_flat.py), the lower bound for the same books in the
  same run (killswitch.kill.bound) and their ratio, and where the time went on the critical
  path (the stages of bench/time_to_flat.py's breakdown, without the Kafka hop).

Targets at 64 accounts: time to flat at most 1.5x the bound, RSS at most 300 MB, idle CPU at
most 2% of one core per account, READY within 10 s. Where one is missed the bench names what
grows and how (the exponent of its growth from 16 to 64 accounts: 1 is linear).

Loopback only; about 2-3 minutes on 2 cores. Usage:
python bench/scale.py [--sizes 1,4,16,64] [--idle-s 8] [--rtt-ms 30] [--json scale.json]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from killswitch.drill.demo import DrillAccount, daemon_account_toml
from killswitch.kill.bound import lower_bound
from killswitch.sim.server import SimCluster
from time_to_flat import (
    STAGES,
    VENUES,
    Daemon,
    Spec,
    breakdown,
    capabilities,
    machine,
    seed,
    sim_toml,
    throttle_counts,
)
from venue_procs import Venues

TARGETS = {"ratio": 1.5, "rss_mb": 300.0, "idle_cpu_pct_per_account": 2.0, "ready_s": 10.0}
SYMBOLS, PER_SYMBOL = 5, 10


def spread(n: int) -> list[DrillAccount]:
    """`n` accounts dealt over the venues in turn: binance, mexc, bingx, binance, ..."""
    counts = dict.fromkeys(VENUES, 0)
    out = []
    for i in range(n):
        venue = VENUES[i % len(VENUES)]
        counts[venue] += 1
        out.append(
            DrillAccount(
                venue, f"acct-{counts[venue]}", secrets.token_hex(24), secrets.token_hex(32)
            )
        )
    return out


def daemon_toml(workdir: Path, accounts: Sequence[DrillAccount], cluster: SimCluster) -> str:
    lines = [f'state_dir = "{workdir / "state"}"', ""]
    for account in accounts:
        lines += daemon_account_toml(account, cluster)
    lines += [
        "[kafka]",
        "enabled = false",
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


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    accounts = spread(n)
    spec = Spec(f"{n} accounts", 1, dict.fromkeys(VENUES, SYMBOLS), PER_SYMBOL, 0.0)
    text = sim_toml(spec, accounts, args.rtt_ms)
    for venue in VENUES:  # a venue with no account is left out of the simulator
        if not any(a.venue == venue for a in accounts):
            start = text.index(f"[venues.{venue}]")
            end = text.find("[venues.", start + 1)
            text = text[:start] + (text[end:] if end >= 0 else "")
    cluster = SimCluster.from_toml(text, f"<scale {n}>")
    await cluster.start()
    venues = Venues.of(cluster)  # and its request logs stamped on arrival
    workdir = Path(tempfile.mkdtemp(prefix=f"ks-scale-{n}-"))
    daemon = Daemon(workdir, accounts)
    failed = True
    try:
        loads = seed(venues, spec, accounts)
        config = workdir / "killswitch.toml"
        config.write_text(daemon_toml(workdir, accounts, cluster))
        started = time.monotonic()
        ready_s = await daemon.start(config)
        ready_at = time.monotonic()
        # what each venue was asked before READY=1, and when its last such request arrived
        startup = {
            venue: {
                "requests": sum(
                    1 for e in sim.request_log if started <= e.get("mono", 0.0) <= ready_at
                ),
                "last_s": max(
                    (
                        e["mono"] - started
                        for e in sim.request_log
                        if e.get("mono", 0.0) <= ready_at
                    ),
                    default=0.0,
                ),
            }
            for venue, sim in cluster.venues.items()
        }
        await daemon.wait_tracking(venues, timeout_s=120.0)
        tracking_s = time.monotonic() - started
        assert daemon.proc is not None
        rss_idle, _ = daemon.rss_mb()
        # idle: streams open, nothing to do
        cpu0, t0 = cpu_s(daemon.proc.pid), time.monotonic()
        await asyncio.sleep(args.idle_s)
        idle_pct = (cpu_s(daemon.proc.pid) - cpu0) / (time.monotonic() - t0) * 100
        # the kill
        bound = lower_bound(loads, capabilities(), args.rtt_ms / 1000.0)
        for sim in cluster.venues.values():
            sim.reset_limits()
        kill_id = f"scale-{n}-{secrets.token_hex(3)}"
        sent_mono = time.monotonic()
        sent_ms = int(time.time() * 1000)
        answer = await daemon.control(
            {"op": "fire", "reason": "scale bench", "id": kill_id, "cancel_only": False}
        )
        if not answer.get("ok"):
            raise RuntimeError(f"fire refused: {answer}")
        flat = await daemon.wait_event("flat", kill_id, 120.0)
        ttf_ms = float(flat["mono_ms"]) - sent_mono * 1000
        await daemon.control(
            {"op": "wait", "trigger_id": kill_id, "until": "confirmed", "timeout_s": 60},
            timeout_s=90.0,
        )
        left = sum(
            len(sim.book(a).orders)
            for sim in cluster.venues.values()
            for a in sim.accounts.values()
        )
        if left:
            raise RuntimeError(f"flat reported but the books hold {left} orders")
        rss, peak = daemon.rss_mb()
        entries = [
            (venue, e)
            for venue, sim in cluster.venues.items()
            for e in sim.request_log
            if e.get("mono", 0.0) >= sent_mono
        ]
        stages, per_account, timeline = breakdown(
            daemon.kill_records(kill_id), entries, sent_mono * 1000, sent_ms, args.rtt_ms
        )
        throttled = dict.fromkeys(("429", "418", "100410"), 0)
        for sim in cluster.venues.values():
            for kind, count in throttle_counts(sim).items():
                throttled[kind] += count
        failed = False
        return {
            "accounts": n,
            "orders": sum(a.orders for a in loads),
            "ready_s": ready_s,
            "tracking_s": tracking_s,
            "rss_idle_mb": rss_idle,
            "rss_mb": rss,
            "peak_rss_mb": peak,
            "idle_cpu_pct": idle_pct,
            "idle_cpu_pct_per_account": idle_pct / n,
            "ttf_ms": ttf_ms,
            "bound_ms": bound.ms,
            "ratio": ttf_ms / bound.ms,
            "throttled": throttled,
            "stages": stages,
            "rounds": {a: v["rounds"] for a, v in per_account.items()},
            "startup": startup,
            "venues": {
                venue: {
                    "accounts": sum(1 for a in per_account if a.startswith(venue + "/")),
                    "flat_ms": max(
                        v["flat"] for a, v in per_account.items() if a.startswith(venue + "/")
                    ),
                    "rounds": max(
                        len(v["rounds"])
                        for a, v in per_account.items()
                        if a.startswith(venue + "/")
                    ),
                }
                for venue in VENUES
                if any(a.startswith(venue + "/") for a in per_account)
            },
            "timeline": timeline,
        }
    finally:
        await daemon.stop()
        await cluster.stop()
        if failed or args.keep:
            print(f"  [{n}] work directory kept: {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def growth(rows: Sequence[dict[str, Any]], key: str) -> str:
    """How `key` grows from the second-largest size to the largest: the exponent, in words."""
    if len(rows) < 2:
        return "n/a"
    a, b = rows[-2], rows[-1]
    if a[key] <= 0 or b[key] <= 0:
        return "n/a"
    k = math.log(b[key] / a[key]) / math.log(b["accounts"] / a["accounts"])
    word = "flat" if k < 0.2 else "sub-linear" if k < 0.8 else "linear" if k < 1.2 else "worse"
    return f"{word} (x{b[key] / a[key]:.1f} for x{b['accounts'] / a['accounts']:.0f} accounts)"


def report(rows: Sequence[dict[str, Any]], args: argparse.Namespace) -> str:
    head = (
        f"{'accounts':>8}{'orders':>8}{'TTF':>9}{'bound':>8}{'ratio':>7}{'READY':>8}"
        f"{'tracking':>10}{'RSS idle':>10}{'RSS peak':>10}{'idle CPU':>10}{'/account':>10}"
        f"{'429/418/100410':>16}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['accounts']:>8}{r['orders']:>8}{r['ttf_ms']:>7.0f}ms{r['bound_ms']:>6.0f}ms"
            f"{r['ratio']:>6.2f}x{r['ready_s']:>7.1f}s{r['tracking_s']:>9.1f}s"
            f"{r['rss_idle_mb']:>8.0f}MB{r['peak_rss_mb']:>8.0f}MB{r['idle_cpu_pct']:>9.1f}%"
            f"{r['idle_cpu_pct_per_account']:>9.2f}%"
            f"{'/'.join(str(r['throttled'][k]) for k in ('429', '418', '100410')):>16}"
        )
    lines.append("")
    lines.append("critical path of each kill (ms from the fire; see bench/time_to_flat.py):")
    names = [name for name, _ in STAGES if name != "consumed"]
    lines.append(f"  {'accounts':>8}" + "".join(f"{name:>14}" for name in names))
    for r in rows:
        lines.append(
            f"  {r['accounts']:>8}"
            + "".join(f"{r['stages'].get(name, float('nan')):>14.1f}" for name in names)
        )
    lines.append("")
    lines.append(
        "per venue: the last account proved flat (ms) and its rounds on the wire; what the venue "
        "was asked before READY=1 and when its last such request arrived:"
    )
    for r in rows:
        parts = []
        for venue, v in r["venues"].items():
            st = r["startup"].get(venue, {"requests": 0, "last_s": 0.0})
            parts.append(
                f"{venue} x{v['accounts']}: flat {v['flat_ms']:.0f} ms, {v['rounds']} rounds, "
                f"start {st['requests']} requests until {st['last_s']:.1f} s"
            )
        lines.append(f"  {r['accounts']:>3}: " + "; ".join(parts))
    big = rows[-1]
    lines.append("")
    lines.append(f"targets at {big['accounts']} accounts:")
    checks = [
        ("time to flat", "ratio", f"{big['ratio']:.2f}x the bound", "x", "ttf_ms"),
        ("daemon RSS", "rss_mb", f"{big['peak_rss_mb']:.0f} MB peak", " MB", "peak_rss_mb"),
        (
            "idle CPU per account",
            "idle_cpu_pct_per_account",
            f"{big['idle_cpu_pct_per_account']:.2f}% of a core ({big['idle_cpu_pct']:.1f}% in all)",
            "%",
            "idle_cpu_pct",
        ),
        ("time to READY", "ready_s", f"{big['ready_s']:.1f} s", " s", "ready_s"),
    ]
    for label, key, shown, unit, grows in checks:
        value = big["peak_rss_mb"] if key == "rss_mb" else big[key]
        ok = value <= TARGETS[key]
        lines.append(
            f"  {label}: {shown}, target <= {TARGETS[key]:g}{unit}: "
            f"{'met' if ok else 'MISSED'}; grows {growth(rows, grows)}"
        )
    lines.append(
        f"  (streams live with trackers caught up after {big['tracking_s']:.1f} s; "
        "the bound grows only where accounts share a per-IP budget: BingX)"
    )
    lines.append(f"R = {args.rtt_ms:.0f} ms; idle window {args.idle_s:.0f} s; {machine()}")
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> int:
    sizes = [int(x) for x in args.sizes.split(",")]
    print(
        f"scale bench: {sizes} accounts, {SYMBOLS} symbols x {PER_SYMBOL} orders each", flush=True
    )
    rows = []
    for n in sizes:
        row = await one_size(n, args)
        rows.append(row)
        print(
            f"  [{n}] READY {row['ready_s']:.1f} s, tracking {row['tracking_s']:.1f} s, "
            f"idle CPU {row['idle_cpu_pct']:.1f}%, time to flat {row['ttf_ms']:.0f} ms "
            f"({row['ratio']:.2f}x), RSS peak {row['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    text = report(rows, args)
    print()
    print(text)
    if args.json:
        await asyncio.to_thread(
            Path(args.json).write_bytes,
            orjson.dumps(
                {"machine": machine(), "rtt_ms": args.rtt_ms, "rows": rows, "report": text},
                option=orjson.OPT_INDENT_2,
            ),
        )
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,4,16,64")
    parser.add_argument("--idle-s", type=float, default=8.0, help="idle CPU window (> 5 s)")
    parser.add_argument("--rtt-ms", type=float, default=30.0)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the work directories")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
