"""`killswitch fire`, `status` and `reset`: ask the running daemon over its control socket."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

import orjson

from killswitch.cli.parsers import Command, add_daemon_paths, add_scope_arguments
from killswitch.control_client import (
    EXIT_CODES_HELP,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_RUNNING,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    ControlUnreachable,
    exit_code,
    format_kill,
    format_status,
    request,
    socket_path,
)


def add_fire_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `killswitch fire`'s arguments."""
    add_daemon_paths(parser, socket=True)
    add_scope_arguments(parser)
    parser.add_argument("--reason", required=True, help="why (goes to the audit log)")
    parser.add_argument("--cancel-only", action="store_true", help="cancel once, do not latch")
    parser.add_argument(
        "--no-wait", action="store_true", help="return once the kill is accepted (exit 4)"
    )
    parser.add_argument(
        "--timeout", type=_positive, default=120.0, help="seconds to wait for flat (default 120)"
    )
    parser.add_argument("--json", action="store_true", help="print the raw answer")


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `killswitch status`'s arguments."""
    add_daemon_paths(parser, socket=True)
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def add_reset_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `killswitch reset`'s arguments."""
    add_daemon_paths(parser, socket=True)
    parser.add_argument("--reason", required=True, help="why (goes to the audit log)")
    parser.add_argument(
        "--trigger",
        action="append",
        dest="trigger_ids",
        default=None,
        metavar="ID",
        help="release only this trigger's latch (repeatable; default: every latch)",
    )


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def _call(
    args: argparse.Namespace, payload: dict[str, Any], timeout_s: float = 10.0
) -> dict[str, Any] | None:
    path = socket_path(args.config, args.socket)
    try:
        return request(path, payload, timeout_s=timeout_s)
    except ControlUnreachable as exc:
        sys.stderr.write(f"killswitch: cannot reach the daemon: {exc}\n")
        return None


def cmd_fire(args: argparse.Namespace) -> int:
    payload: dict[str, Any] = {
        "op": "fire",
        "venues": args.venue,
        "accounts": args.account,
        "symbols": args.symbol,
        "prefix": args.prefix,
        "reason": args.reason,
        "cancel_only": args.cancel_only,
        "actor": getpass.getuser(),
    }
    if not args.no_wait:
        payload |= {"wait": "done", "timeout_s": args.timeout}
    answer = _call(args, payload, timeout_s=(10.0 if args.no_wait else args.timeout + 10.0))
    if answer is None:
        return EXIT_UNREACHABLE
    code = exit_code(answer)
    if args.json:
        sys.stdout.write(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif "trigger_id" not in answer:
        verb = "refused" if code == EXIT_USAGE else "failed"
        sys.stderr.write(f"killswitch fire {verb}: {answer.get('error')}\n")
    else:
        sys.stdout.write(
            f"{answer['result']} trigger {answer['trigger_id']} mode {answer['mode']} "
            f"by {answer['actor']}\n"
        )
        kill = answer.get("kill")
        if isinstance(kill, dict):
            sys.stdout.write(format_kill(kill) + "\n")
        if answer.get("warning"):
            sys.stderr.write(f"killswitch fire: warning: {answer['warning']}\n")
    if code == EXIT_RUNNING and not args.json:
        waited = "not waited for (--no-wait)" if args.no_wait else f"not flat after {args.timeout}s"
        sys.stderr.write(
            f"killswitch fire: still running, {waited}; `killswitch status` shows progress\n"
        )
    elif code == EXIT_FAILED and "trigger_id" in answer and not args.json:
        sys.stderr.write(f"killswitch fire: NOT flat: the kill is {answer.get('outcome')}\n")
    return code


def cmd_status(args: argparse.Namespace) -> int:
    answer = _call(args, {"op": "status"})
    if answer is None:
        return EXIT_UNREACHABLE
    if args.json:
        sys.stdout.write(
            orjson.dumps(answer.get("status", answer), option=orjson.OPT_INDENT_2).decode() + "\n"
        )
    elif not answer.get("ok"):
        sys.stderr.write(f"killswitch status: {answer.get('error')}\n")
    else:
        sys.stdout.write(format_status(answer["status"]))
    return EXIT_OK if answer.get("ok") else EXIT_FAILED


def cmd_reset(args: argparse.Namespace) -> int:
    payload: dict[str, Any] = {"op": "reset", "reason": args.reason, "actor": getpass.getuser()}
    if args.trigger_ids:
        payload["trigger_ids"] = args.trigger_ids
    answer = _call(args, payload)
    if answer is None:
        return EXIT_UNREACHABLE
    if not answer.get("ok"):
        sys.stderr.write(f"killswitch reset refused: {answer.get('error')}\n")
        return exit_code(answer)
    what = "latch released" if answer.get("was_latched") else "was not latched"
    sys.stdout.write(f"{what}; reset by {answer.get('actor')} recorded in the audit log\n")
    not_latched = answer.get("not_latched")
    if not_latched:
        sys.stderr.write(f"killswitch reset: no latch was held by {', '.join(not_latched)}\n")
    return EXIT_OK


COMMANDS = (
    Command(
        "fire",
        cmd_fire,
        add_fire_arguments,
        help="cancel now and latch (a kill) over the control socket",
        description="Cancel every open order in scope now and latch the scope (a kill), or "
        "cancel once (--cancel-only), then wait until the venues show nothing open.",
        epilog=EXIT_CODES_HELP,
    ),
    Command(
        "status",
        cmd_status,
        add_status_arguments,
        help="latch, streams, open orders, last kill",
        epilog="exit codes: 0 answered, 1 the daemon could not answer, 3 unreachable",
    ),
    Command(
        "reset",
        cmd_reset,
        add_reset_arguments,
        help="release the latch (audited)",
        epilog="exit codes: 0 reset recorded, 1 failed, 2 refused, 3 unreachable",
    ),
)
