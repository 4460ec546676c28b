"""`killswitch demo`: a drill against the built-in simulator."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from killswitch.cli.parsers import Command
from killswitch.control_client import ControlUnreachable
from killswitch.drill.demo import BASES, DrillError, Workload, render, run_drill


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `killswitch demo`'s arguments."""
    parser.add_argument("--accounts", type=int, default=2, help="accounts per venue")
    parser.add_argument(
        "--symbols", type=int, default=len(BASES), help=f"symbols per venue (max {len(BASES)})"
    )
    parser.add_argument("--orders-per-symbol", type=int, default=8)
    parser.add_argument("--latency-ms", type=float, default=30.0, help="simulated round trip")
    parser.add_argument("--rogue-rate", type=float, default=5.0, help="rogue orders per second")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")


@contextlib.contextmanager
def _workdir(keep: bool) -> Iterator[Path]:
    # Unix socket paths are limited to ~108 bytes: keep the directory short.
    path = Path(tempfile.mkdtemp(prefix="ks-demo-"))
    try:
        yield path
    finally:
        if keep:
            sys.stdout.write(f"work directory kept: {path}\n")
        else:
            shutil.rmtree(path, ignore_errors=True)


def cmd_demo(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="demo: %(levelname)s %(message)s")
    workload = Workload(
        accounts_per_venue=max(1, args.accounts),
        symbols_per_venue=max(1, min(len(BASES), args.symbols)),
        orders_per_symbol=max(1, args.orders_per_symbol),
        latency_ms=max(0.0, args.latency_ms),
        jitter_ms=min(5.0, args.latency_ms / 4),
    )
    with _workdir(args.keep) as workdir:
        try:
            result = asyncio.run(run_drill(workdir, workload, rogue_rate_per_s=args.rogue_rate))
        except (DrillError, ControlUnreachable) as exc:
            sys.stdout.write(f"killswitch demo: FAIL: {exc}\n")
            log_path = workdir / "daemon.log"
            if log_path.exists():
                sys.stdout.write(log_path.read_text()[-4000:])
            return 1
        sys.stdout.write(render(result))
        return 0 if result.ok else 1


COMMAND = Command("demo", cmd_demo, add_arguments, help="a full kill drill against the simulator")
