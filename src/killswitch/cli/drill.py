"""`killswitch drill --live`: the regular test of the kill on the real venue."""

from __future__ import annotations

import argparse
import asyncio
import sys
from decimal import Decimal

from killswitch.cli.parsers import Command, add_daemon_paths, load_or_report
from killswitch.control_client import ControlUnreachable, socket_path
from killswitch.drill.live import (
    EXIT_CODES_HELP,
    EXIT_FAILED,
    EXIT_PASSED,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    Drill,
    render,
)
from killswitch.drill.venue import DrillFailed, DrillRefused
from killswitch.logs import setup_logging
from killswitch.readiness.checks import redact


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `killswitch drill`'s arguments."""
    parser.add_argument("--live", action="store_true", help="required: this trades on the venue")
    parser.add_argument("--venue", required=True, choices=("binance", "mexc", "bingx"))
    parser.add_argument("--account", required=True)
    parser.add_argument(
        "--symbol", required=True, help="as the venue writes it (BTC-USDT on BingX)"
    )
    parser.add_argument("--yes", action="store_true", help="required: yes, place a real order")
    parser.add_argument(
        "--price", type=Decimal, default=None, help="limit price (default: 80%% of the best bid)"
    )
    parser.add_argument(
        "--quantity", type=Decimal, default=None, help="default: the venue's minimum"
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds for the kill (default 60)"
    )
    add_daemon_paths(parser, socket=True)


def cmd_drill(args: argparse.Namespace) -> int:
    setup_logging("WARNING", "text")
    if not args.live:
        sys.stderr.write(
            "killswitch drill refused: only live drills exist (--live); "
            "`killswitch demo` drills against the simulator\n"
        )
        return EXIT_REFUSED
    if not args.yes:
        sys.stderr.write(
            f"killswitch drill refused: this places a real order on {args.venue}/{args.account} "
            f"{args.symbol} and kills it; add --yes\n"
        )
        return EXIT_REFUSED
    settings = load_or_report(args.config)
    if settings is None:
        return EXIT_REFUSED
    secrets_ = settings.secret_values()
    setup_logging("WARNING", "text", secrets_)
    try:
        account = settings.account(args.venue, args.account)
    except KeyError:
        configured = ", ".join(a.label for a in settings.accounts)
        sys.stderr.write(
            f"killswitch drill refused: no account {args.venue}/{args.account} in the config "
            f"(configured: {configured})\n"
        )
        return EXIT_REFUSED
    drill = Drill(
        settings,
        account,
        args.symbol,
        socket=socket_path(args.config, args.socket),
        price=args.price,
        quantity=args.quantity,
        timeout_s=args.timeout,
    )
    code = EXIT_PASSED
    error = ""
    try:
        report = asyncio.run(drill.run())
    except DrillRefused as exc:
        sys.stderr.write(redact(f"killswitch drill refused: {exc}\n", secrets_))
        return EXIT_REFUSED
    except ControlUnreachable as exc:
        sys.stderr.write(f"killswitch drill: the daemon's socket may not be used: {exc}\n")
        return EXIT_UNREACHABLE
    except DrillFailed as exc:
        report, error, code = drill.report, str(exc), EXIT_FAILED
    sys.stdout.write(redact(render(report, error), secrets_))
    if code == EXIT_PASSED and not report.passed:
        code = EXIT_FAILED
    return code


COMMAND = Command(
    "drill",
    cmd_drill,
    add_arguments,
    help="a live drill on a real venue: one post-only order, killed by prefix",
    description="Place one minimum-size post-only order far from the market, kill it "
    "through the running daemon (or in-process when none runs) with a kill scoped to the "
    "drill's client-id prefix, prove it gone from the venue, release the drill's latch, "
    "and print time to first cancel and time to flat. Touches no other order.",
    epilog=EXIT_CODES_HELP,
)
