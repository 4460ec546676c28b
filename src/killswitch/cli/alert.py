"""`killswitch alert`: publish one alert to the alerts topic, as a risk engine would."""

from __future__ import annotations

import argparse
import asyncio
import sys

import orjson

from killswitch.cli.parsers import Command, add_daemon_paths, add_scope_arguments, load_or_report
from killswitch.kafka.publisher import (
    EXIT_CODES_HELP,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    AlertRefused,
    PublishFailed,
    as_seen,
    build_alert,
    encode,
    publish,
    render,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `killswitch alert`'s arguments."""
    add_daemon_paths(parser)
    parser.add_argument("--action", required=True, choices=("kill", "cancel", "heartbeat", "reset"))
    add_scope_arguments(parser)
    parser.add_argument("--reason", default=None, help="why (required but for a heartbeat)")
    parser.add_argument(
        "--source", default=None, help="the producer's name (default killswitch-cli/USER@HOST)"
    )
    parser.add_argument("--id", default=None, help="the alert id (default a fresh one)")
    parser.add_argument("--severity", choices=("info", "warning", "critical"), default="critical")
    parser.add_argument("--ttl-ms", type=int, default=None, help="the alert's own ttl_ms")
    parser.add_argument(
        "--timeout", type=float, default=15.0, help="seconds to wait for the broker (default 15)"
    )
    parser.add_argument("--json", action="store_true", help="print the record as JSON")


def cmd_alert(args: argparse.Namespace) -> int:
    settings = load_or_report(args.config)
    if settings is None:
        return EXIT_USAGE
    try:
        alert = build_alert(args, settings)
    except AlertRefused as exc:
        sys.stderr.write(f"killswitch alert refused: {exc}; nothing was published\n")
        return EXIT_USAGE
    value, headers = encode(alert, settings)
    try:
        meta = asyncio.run(publish(settings, value, headers, key=alert.id, timeout_s=args.timeout))
    except PublishFailed as exc:
        sys.stderr.write(f"killswitch alert: NOT published: {exc}\n")
        return EXIT_FAILED
    record = as_seen(settings, value, headers, meta)
    if args.json:
        sys.stdout.write(orjson.dumps(record, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(render(record))
    return EXIT_OK


COMMAND = Command(
    "alert",
    cmd_alert,
    add_arguments,
    help="publish one (signed) risk alert to the configured alerts topic",
    description="Publish one alert to kafka.alerts_topic, signed with kafka.alert_hmac_key "
    "when one is configured, and print the record as the daemon will see it.",
    epilog=EXIT_CODES_HELP,
)
