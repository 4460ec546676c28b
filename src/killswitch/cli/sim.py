"""`killswitch sim`: serve simulated venues on loopback for drills."""

from __future__ import annotations

import argparse
import asyncio

from killswitch.cli.parsers import Subparsers
from killswitch.sim.cli import add_arguments, run_sim


def add_parser(subparsers: Subparsers) -> None:
    """Register `killswitch sim`."""
    parser = subparsers.add_parser(
        "sim",
        help="serve simulated Binance/MEXC/BingX spot venues on loopback (drills, tests)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=cmd_sim)


def cmd_sim(args: argparse.Namespace) -> int:
    """Run `killswitch sim` to completion; return the exit code."""
    return asyncio.run(run_sim(args))
