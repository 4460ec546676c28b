"""`killswitch fire|status|reset`: talk to the running daemon over its control socket.

Every command here exits by one table (`EXIT_CODES_HELP`, printed by `fire --help` and kept in
the README): 0 only when a fire's kill is flat or confirmed, 1 failed, 2 refused or bad
arguments, 3 unreachable, 4 still running when the wait ended.
"""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path
from typing import Any

import orjson

from killswitch.config import config_path
from killswitch.model import json_object
from killswitch.settings import ControlSettings

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
    return json_object(
        buf, lambda wrong: ControlUnreachable(f"{path}: bad answer, {wrong}{_sent(sent)}")
    )


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


# Free space in the state directory below which `status` warns (the journal compacts at 8 MiB,
# and a compaction writes a copy beside it).
LOW_FREE_BYTES = 64 * 2**20


def format_status(status: dict[str, Any]) -> str:
    """Render `Engine.status()` as a table a person can read at 3 a.m."""
    lines: list[str] = []
    failing = status.get("journal_failing")
    if failing:
        lines.append(
            f"JOURNAL UNWRITABLE ({failing}): no kill can be accepted until it writes again; "
            "free space in the state directory"
        )
    free = status.get("journal_free_bytes")
    if isinstance(free, int) and free < LOW_FREE_BYTES:
        lines.append(
            f"state directory low on space: {free // 2**20} MiB free; the journal needs room "
            "to accept kills"
        )
    latches = status.get("latches") or []
    if status.get("latched"):
        # (review 92: the NOT REPLICATED list comes last, after any unresolved kills: say it here)
        topic = status.get("latch_topic")
        alone = len(topic.get("not_on_topic") or []) if isinstance(topic, dict) else 0
        note = f", {alone} NOT REPLICATED (listed below)" if alone else ""
        lines.append(f"LATCHED: {len(latches)} latch(es){note}; new orders in scope are cancelled")
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
    for entry in status.get("accounts") or []:
        learned = entry.get("learned")
        if isinstance(learned, dict) and learned:
            known = ", ".join(f"{k}={v}" for k, v in sorted(learned.items()))
            lines.append(f"learned {entry['venue']}/{entry['account']}: {known}")
    for entry in status.get("accounts") or []:
        swept = entry.get("last_sweep")
        if swept not in (None, "none", "flat"):
            lines.append(
                f"last sweep of {entry['venue']}/{entry['account']}: {str(swept).upper()}: "
                "an order in a latched scope may still be open there"
            )
    running = status.get("running") or []
    for kill in running:
        lines.append("")
        lines.append(f"running: {kill['kill_id']} ({kill['kind']}) state {kill['state']}")
    failed = [k for k in status.get("failed_kills") or [] if isinstance(k, dict)]
    if failed:
        lines.append("")
        lines.append(
            f"UNRESOLVED: {len(failed)} kill(s) ended FAILED and no later kill proved their scope "
            "flat (nor a reset released them): orders may still be open"
        )
        for kill in failed:
            lines.append("  " + format_kill(kill).replace("\n", "\n  "))
    dropped = status.get("failed_kills_dropped") or 0
    if dropped:
        lines.append(
            f"  and {dropped} older failed kill(s) no longer listed here: see the audit log"
        )
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
            f"left {_left(acc, left)}, requests {acc['requests']}, retries {acc['retries']}"
        )
        for order in (still.get("orders") or [])[:10]:
            lines.append(
                f"    still open: {order['symbol']} {order['order_id']} {order['client_order_id']}"
            )
    return "\n".join(lines)


def _left(acc: dict[str, Any], left: int) -> str:
    """What is left open on an account, never "0" when no complete read said so."""
    if acc.get("state") == "flat" or acc.get("verified", True):
        return str(left)
    return f"at least {left} (unverified)" if left else "unknown (no complete read)"


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
