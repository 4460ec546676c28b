"""`killswitch drill --live`: the regular test of the kill function on the real venue.

    killswitch drill --live --venue binance --account mm-1 --symbol BTCUSDT --yes [--price P]

1. Refuse without `--yes`, for an account that is not configured, or one that is not ready
   (the running daemon's reason, else a preflight of that account here).
2. Place ONE post-only order of the venue's minimum size far below the market (Binance and
   MEXC `LIMIT_MAKER`, BingX `LIMIT` + `PostOnly`; the price is 80% of the best bid from the
   venue's book, rounded to its tick, or `--price`), with a client order id that only this
   drill uses (`ksdrill_<hex>_`), and see it open on the venue.
3. Fire a kill scoped to exactly that venue, account, symbol and client-id prefix through the
   running daemon's control socket (as a drill: trigger source `drill` in the audit log and the
   events), or, when no daemon runs, through an engine in this process (journal in a temporary
   directory, events appended to `state_dir/audit.jsonl` when writable).
4. Read the venue again: the order must be gone. Release exactly the drill's latch.
5. Print time to first cancel and time to flat. On any failure path the drill cancels its own
   order itself; it never touches any other order.

Exit codes: 0 passed; 1 failed (the kill did not prove flat, the order could not be placed or
was not seen gone); 2 refused (no `--yes`, unknown account, not ready, no price); 3 the daemon's
socket exists but may not be used (permissions).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

import aiohttp

from killswitch.control_client import ControlUnreachable, format_kill, request
from killswitch.drill.venue import (
    DrillFailed,
    DrillRefused,
    Rules,
    VenueClient,
    _plain,
    minimum_quantity,
    round_to,
)
from killswitch.exchanges.base import Exchange, OutcomeUnknown, RateLimited, Transient
from killswitch.exchanges.limits_file import persist_to
from killswitch.model import AccountRef, Order
from killswitch.settings import AccountSettings, Settings

log = logging.getLogger(__name__)

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_REFUSED = 2
EXIT_UNREACHABLE = 3

DISTANCE = Decimal("0.8")  # the drill bids 20% under the best bid: never a fill
PREFIX = "ksdrill_"
QUIET_BEFORE_FIRE_S = 1.2  # longer than any venue's per-second window (BingX: 1 s + margin)

EXIT_CODES_HELP = """\
exit codes:
  0  passed: the drill order was placed, the kill proved it gone from the venue, and the
     drill's latch was released
  1  failed: the order could not be placed, or the kill did not prove it gone (the drill
     then cancelled its own order itself; the output says whether that worked)
  2  refused: no --yes, no --live, an account that is not configured or not ready (the
     reason is printed), or no price (the venue's book unreadable: give --price)
  3  the daemon's control socket exists but may not be used (run as a member of its group)

How often: run it on every account after every deploy or key rotation, and at least weekly
(MiFID II RTS 6 art. 5-7 expects the kill function tested regularly in a realistic setting).
"""


# -- the drill ---------------------------------------------------------------------------------


@dataclass(slots=True)
class DrillReport:
    venue: str
    account: str
    symbol: str
    drill_id: str
    client_id: str
    price: Decimal = Decimal(0)
    quantity: Decimal = Decimal(0)
    order_id: str | None = None
    via: str = ""
    kill: dict[str, Any] = field(default_factory=dict)
    gone: bool = False
    released: bool = False
    cleanup: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        state = self.kill.get("state")
        return self.gone and self.released and state in ("flat", "confirmed")


class Drill:
    """One live drill on one account."""

    def __init__(
        self,
        settings: Settings,
        account: AccountSettings,
        symbol: str,
        *,
        socket: Path,
        price: Decimal | None = None,
        quantity: Decimal | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self.settings = settings
        self.account = account
        self.ref = AccountRef(account.venue, account.name)
        self.symbol = symbol
        self.socket = socket
        self.price = price
        self.quantity = quantity
        self.timeout_s = timeout_s
        tag = secrets.token_hex(4)
        self.report = DrillReport(
            account.venue,
            account.name,
            symbol,
            drill_id=f"drill-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{tag}",
            client_id=f"{PREFIX}{tag}_1",
        )
        self.prefix = f"{PREFIX}{tag}_"
        self.daemon: bool | None = None  # is a daemon answering on the socket

    # -- readiness ------------------------------------------------------------------------
    def _daemon_status(self) -> dict[str, Any] | None:
        try:
            answer = request(self.socket, {"op": "status"}, timeout_s=5.0)
        except ControlUnreachable as exc:
            if isinstance(exc.__cause__, PermissionError):
                raise
            return None
        status = answer.get("status")
        return status if answer.get("ok") and isinstance(status, dict) else None

    async def check_ready(self) -> None:
        status = await asyncio.to_thread(self._daemon_status)
        self.daemon = status is not None
        if status is not None:
            for entry in status.get("accounts") or []:
                if (entry.get("venue"), entry.get("account")) == (self.ref.venue, self.ref.account):
                    if entry.get("ready") is False:
                        raise DrillRefused(f"{self.ref} is not ready: {entry.get('reason')}")
                    return
            raise DrillRefused(f"the running daemon does not serve {self.ref}")
        from killswitch.preflight import preflight_account

        result = await preflight_account(self.account, timeout_s=15.0, daemon_dms={})
        if not result.ready:
            raise DrillRefused(f"{self.ref} is not ready: {result.reason}")

    # -- run ----------------------------------------------------------------------------------
    async def run(self) -> DrillReport:
        from killswitch.app import connector

        # A ban the daemon keeps in its state dir holds the drill too, its readiness check
        # included (reviews 73, 75).
        persist_to(self.settings.state_dir / "venue-limits.json", read_only=True)
        await self.check_ready()
        exchange = connector(self.account)
        report = self.report
        placed = False
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.account.timeout_s)
        ) as session:
            client = VenueClient(self.account, session)
            await self._size(client)
            await exchange.start()
            try:
                report.order_id = await client.place_post_only(
                    self.symbol, report.quantity, report.price, report.client_id
                )
                placed = True
                await self._seen_open(exchange)
                await self._kill(exchange)
                report.gone = await self._gone(exchange)
                if not report.gone:
                    raise DrillFailed("the venue still shows the drill order after the kill")
            finally:
                if placed and not report.gone:
                    report.cleanup = await self._cleanup(exchange)
                with contextlib.suppress(Exception):
                    await exchange.close()
        return report

    async def _size(self, client: VenueClient) -> None:
        report = self.report
        try:
            rules = await client.rules(self.symbol)
        except (DrillRefused, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            if self.quantity is None:
                raise DrillRefused(
                    f"cannot read {self.symbol}'s lot rules ({exc}); give --quantity"
                ) from None
            rules = Rules()
        if self.price is not None:
            report.price = self.price
        else:
            try:
                bid = await client.best_bid(self.symbol)
            except (DrillRefused, aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise DrillRefused(f"cannot read the venue's book ({exc}); give --price") from None
            report.price = round_to(bid * DISTANCE, rules.tick, ROUND_DOWN)
            report.notes.append(f"best bid {_plain(bid)}; drill price 80% of it")
        if report.price <= 0:
            raise DrillRefused("the drill price must be > 0")
        report.quantity = self.quantity or minimum_quantity(rules, report.price)

    async def _open_drill_orders(self, exchange: Exchange) -> tuple[list[Order], bool]:
        """The drill's orders the venue shows open, and whether that read was complete.

        The daemon shares the account's limits with this process: a throttled or unanswered
        read waits (the venue's Retry-After, else a second) and is tried again, for up to 30 s.
        """
        deadline = time.monotonic() + 30.0
        while True:
            try:
                snapshot = await exchange.snapshot([self.symbol])
            except (RateLimited, Transient, OutcomeUnknown) as exc:
                wait = exc.retry_after_s if isinstance(exc, RateLimited) else 1.0
                if time.monotonic() + wait > deadline:
                    raise
                await asyncio.sleep(wait)
                continue
            mine = [o for o in snapshot.orders if o.client_order_id.startswith(self.prefix)]
            return mine, snapshot.complete

    async def _seen_open(self, exchange: Exchange) -> None:
        deadline = time.monotonic() + 10.0
        while True:
            mine, _ = await self._open_drill_orders(exchange)
            if mine:
                return
            if time.monotonic() > deadline:
                raise DrillFailed("the drill order was accepted but never showed as open")
            await asyncio.sleep(0.5)

    async def _gone(self, exchange: Exchange) -> bool:
        mine, complete = await self._open_drill_orders(exchange)
        return complete and not mine

    async def _kill(self, exchange: Exchange) -> None:
        if self.daemon:
            await self._kill_via_daemon()
        else:
            await self._kill_in_process(exchange)

    def _fire_payload(self) -> dict[str, Any]:
        return {
            "op": "fire",
            "venues": [self.ref.venue],
            "accounts": [self.ref.account],
            "symbols": [self.symbol],
            "prefix": self.prefix,
            "reason": f"live drill {self.report.drill_id} on {self.ref} {self.symbol}",
            "id": self.report.drill_id,
            "actor": getpass.getuser(),
            # confirmed: flat, and still flat over the quiet window; then the reset is clean
            "wait": "confirmed",
            "timeout_s": self.timeout_s,
            "drill": True,
        }

    async def _kill_via_daemon(self) -> None:
        report = self.report
        report.via = f"the running daemon ({self.socket})"
        # The daemon shares this account's (and IP's) per-second limits with us but cannot see
        # our reads: let those windows pass, so the drill's own reads never throttle its kill.
        await asyncio.sleep(QUIET_BEFORE_FIRE_S)
        answer = await asyncio.to_thread(
            request, self.socket, self._fire_payload(), timeout_s=self.timeout_s + 15
        )
        kill = answer.get("kill")
        report.kill = kill if isinstance(kill, dict) else {"state": answer.get("outcome")}
        if not answer.get("trigger_id"):
            raise DrillFailed(f"the daemon refused the drill's kill: {answer.get('error')}")
        reset = await asyncio.to_thread(
            request,
            self.socket,
            {
                "op": "reset",
                "reason": f"live drill {report.drill_id} done",
                "trigger_ids": [report.drill_id],
                "actor": getpass.getuser(),
                "drill": True,
            },
        )
        report.released = bool(reset.get("ok")) and bool(reset.get("was_latched"))

    async def _kill_in_process(self, exchange: Exchange) -> None:
        from killswitch.app import engine_config
        from killswitch.events import EventType, FanOut, make_event
        from killswitch.journal import Journal
        from killswitch.kill.config import Account
        from killswitch.kill.engine import Engine
        from killswitch.model import Mode, Scope, Trigger
        from killswitch.sinks.audit import AuditLog

        report = self.report
        with tempfile.TemporaryDirectory(prefix="ks-drill-") as tmp:
            audit_path = self.settings.state_dir / "audit.jsonl"
            try:
                audit = AuditLog(audit_path)
            except OSError:
                audit_path = Path(tmp) / "audit.jsonl"
                audit = AuditLog(audit_path)
                report.notes.append(f"{self.settings.state_dir} not writable: audit not kept")
            report.via = f"an engine in this process (no daemon answers; audit {audit_path})"
            events = FanOut([audit])
            engine = Engine(
                [Account(self.ref, exchange, symbols=(self.symbol,))],
                Journal(Path(tmp) / "journal.jsonl"),
                engine_config(self.settings.engine),
                events=events,
            )
            await engine.start()
            try:
                now_ms = int(time.time() * 1000)
                payload = self._fire_payload()
                trigger = Trigger(
                    id=report.drill_id,
                    source="drill",
                    mode=Mode.KILL,
                    reason=str(payload["reason"]),
                    scope=Scope.of(
                        [self.ref.venue], [self.ref.account], [self.symbol], self.prefix
                    ),
                    created_ms=now_ms,
                    received_ms=now_ms,
                    actor=getpass.getuser(),
                )
                await engine.submit(trigger)
                kill = engine.kill_for(trigger.id)
                if kill is None:
                    raise DrillFailed("the engine did not start the drill's kill")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.timeout_s):
                        await kill.finished.wait()
                report.kill = kill.summary()
                report.released = await engine.reset(
                    actor=getpass.getuser(),
                    reason=f"live drill {report.drill_id} done",
                    origin="drill",
                    only=[trigger.id],
                )
                events.emit(make_event(EventType.DRILL, **self._event_fields()))
            finally:
                await engine.stop()
                audit.close()

    def _event_fields(self) -> dict[str, object]:
        r = self.report
        return {
            "drill_id": r.drill_id,
            "account": str(self.ref),
            "symbol": r.symbol,
            "client_order_id": r.client_id,
            "order_id": r.order_id,
            "state": r.kill.get("state"),
            "time_to_first_cancel_ms": r.kill.get("time_to_first_cancel_ms"),
            "time_to_flat_ms": r.kill.get("time_to_flat_ms"),
        }

    async def _cleanup(self, exchange: Exchange) -> str:
        """Cancel the drill's own order (and only it) after a failure."""
        order_id = self.report.order_id
        try:
            mine, _ = await self._open_drill_orders(exchange)
            for order in mine:
                await exchange.cancel_order(order.symbol, order.order_id)
            if not mine and order_id is not None:
                await exchange.cancel_order(self.symbol, order_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported; the operator must look
            gone = "AlreadyGone" in type(exc).__name__
            if gone:
                return "the drill order is gone"
            return f"COULD NOT cancel the drill order {order_id}: {exc}; cancel it by hand"
        return f"the drill cancelled its own order {order_id} itself"


# -- CLI --------------------------------------------------------------------------------------


def render(report: DrillReport, error: str = "") -> str:
    kill = report.kill
    lines = [
        f"live drill {report.drill_id} on {report.venue}/{report.account} {report.symbol}",
        f"placed: post-only BUY {_plain(report.quantity)} @ {_plain(report.price)}, "
        f"client id {report.client_id}, order id {report.order_id or '-'}",
        *(f"note: {n}" for n in report.notes),
        f"kill: via {report.via or '-'}, scope prefix {report.client_id.rsplit('_', 1)[0]}_",
    ]
    if kill:
        lines += format_kill(kill).splitlines()[1:]  # per account; the times follow
    lines += [
        f"kill {kill.get('kill_id', '-')} {str(kill.get('state', '-')).upper()}: "
        f"time to first cancel {_ms(kill.get('time_to_first_cancel_ms'))}, "
        f"time to flat {_ms(kill.get('time_to_flat_ms'))}",
        f"order gone from the venue (read back): {'yes' if report.gone else 'NO'}",
        f"drill latch released: {'yes' if report.released else 'NO'}",
    ]
    if report.cleanup:
        lines.append(f"cleanup: {report.cleanup}")
    if error:
        lines.append(f"error: {error}")
    lines.append("RESULT: " + ("PASS" if report.passed and not error else "FAIL"))
    return "\n".join(lines) + "\n"


def _ms(value: object) -> str:
    return f"{value:.0f} ms" if isinstance(value, int | float) else "-"
