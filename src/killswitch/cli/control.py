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

# A kill accepted and running (or flat) here whose latch is not on the latch topic yet: only
# this host holds it (review 88). Above the other codes: scripts test for 0, 1-4 as before.
EXIT_NOT_REPLICATED = 5
FIRE_EXIT_CODES_HELP = (
    EXIT_CODES_HELP
    + """\
  5  not replicated: the kill was accepted and runs here (or is flat here), but
     with replicas sharing the latch its record is not on the latch topic yet:
     if this host dies now, no other replica knows of the kill
"""
)
# How much longer than its own wait a fire's answer may take: with a shared latch the daemon
# answers once the latch record is on the topic, or after the replicator's bound (10 s).
REPLICATION_ALLOWANCE_S = 20.0


def add_fire_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `killswitch fire`'s arguments."""
    add_daemon_paths(parser, socket=True)
    add_scope_arguments(parser)
    parser.add_argument("--reason", required=True, help="why (goes to the audit log)")
    parser.add_argument("--cancel-only", action="store_true", help="cancel once, do not latch")
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="return once the kill is accepted (exit 4; with a shared latch, once its latch "
        "record is on the latch topic or after up to 10 s more: exit 5 if it is not)",
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
    answer = _call(
        args,
        payload,
        timeout_s=(0.0 if args.no_wait else args.timeout) + 10.0 + REPLICATION_ALLOWANCE_S,
    )
    if answer is None:
        return EXIT_UNREACHABLE
    code = exit_code(answer)  # the kill's; a latch only this host holds is said apart
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
        if answer.get("replicated") is False:
            # (review 92: the daemon's reason opens with what this line says already)
            why = str(answer.get("not_replicated")).removeprefix("not on the latch topic ")
            sys.stderr.write(
                "killswitch fire: warning: NOT REPLICATED: the kill runs on this daemon, but "
                f"its latch is not on the latch topic ({why}); if "
                "this host dies now, no other replica knows of it. `killswitch status` lists "
                "it until it is published; fire on another replica too to be sure\n"
            )
    if code == EXIT_RUNNING and not args.json:
        waited = "not waited for (--no-wait)" if args.no_wait else f"not flat after {args.timeout}s"
        sys.stderr.write(
            f"killswitch fire: still running, {waited}; `killswitch status` shows progress\n"
        )
    elif code == EXIT_FAILED and "trigger_id" in answer and not args.json:
        sys.stderr.write(f"killswitch fire: NOT flat: the kill is {answer.get('outcome')}\n")
    return fire_exit_code(answer)


def fire_exit_code(answer: dict[str, Any]) -> int:
    """`exit_code`, except 5 for a kill accepted (running or flat) whose latch is not on the
    shared latch topic: a failure or a refusal says more, and keeps its code."""
    code = exit_code(answer)
    if answer.get("replicated") is False and code in (EXIT_OK, EXIT_RUNNING):
        return EXIT_NOT_REPLICATED
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
        sys.stdout.write(_latch_topic_lines(answer["status"].get("latch_topic")))
    return EXIT_OK if answer.get("ok") else EXIT_FAILED


def _latch_topic_lines(topic: object) -> str:
    """The latches only this replica holds (not on the shared latch topic), if any."""
    if not isinstance(topic, dict):
        return ""  # the latch is not shared
    missing = topic.get("not_on_topic") or []
    if not missing:
        return ""
    if not topic.get("connected"):
        why = f"latch topic not connected: {topic.get('error') or 'connecting'}"
    elif not topic.get("synced"):
        why = "latch topic not read yet"
    else:
        why = "not published yet"
    return (
        f"\nNOT REPLICATED: {len(missing)} latch(es) held here are not on the latch topic "
        f"({why}): if this host dies, no other replica knows of them\n"
        + "".join(f"  {trigger_id}\n" for trigger_id in missing)
    )


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
        epilog=FIRE_EXIT_CODES_HELP,
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
