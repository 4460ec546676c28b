"""`killswitch sim --config PATH`: serve the simulated venues of a sim TOML file until stopped.

When every venue is serving, it prints one JSON line per venue to stdout
(`{"venue", "rest_url", "ws_url", "accounts": [...], ...}`) and nothing else there; logs go to
stderr. SIGINT or SIGTERM stops it cleanly (exit 0). Also runnable as
`python -m killswitch.sim.cli --config PATH`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson

from killswitch.logs import LOG_LEVELS, setup_logging

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2  # same as the daemon's: the config cannot be used


def add_config_and_log_level(
    parser: argparse.ArgumentParser, *, config_help: str, log_level_help: str, required: bool
) -> None:
    """Add `--config PATH` and `--log-level` (None when not given): a command reading a TOML file.

    The `killswitch` commands that read the daemon's config add theirs here too.
    """
    parser.add_argument(
        "--config", type=Path, required=required, default=None, metavar="PATH", help=config_help
    )
    parser.add_argument(
        "--log-level", type=str.upper, choices=LOG_LEVELS, default=None, help=log_level_help
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `sim` command's arguments to `parser`."""
    add_config_and_log_level(
        parser,
        config_help="sim TOML file (example: src/killswitch/sim/example.toml)",
        log_level_help="log level (default INFO; logs go to stderr)",
        required=True,
    )


async def run_sim(args: argparse.Namespace) -> int:
    """Serve the venues of `args.config` until SIGINT/SIGTERM; return the exit code."""
    # Imported here so that building the `killswitch` parser does not load the simulator.
    from killswitch.sim.server import SimCluster, SimConfigError

    level = args.log_level or "INFO"
    setup_logging(level, "auto", stream=sys.stderr)
    try:
        cluster = SimCluster.from_file(args.config)
    except SimConfigError as exc:
        for line in exc.errors:
            sys.stderr.write(f"{exc.source}: {line}\n")
        return EXIT_CONFIG
    setup_logging(level, "auto", cluster.secrets(), stream=sys.stderr)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: signal.Signals) -> None:
        if stopping.is_set():
            log.warning("sim already stopping signal=%s", signum.name)
            return
        log.info("sim stopping signal=%s", signum.name)
        stopping.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        try:
            await cluster.start()
        except OSError as exc:
            log.error("sim cannot serve error=%s", exc)
            return EXIT_FAILED
        try:
            for venue in cluster.describe():
                sys.stdout.write(orjson.dumps(venue).decode() + "\n")
            sys.stdout.flush()
            log.info("sim ready venues=%s", ",".join(cluster.venues))
            await stopping.wait()
        finally:
            await cluster.stop()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    log.info("sim stopped")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m killswitch.sim.cli --config PATH`."""
    parser = argparse.ArgumentParser(prog="killswitch sim", description=__doc__)
    add_arguments(parser)
    return asyncio.run(run_sim(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
