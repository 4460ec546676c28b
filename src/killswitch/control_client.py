"""`killswitch fire|status|reset`: talk to the running daemon over its control socket.

Every command here exits by one table (`EXIT_CODES_HELP`, printed by `fire --help` and kept in
the README): 0 only when a fire's kill is flat or confirmed, 1 failed, 2 refused or bad
arguments, 3 unreachable, 4 still running when the wait ended.
"""

from __future__ import annotations

import argparse
import getpass
import socket
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from killswitch.settings import ControlSettings, config_path

if TYPE_CHECKING:
    from killswitch.cli import Subparsers

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2  # argparse's own code for bad arguments; also a request the daemon refused
EXIT_UNREACHABLE = 3
EXIT_RUNNING = 4

EXIT_CODES_HELP = """\
exit codes:
  0  flat or confirmed: the venues showed nothing open in scope
  1  failed: the kill ended without proving flat (failed, or aborted by a reset),
     or the daemon could not carry the request out
  2  usage: bad arguments, or the daemon refused the request (unknown venue or
     account, bad field); nothing was fired
  3  unreachable: daemon not running, socket missing or not permitted, or no
     answer (then whether the fire was accepted is unknown: run `status`)
  4  still running when the wait ended (--timeout passed, or --no-wait)
"""


class ControlUnreachable(Exception):
    """The daemon's control socket cannot be reached, or gave no usable answer."""


def socket_path(config: Path | None, explicit: Path | None = None) -> Path:
    """The socket to use: `--socket`, else `control.socket_path` from the config file, else the
    default. The file is read raw: an operator's shell may lack the daemon's credentials."""
    if explicit is not None:
        return explicit
    path = config_path(config)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        data = {}
    control = data.get("control")
    if isinstance(control, dict) and control.get("socket_path"):
        return Path(str(control["socket_path"]))
    return ControlSettings().socket_path


def request(path: Path, payload: dict[str, Any], *, timeout_s: float = 10.0) -> dict[str, Any]:
    """Send one request line and return the answer."""
    sent = False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(str(path))
            sock.sendall(orjson.dumps(payload) + b"\n")
            sent = True
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
    except (FileNotFoundError, ConnectionRefusedError, PermissionError) as exc:
        raise ControlUnreachable(f"{path}: {exc.strerror or exc}") from exc
    except TimeoutError as exc:
        raise ControlUnreachable(f"{path}: no answer within {timeout_s}s{_sent(sent)}") from exc
    except OSError as exc:
        raise ControlUnreachable(f"{path}: {exc.strerror or exc}{_sent(sent)}") from exc
    if not buf:
        raise ControlUnreachable(f"{path}: connection closed without an answer{_sent(sent)}")
    try:
        answer = orjson.loads(buf)
    except orjson.JSONDecodeError as exc:
        raise ControlUnreachable(f"{path}: answer is not JSON{_sent(sent)}") from exc
    if not isinstance(answer, dict):
        raise ControlUnreachable(f"{path}: answer is not an object{_sent(sent)}")
    return answer


def _sent(sent: bool) -> str:
    return " (the request was sent: check `killswitch status`)" if sent else ""


def exit_code(answer: dict[str, Any]) -> int:
    """The exit code an answer earns (module docstring): 0 only for flat or confirmed."""
    outcome = answer.get("outcome")
    if outcome is None:
        if answer.get("ok") is True:
            return EXIT_OK
        return EXIT_USAGE if answer.get("refused") is True else EXIT_FAILED
    if answer.get("ok") is True and outcome in ("flat", "confirmed"):
        return EXIT_OK
    if outcome in ("failed", "aborted", "unknown"):
        return EXIT_FAILED
    if outcome == "running" or answer.get("timed_out") is True:
        return EXIT_RUNNING
    return EXIT_FAILED


# -- commands -------------------------------------------------------------------------------------


