"""`killswitch preflight`: is every configured account ready to be killed on? Online, in parallel.

For each account it starts the connector as the daemon would and runs the checks of
`killswitch.readiness` (signed read, trade permission, clock against recvWindow, one user-stream
subscription, rate-limit headroom, BingX's dead-man's switch), then prints one row per account:
OK, or the venue's own reason. Credentials are read exactly as the service reads them
(`$CREDENTIALS_DIRECTORY`, environment, TOML), so the README's `systemd-run` recipe works for it
as it does for `check-config`. No secret is ever printed.

The dead-man's switch is armed and closed again only when no daemon answers on the control
socket: a running daemon keeps its own timer armed, and preflight reports the daemon's view.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from killswitch.control_client import ControlUnreachable, request, socket_path
from killswitch.exchanges.limits_file import persist_to
from killswitch.model import AccountRef
from killswitch.readiness.checks import (
    CHECKS,
    AccountReadiness,
    Check,
    Target,
    check_account,
    reason_for,
)
from killswitch.settings import AccountSettings, Settings

log = logging.getLogger(__name__)

EXIT_READY = 0
EXIT_NOT_READY = 1
EXIT_CONFIG = 2

EXIT_CODES_HELP = """\
exit codes:
  0  every account is ready
  1  at least one account is not ready (its row names the reason)
  2  the configuration is invalid (one line per error, naming the field)
"""


def _daemon_dms(config: Path | None, settings: Settings) -> dict[str, str] | None:
    """The running daemon's dead-man's switch states by account, or None when none answers."""
    if not any(a.dead_mans_switch_s for a in settings.accounts):
        return None
    try:
        answer = request(socket_path(config), {"op": "status"}, timeout_s=3.0)
    except ControlUnreachable as exc:
        if isinstance(exc.__cause__, FileNotFoundError | ConnectionRefusedError):
            return None  # no daemon (or a stale socket file): preflight may arm and close
        return {}  # a daemon may run (socket not permitted, no answer): leave its timer alone
    status = answer.get("status") if answer.get("ok") else None
    if not isinstance(status, dict):
        return {}
    return {
        f"{a.get('venue')}/{a.get('account')}": str(a.get("dead_mans_switch", "off"))
        for a in status.get("accounts") or []
        if isinstance(a, dict)
    }


async def run_preflight(
    settings: Settings, *, timeout_s: float = 15.0, daemon_dms: dict[str, str] | None = None
) -> list[AccountReadiness]:
    """Check every account in parallel; return the results in config order. What the
    daemon keeps of the venues' limits (a ban in force, charges in their window) holds the
    checks too: they never send into a ban (review 73)."""
    persist_to(settings.state_dir / "venue-limits.json", read_only=True)
    return list(
        await asyncio.gather(
            *(preflight_account(a, timeout_s=timeout_s, daemon_dms=daemon_dms)
              for a in settings.accounts)
        )
    )  # fmt: skip


async def preflight_account(
    account: AccountSettings, *, timeout_s: float = 15.0, daemon_dms: dict[str, str] | None = None
) -> AccountReadiness:
    """Start one account's connector, check it, close it."""
    from killswitch.app import connector

    ref = AccountRef(account.venue, account.name)
    try:
        exchange = connector(account)
    except Exception as exc:  # noqa: BLE001 - a bad key file (Ed25519 PEM) is a reason too
        return AccountReadiness(
            ref.venue, ref.account, [Check("key", False, f"key unusable: {type(exc).__name__}")]
        )
    try:
        try:
            async with asyncio.timeout(timeout_s):
                await exchange.start()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the venue's answer is the row's reason
            return AccountReadiness(
                ref.venue, ref.account, [Check("key", False, f"cannot start: {reason_for(exc)}")]
            )
        result = await check_account(
            Target.of(account, exchange),
            stream=True,
            dms=daemon_dms is None,
            timeout_s=timeout_s,
        )
        if daemon_dms is not None and account.dead_mans_switch_s:
            state = daemon_dms.get(str(ref))
            if state is None:
                result.checks.append(
                    Check("dms", None, "not checked: a daemon may be running (its socket did "
                          "not answer), and arming here would close its timer")
                )  # fmt: skip
            else:
                result.checks.append(
                    Check("dms", state != "failed", f"the running daemon reports it {state}")
                )
        return result
    finally:
        try:
            await exchange.close()
        except Exception:  # closing is best effort
            log.debug("close failed account=%s", ref, exc_info=True)


def render(results: list[AccountReadiness]) -> str:
    """One row per account: each check's cell, then OK or the reason."""
    width = max([len("ACCOUNT"), *(len(r.label) for r in results)]) + 2
    head = f"{'ACCOUNT':<{width}}" + "".join(f"{n.upper():<8}" for n in CHECKS) + "RESULT"
    lines = [head]
    for result in results:
        cells = []
        for name in CHECKS:
            check = result.check(name)
            cell = "-" if check is None else check.cell()
            if name == "rate" and check is not None and check.ok:
                cell = check.detail.removeprefix("headroom ")
            cells.append(f"{cell:<8}")
        outcome = "OK" if result.ready else (result.reason or "not ready")
        lines.append(f"{result.label:<{width}}" + "".join(cells) + outcome)
    lines.append("")
    for result in results:
        lines.append(f"{result.label}:")
        for check in result.checks:
            lines.append(f"  {check.name:<7}{check.cell():<5} {check.detail}")
    ready = sum(r.ready for r in results)
    lines.append("")
    verdict = "READY" if ready == len(results) else "NOT READY"
    lines.append(f"{verdict}: {ready}/{len(results)} accounts ready")
    return "\n".join(lines) + "\n"
