"""`killswitch preflight`: is every account ready to be killed, before the emergency?"""

from __future__ import annotations

import argparse
import asyncio
import sys

import orjson

from killswitch.cli.parsers import Command, add_daemon_paths, load_or_report
from killswitch.config import config_path
from killswitch.logs import setup_logging
from killswitch.preflight import (
    EXIT_CODES_HELP,
    EXIT_CONFIG,
    EXIT_NOT_READY,
    EXIT_READY,
    _daemon_dms,
    render,
    run_preflight,
)
from killswitch.readiness.checks import redact


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `killswitch preflight`'s arguments."""
    add_daemon_paths(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--timeout", type=float, default=15.0, help="seconds per account (default 15)"
    )


def cmd_preflight(args: argparse.Namespace) -> int:
    setup_logging("WARNING", "text")
    settings = load_or_report(args.config)
    if settings is None:
        return EXIT_CONFIG
    secrets = settings.secret_values()
    setup_logging("WARNING", "text", secrets)
    daemon_dms = _daemon_dms(args.config, settings)
    results = asyncio.run(run_preflight(settings, timeout_s=args.timeout, daemon_dms=daemon_dms))
    if args.json:
        data = {
            "ready": all(r.ready for r in results),
            "config": str(config_path(args.config)),
            "accounts": [r.to_json() for r in results],
        }
        text = orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n"
    else:
        text = render(results)
    sys.stdout.write(redact(text, secrets))
    return EXIT_READY if all(r.ready for r in results) else EXIT_NOT_READY


COMMAND = Command(
    "preflight",
    cmd_preflight,
    add_arguments,
    help="check every account online: key, permissions, clock, stream, rate limits",
    description="Check every configured account against its venue, in parallel: the key "
    "is accepted (a signed read), may trade and cancel, the clock is inside recvWindow, "
    "the user stream subscribes, the rate-limit headroom, and on BingX the dead-man's "
    "switch. One row per account: OK or the venue's reason. Secrets are never printed.",
    epilog=EXIT_CODES_HELP,
)
