"""`killswitch sim`: serve simulated venues on loopback for drills."""

from __future__ import annotations

import argparse
import asyncio

from killswitch.cli.parsers import Command
from killswitch.sim.cli import add_arguments, run_sim


def cmd_sim(args: argparse.Namespace) -> int:
    """Run `killswitch sim` to completion; return the exit code."""
    return asyncio.run(run_sim(args))


COMMAND = Command(
    "sim",
    cmd_sim,
    add_arguments,
    help="serve simulated Binance/MEXC/BingX spot venues on loopback (drills, tests)",
    description=__doc__,
)