def add_parsers(subparsers: Subparsers) -> None:
    """Register `fire`, `status` and `reset`."""
    fire = subparsers.add_parser(
        "fire",
        help="cancel now and latch (a kill) over the control socket",
        description="Cancel every open order in scope now and latch the scope (a kill), or "
        "cancel once (--cancel-only), then wait until the venues show nothing open.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(fire)
    fire.add_argument("--venue", action="append", default=[], help="repeatable; default all")
    fire.add_argument("--account", action="append", default=[], help="repeatable; default all")
    fire.add_argument("--symbol", action="append", default=[], help="repeatable; default all")
    fire.add_argument("--prefix", default=None, help="client order id prefix (strategy, desk)")
    fire.add_argument("--reason", required=True, help="why (goes to the audit log)")
    fire.add_argument("--cancel-only", action="store_true", help="cancel once, do not latch")
    fire.add_argument(
        "--no-wait", action="store_true", help="return once the kill is accepted (exit 4)"
    )
    fire.add_argument(
        "--timeout", type=_positive, default=120.0, help="seconds to wait for flat (default 120)"
    )
    fire.add_argument("--json", action="store_true", help="print the raw answer")
    fire.set_defaults(func=cmd_fire)

    status = subparsers.add_parser(
        "status",
        help="latch, streams, open orders, last kill",
        epilog="exit codes: 0 answered, 1 the daemon could not answer, 3 unreachable",
    )
    _common(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)

    reset = subparsers.add_parser(
        "reset",
        help="release the latch (audited)",
        epilog="exit codes: 0 reset recorded, 1 failed, 2 refused, 3 unreachable",
    )
    _common(reset)
    reset.add_argument("--reason", required=True, help="why (goes to the audit log)")
    reset.add_argument(
        "--trigger",
        action="append",
        dest="trigger_ids",
        default=None,
        metavar="ID",
        help="release only this trigger's latch (repeatable; default: every latch)",
    )
    reset.set_defaults(func=cmd_reset)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, metavar="PATH", help="daemon config")
    parser.add_argument("--socket", type=Path, default=None, metavar="PATH", help="control socket")


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
    return EXIT_OK


# -- rendering ------------------------------------------------------------------------------------


def format_status(status: dict[str, Any]) -> str:
    """Render `Engine.status()` as a table a person can read at 3 a.m."""
    lines: list[str] = []
    latches = status.get("latches") or []
    if status.get("latched"):
        lines.append(f"LATCHED: {len(latches)} latch(es); new orders in scope are cancelled")
        for latch in latches:
            lines.append(f"  {latch['trigger_id']}: {describe_scope(latch['scope'])}")
    else:
        lines.append("not latched")
    lines.append("")
    header = (
        f"{'ACCOUNT':<24} {'READY':<5} {'STREAM':<11} {'ORDERS':>7} {'LISTS':>6} "
        f"{'TRACKER':<9} {'DMS':<8} REASON"
    )
    lines.append(header)
    unready = 0
    for entry in status.get("accounts") or []:
        account = f"{entry['venue']}/{entry['account']}"
        orders = entry.get("open_orders", "-")
        lists = entry.get("open_lists", "-")
        trusted = entry.get("tracker_trusted")
        tracker = "-" if trusted is None else ("trusted" if trusted else "UNTRUSTED")
        ready = entry.get("ready")
        unready += ready is False
        flag = "-" if ready is None else ("yes" if ready else "NO")
        lines.append(
            f"{account:<24} {flag:<5} {entry.get('stream', '?'):<11} {orders!s:>7} "
            f"{lists!s:>6} {tracker:<9} {entry.get('dead_mans_switch', 'off')!s:<8} "
            f"{entry.get('reason') or '-'}"
        )
    if unready:
        lines.append(
            f"{unready} account(s) NOT READY: a kill still tries them; the daemon checks "
            "again every few minutes, `killswitch preflight` checks now"
        )
    running = status.get("running") or []
    for kill in running:
        lines.append("")
        lines.append(f"running: {kill['kill_id']} ({kill['kind']}) state {kill['state']}")
    last = status.get("last_kill")
    lines.append("")
    if isinstance(last, dict):
        summary = last.get("summary", last)
        lines.append("last kill: " + format_kill(summary).replace("\n", "\n  "))
    else:
        lines.append("last kill: none")
    return "\n".join(lines) + "\n"


def format_kill(kill: dict[str, Any]) -> str:
    """One kill's summary: state, times, and per account before/after."""
    lines = [
        f"{kill.get('kill_id')} {str(kill.get('state', '?')).upper()} "
        f"time to first cancel {_ms(kill.get('time_to_first_cancel_ms'))}, "
        f"time to flat {_ms(kill.get('time_to_flat_ms'))}"
    ]
    for acc in kill.get("accounts") or []:
        still = acc.get("still_open") or {}
        left = len(still.get("orders") or []) + len(still.get("lists") or [])
        lines.append(
            f"  {acc['venue']}/{acc['account']}: {acc['state']}, before {acc['orders_before']} "
            f"orders {acc['lists_before']} lists, cancelled {acc['cancelled']}, "
            f"left {left}, requests {acc['requests']}, retries {acc['retries']}"
        )
        for order in (still.get("orders") or [])[:10]:
            lines.append(
                f"    still open: {order['symbol']} {order['order_id']} {order['client_order_id']}"
            )
    return "\n".join(lines)


def describe_scope(scope: dict[str, Any]) -> str:
    parts = [
        f"{key}={','.join(scope[key])}"
        for key in ("venues", "accounts", "symbols")
        if scope.get(key)
    ]
    if scope.get("client_order_id_prefix"):
        parts.append(f"prefix={scope['client_order_id_prefix']}")
    return " ".join(parts) or "everything"


def _ms(value: object) -> str:
    return f"{value:.0f} ms" if isinstance(value, int | float) else "-"
