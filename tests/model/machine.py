"""Random histories against the kill's promises (DESIGN.md, "What the kill promises").

`KillHistory` is a hypothesis `RuleBasedStateMachine`. Its rules draw the next event of a
history: orders and OCO lists placed by bots on four accounts (two Binance accounts whose order
ids are numbered per symbol, twins included; MEXC; BingX with a capped all-symbols read), a
prefix on a list or on one leg only, owners cancelling and the market filling (a filled leg
expires its siblings), triggers of every mode and scope (venue, account, symbol, prefix, and
scopes naming no configured account) from every source, duplicates, resets (all, or naming
latches), a reset racing a new kill, an alert racing a graceful stop, venue faults (5xx before
and after applying, 429, transient, stalls, Fatal), stream drops and silent streams, latency, a
failing disk under the journal (short write then ENOSPC, ENOSPC, fsync EIO), a graceful stop, a
crash (with or without a torn tail), and a restart on the same journal. Time is virtual
(`rig.VirtualTimeLoop`); after each step everything due at that instant runs.

The real `Engine`, planner, `Journal`, `OrderTracker` and `StreamSupervisor` run in-process;
the venues are `venue.VenueAccount`s (the simulator's `SimBook`, one per symbol). The checker
judges only from the venues' books and the engine's public output (events, journal, status):

* no false flat: when a kill reports flat or confirmed (or an account flat), no order in a
  trigger's scope that was placed before that trigger was accepted is open on the venue; a kill
  over no configured account is never flat; a failed account read completely names every such
  order still open;
* nothing acknowledged is forgotten: every accepted trigger reaches flat, confirmed or failed
  (or, for a kill, is released by a reset), in this life of the daemon or a later one, after a
  graceful stop as after a crash; a duplicate is answered DUPLICATE only if it was accepted;
* scope is respected: every order the engine cancels is covered by a trigger accepted before
  the cancel, and (for a kill) not released before the order was placed;
* one shot is one shot: a `cancel` never cancels an order placed after it reported flat;
* resets are exact: a reset releases exactly what its event names, the journal names the same
  set, and no latch it does not name goes with it;
* latched means latched: the engine's latches are the accepted, unreleased kills; an in-scope
  order a live stream showed is cancelled by the time the engine is idle; after a sweep with the
  venues healthy, nothing in a latched scope is open;
* the journal reads back after every step, and holds the engine's latches.

Violations are collected as they happen (from the event sink and the books) and raised by an
`@invariant`, so hypothesis shrinks a failure to the shortest history that shows it. Not
modelled here: a second replica sharing latches over Kafka, and the venues' ban rules (the
connectors' budgets enforce those; the chaos suite checks them over the simulators).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import random
import shutil
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from killswitch.events import FanOut
from killswitch.exchanges.base import Capabilities, RateLimits
from killswitch.journal import Journal, JournalCorrupt, replay
from killswitch.kill.config import Account, EngineConfig
from killswitch.kill.engine import Engine
from killswitch.kill.record import SubmitResult
from killswitch.model import AccountRef, Mode, Scope, Trigger
from killswitch.streams.supervisor import StreamSupervisor
from killswitch.streams.tracker import OrderTracker
from tests.model.rig import HAS_FILE_OPS, FaultyDisk, Stalled, VirtualTimeLoop
from tests.model.venue import Fault, ModelConnector, OrderFact, VenueAccount

T = TypeVar("T")

BN_SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
BX_SYMBOLS = ("BTC-USDT", "ETH-USDT", "SOL-USDT")
# The venues' capabilities, as tests/fakes.py presets them (kept here so the checker also runs
# against an older tree whose fakes module differs).
BINANCE_CAPS = Capabilities(
    cancel_all_max_symbols=1,
    cancel_all_without_symbol=False,
    cancel_all_covers_lists=True,
    batch_cancel_max=0,
    has_order_lists=True,
    open_orders_without_symbol=True,
    dead_mans_switch=False,
    rate_limits=RateLimits(6000, 60.0),
)
MEXC_CAPS = Capabilities(
    cancel_all_max_symbols=5,
    cancel_all_without_symbol=False,
    cancel_all_covers_lists=True,
    batch_cancel_max=0,
    has_order_lists=False,
    open_orders_without_symbol=True,
    dead_mans_switch=False,
)
BINGX_CAPS = Capabilities(
    cancel_all_max_symbols=1,
    cancel_all_without_symbol=True,
    cancel_all_covers_lists=False,
    batch_cancel_max=20,
    has_order_lists=True,
    open_orders_without_symbol=True,
    dead_mans_switch=False,
)
PAGE_CAP = 5  # BingX's 2,000-row all-symbols page, scaled down to the model's size


@dataclass(frozen=True)
class AccountSpec:
    venue: str
    name: str
    caps: Capabilities
    symbols: tuple[str, ...]
    ids_per_symbol: bool
    page_cap: int | None


ACCOUNTS = (
    AccountSpec("binance", "b1", BINANCE_CAPS, BN_SYMBOLS, True, None),
    AccountSpec("binance", "b2", BINANCE_CAPS, BN_SYMBOLS, True, None),
    AccountSpec("mexc", "m1", MEXC_CAPS, BN_SYMBOLS, False, None),
    AccountSpec("bingx", "x1", BINGX_CAPS, BX_SYMBOLS, False, PAGE_CAP),
)
LIST_ACCOUNTS = tuple(i for i, a in enumerate(ACCOUNTS) if a.caps.has_order_lists)
TWIN_ACCOUNTS = tuple(i for i, a in enumerate(ACCOUNTS) if a.ids_per_symbol)

CONFIG = EngineConfig(
    deadline_s=20.0,
    retry_initial_s=0.05,
    retry_max_s=1.0,
    quiet_window_s=0.5,
    sweep_interval_s=30.0,
    careful_s=5.0,
    open_for_s=5.0,
)
DRAIN_S = 1e-6
RECONCILE_S = 5.0  # the stream watchdog's background snapshot, when a history turns it on
STEP_LIMIT_S = 300.0  # virtual seconds any one step may take before it counts as stuck

HAS_RESET_ONLY = "only" in inspect.signature(Engine.reset).parameters
HAS_JOURNAL_OPS = HAS_FILE_OPS and "ops" in inspect.signature(Journal.__init__).parameters

PREFIXES = ("s7-", "s8-", "x-")  # client-order-id prefixes bots use
SCOPE_PREFIXES = (None, "s7-", "s8-", "s7-o")


@dataclass
class Tally:
    histories: int = 0
    steps: int = 0
    violations: int = 0
    counting: bool = False  # only the random histories count, not the regressions' replays

    def line(self) -> str:
        return (
            f"model: {self.histories} histories, {self.steps} steps, {self.violations} violations"
        )

    def lines(self) -> list[str]:
        return [self.line()] if self.histories else []

    def export(self) -> dict[str, int]:
        """The counts as plain data, for a pytest-xdist worker to send to the controller."""
        return {"histories": self.histories, "steps": self.steps, "violations": self.violations}

    def absorb(self, exported: dict[str, int]) -> None:
        """Add another process's `export()`."""
        self.histories += exported["histories"]
        self.steps += exported["steps"]
        self.violations += exported["violations"]


TALLY = Tally()

# Hunting the next bug while a known one is still open: violations whose text contains one of
# these `|`-separated strings are not counted. Never set in `make test`.
IGNORED = tuple(x for x in os.environ.get("KILLSWITCH_MODEL_IGNORE", "").split("|") if x)


@dataclass
class TriggerFact:
    """One trigger the history submitted, and what became of it."""

    trigger: Trigger
    submitted_seq: int
    status: str = "pending"  # accepted | maybe (submit raised) | refused
    released_seq: int | None = None  # a reset event named it
    flat_seq: int | None = None  # first flat report
    ended: bool = False  # flat, confirmed or failed reported

    @property
    def acknowledged(self) -> bool:
        return self.status == "accepted"

    @property
    def counted(self) -> bool:
        """Accepted, or possibly journaled by a submit that raised."""
        return self.status in ("accepted", "maybe")


def covers(scope: Scope, fact: OrderFact) -> bool:
    """The checker's own reading of a scope: does it cover this order (or its list)?"""
    ref = fact.ref
    if scope.venues and ref.venue not in scope.venues:
        return False
    if scope.accounts and ref.account not in scope.accounts:
        return False
    if scope.symbols and fact.symbol.replace("-", "").upper() not in scope.symbols:
        return False
    prefix = scope.client_order_id_prefix
    if prefix is None or fact.client_order_id.startswith(prefix):
        return True
    return fact.list_id is not None and (
        fact.list_client_order_id.startswith(prefix)
        or any(c.startswith(prefix) for c in fact.leg_client_order_ids)
    )


def covers_any_account(scope: Scope) -> bool:
    return any(
        (not scope.venues or a.venue in scope.venues)
        and (not scope.accounts or a.name in scope.accounts)
        for a in ACCOUNTS
    )


class _LifeSink:
    """The event sink of one life of the daemon; a dead life's events are not heard."""

    def __init__(self, machine: KillHistory, life: int) -> None:
        self.machine = machine
        self.life = life

    def emit(self, event: dict[str, object]) -> None:
        m = self.machine
        if m.life == self.life and m.up:
            m.on_event(event)


scopes = st.builds(
    lambda venues, accounts, symbols, prefix: Scope.of(venues, accounts, symbols, prefix),
    st.sampled_from([(), ("binance",), ("bingx",), ("mexc",), ("binance", "bingx")]),
    st.sampled_from([(), ("b1",), ("x1",), ("m1",), ("b2",), ("b1", "x1"), ("zz",)]),
    st.sampled_from([(), ("BTCUSDT",), ("ETHUSDT",), ("BTCUSDT", "SOLUSDT")]),
    st.sampled_from(SCOPE_PREFIXES),
)
modes = st.sampled_from([Mode.KILL, Mode.CANCEL])
sources = st.sampled_from(["kafka", "control", "heartbeat", "rule"])


class KillHistory(RuleBasedStateMachine):
    """One history of a daemon over four venue accounts."""

    def __init__(self) -> None:
        super().__init__()
        if TALLY.counting:
            TALLY.histories += 1
        self.loop = VirtualTimeLoop()
        self.dir = Path(tempfile.mkdtemp(prefix="ks-model-", dir=_tmp_root()))
        self.path = self.dir / "journal.jsonl"
        self.seq = 0
        self.violations: list[str] = []
        # Cancels made while a covering trigger's submit had not returned yet: judged once it has
        # (the engine launches a kill before `submit` returns, and may cancel before it does).
        self.judge_later: list[OrderFact] = []
        self.history: list[str] = []
        self.events: list[dict[str, object]] = []
        self.triggers: dict[str, TriggerFact] = {}
        self.trigger_ids = 0
        self.client_ids = 0
        self.flat_ids: dict[str, list[str]] = {}  # kill id -> trigger ids of its flat report
        self.disk = FaultyDisk() if HAS_JOURNAL_OPS else None
        self.compact_bytes = 8 * 1024 * 1024
        self.reconcile_s: float | None = None
        self.venues: dict[AccountRef, VenueAccount] = {}
        for spec in ACCOUNTS:
            ref = AccountRef(spec.venue, spec.name)
            acc = VenueAccount(
                ref,
                spec.caps,
                spec.symbols,
                ids_per_symbol=spec.ids_per_symbol,
                page_cap=spec.page_cap,
                clock=lambda: int(self.loop.time() * 1000),
            )
            acc.seq = self.tick
            acc.life = lambda: self.life if self.up else 0
            acc.on_engine_cancel = self.judge_cancel
            self.venues[ref] = acc
        self.refs = list(self.venues)
        self.life = 0
        self.up = False
        self.engine: Engine | None = None
        self.journal: Journal | None = None
        self.connectors: list[ModelConnector] = []
        self.streams: list[asyncio.Task[None]] = []
        self.restarted_at = 0  # seq of the last start
        self.broken = False
        self.hurry = 0  # loop iterations the next step's drain may run (0: drain the instant)

    # -- plumbing --------------------------------------------------------------------------
    def tick(self) -> int:
        self.seq += 1
        return self.seq

    def note(self, text: str) -> None:
        if TALLY.counting:
            TALLY.steps += 1
        self.history.append(f"[{self.seq}] {text}")

    def violation(self, promise: str, detail: str) -> None:
        text = f"{promise}: {detail}"
        if not any(known in text for known in IGNORED):
            self.violations.append(text)

    def run(self, coro: Coroutine[Any, Any, T], *, limit_s: float = STEP_LIMIT_S) -> T:
        async def bounded() -> T:
            async with asyncio.timeout(limit_s):
                return await coro

        return self.loop.run_until_complete(bounded())

    def settle_for(self, seconds: float) -> None:
        self.run(asyncio.sleep(seconds))

    def drain(self) -> None:
        """Run everything that can happen at this instant (a microsecond of virtual time), or,
        after `hurry`, only the next few loop iterations: the next step lands mid-cascade."""
        if self.hurry:
            iterations, self.hurry = self.hurry, 0
            self.run(_iterations(iterations))
            return
        self.run(asyncio.sleep(DRAIN_S))

    # -- lives of the daemon ---------------------------------------------------------------
    def start_life(self) -> None:
        self.life += 1
        life = self.life
        kwargs: dict[str, Any] = {"compact_bytes": self.compact_bytes}
        if self.disk is not None:
            kwargs["ops"] = self.disk
        self.journal = Journal(self.path, **kwargs)
        accounts: list[Account] = []
        trackers: list[tuple[ModelConnector, OrderTracker]] = []
        self.connectors = []
        # Whether a first look fits the venue's budget, drawn per kill account (seeded per
        # life): kills sent from the tracker alone, the verification read the first to look.
        looks = random.Random(life)
        for ref, acc in self.venues.items():
            conn = ModelConnector(acc)
            self.connectors.append(conn)
            tracker = OrderTracker(ref, now=self.loop.time)
            trackers.append((conn, tracker))
            accounts.append(
                Account(
                    ref,
                    conn,
                    symbols=acc.symbols,
                    tracker=tracker,
                    first_look_fits=lambda _symbols: looks.random() < 0.5,
                )
            )
        engine = Engine(
            accounts,
            self.journal,
            CONFIG,
            events=FanOut([_LifeSink(self, life)]),
            clock=self.loop.time,
            wall_ms=lambda: 1_760_000_000_000 + int(self.loop.time() * 1000),
            rng=random.Random(life),
        )
        self.engine = engine
        self.up = True
        self.restarted_at = self.tick()
        for ref in self.refs:
            self.venues[ref].stream_epoch += 1  # new connections: a new stream
        self.streams = []
        self.supervisors: list[StreamSupervisor] = []
        for conn, tracker in trackers:
            sup = StreamSupervisor(
                conn,
                tracker,
                on_event=engine.on_stream_event,
                backoff_initial_s=0.2,
                backoff_max_s=2.0,
                reconcile_interval_s=self.reconcile_s,
                max_connection_age_s=None,
                clock=self.loop.time,
                rng=random.Random(life),
            )
            self.supervisors.append(sup)
            self.streams.append(self.loop.create_task(sup.run(), name=f"stream {tracker.ref}"))
        self.settle_for(0.001)
        for sup in self.supervisors:
            # With no fault in the way, a stream that does not go live is the harness's bug
            # (a connector that no longer fits the Exchange protocol), not the engine's.
            acc = self.venues[sup.ref]
            if not acc.faults and acc.latency_s == 0 and sup.state.value != "live":
                raise RuntimeError(f"model harness: stream {sup.ref} is {sup.state_reason}")
        fired = {ref: acc.faults_fired for ref, acc in self.venues.items()}
        try:
            self.run(engine.start())
        except (TimeoutError, Stalled):
            self.violation("nothing acknowledged is forgotten", "start() never returned")
            return
        except Exception as exc:
            self.violation("the journal reads back", f"start() raised {exc!r}")
            self.up = False
            self.kill_everything()
            raise
        self.check_resweep(fired)

    def check_resweep(self, fired: dict[AccountRef, int]) -> None:
        """A restart with a latched journal re-sweeps before `start()` returns: on an account
        that answered without a fault meanwhile, nothing placed before it in a latched scope is
        open."""
        must, _ = self.expected_latches()
        for ref, acc in self.venues.items():
            if acc.faults_fired != fired[ref]:
                continue
            for order in acc.open_facts():
                if order.placed_seq >= self.restarted_at:
                    continue
                latch = next(
                    (t for t in sorted(must) if covers(self.triggers[t].trigger.scope, order)),
                    None,
                )
                if latch is not None:
                    self.violation(
                        "latched means latched",
                        f"start() returned with {order.describe()} open under latch {latch}",
                    )

    def kill_everything(self) -> None:
        """End every task of the current life (a process that dies takes them all)."""
        for conn in self.connectors:
            conn.alive = False
        current = asyncio.current_task(self.loop) if self.loop.is_running() else None
        tasks = [t for t in asyncio.all_tasks(self.loop) if t is not current and not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            with contextlib.suppress(TimeoutError, Stalled):
                self.run(asyncio.wait(tasks), limit_s=60.0)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                # A dying process's tasks may fail on the way out (a journal already closed);
                # their errors die with it.
                self.history.append(f"    at exit {task.get_name()}: {task.exception()!r}")
        self.streams = []

    def stop_life(self, grace_s: float) -> None:
        if self.disk is not None:
            self.disk.armed = None  # a disk fault is armed for a write of this life only
        engine = self.engine
        assert engine is not None
        try:
            self.run(engine.stop(grace_s=grace_s))
        except (TimeoutError, Stalled):
            self.violation("nothing acknowledged is forgotten", "stop() never returned")
        self.up = False
        self.kill_everything()
        if self.journal is not None:
            self.journal.close()

    def crash_life(self, torn: bool) -> None:
        if self.disk is not None:
            self.disk.armed = None
        saved = self.path.read_bytes() if self.path.exists() else b""
        self.up = False
        self.kill_everything()
        if self.journal is not None:
            self.journal.close()
        # What the disk held when the process died; a torn tail is a write cut in half.
        if torn:
            saved += b'{"kind":"trigger","ts_ms":1,"trig'
        self.path.write_bytes(saved)

    # -- what the engine says --------------------------------------------------------------
    def on_event(self, event: dict[str, object]) -> None:
        self.events.append(event)
        kind = event.get("type")
        if kind in ("flat", "failed"):
            self.check_accounts(event)
        if kind == "flat":
            ids = [str(t) for t in event.get("trigger_ids", [])]  # type: ignore[attr-defined]
            self.flat_ids[str(event.get("kill_id"))] = ids
            for tid in ids:
                self.check_flat(tid, "flat")
        elif kind == "confirmed":
            for tid in self.flat_ids.get(str(event.get("kill_id")), []):
                self.check_flat(tid, "confirmed")
        elif kind == "failed":
            for tid in event.get("trigger_ids", []):  # type: ignore[attr-defined]
                fact = self.fact_of(str(tid))
                if fact is not None:
                    fact.ended = True
        elif kind == "reset":
            for item in event.get("released", []):  # type: ignore[attr-defined]
                fact = self.fact_of(str(item["trigger_id"]))
                if fact is not None and fact.released_seq is None:
                    fact.released_seq = self.tick()

    def fact_of(self, trigger_id: str) -> TriggerFact | None:
        fact = self.triggers.get(trigger_id)
        if fact is not None and fact.status in ("pending", "refused"):
            fact.status = "maybe"  # the engine acts on it: it was journaled after all
        return fact

    def check_flat(self, trigger_id: str, word: str) -> None:
        fact = self.fact_of(trigger_id)
        if fact is None:
            self.violation("no false flat", f"{word} reported for unknown trigger {trigger_id}")
            return
        if fact.flat_seq is None:
            fact.flat_seq = self.tick()
        fact.ended = True
        scope = fact.trigger.scope
        if not covers_any_account(scope):
            self.violation(
                "no false flat",
                f"{word} reported for {trigger_id}, whose scope {scope.to_json()} covers no "
                "configured account",
            )
            return
        for acc in self.venues.values():
            for order in acc.open_facts():
                if order.placed_seq < fact.submitted_seq and covers(scope, order):
                    self.violation(
                        "no false flat",
                        f"{word} reported for {trigger_id} (scope {scope.to_json()}) while "
                        f"{order.describe()}, open before it, is still open",
                    )

    def check_accounts(self, event: dict[str, object]) -> None:
        """Per account: one reported flat has nothing of its triggers' scopes open; one that
        failed after a complete read names everything of theirs still open."""
        ids = [str(t) for t in event.get("trigger_ids", [])]  # type: ignore[attr-defined]
        facts = [f for t in ids if (f := self.triggers.get(t)) is not None]
        for entry in event.get("accounts", []):  # type: ignore[attr-defined]
            ref = AccountRef(str(entry["venue"]), str(entry["account"]))
            acc = self.venues.get(ref)
            if acc is None:
                continue
            state = entry.get("state")
            still = entry.get("still_open") or {}
            named = {(str(o["symbol"]), str(o["order_id"])) for o in still.get("orders", [])}
            lists = {(str(x["symbol"]), str(x["list_id"])) for x in still.get("lists", [])}
            for fact in facts:
                for order in acc.open_facts():
                    if order.placed_seq >= fact.submitted_seq:
                        continue
                    if not covers(fact.trigger.scope, order):
                        continue
                    if state == "flat":
                        self.violation(
                            "no false flat",
                            f"{ref} reported flat for {fact.trigger.id} while "
                            f"{order.describe()}, open before it, is still open",
                        )
                    elif (
                        event.get("type") == "failed"
                        and entry.get("verified")
                        and order.key not in named
                        and order.list_key not in lists
                    ):
                        self.violation(
                            "failed names what is still open",
                            f"{ref} failed for {fact.trigger.id} after a complete read, "
                            f"without naming {order.describe()}",
                        )

    def judge_cancel(self, order: OrderFact) -> None:
        """The engine cancelled `order`: was it in an active scope?"""
        now = order.closed_seq
        assert now is not None
        if any(
            f.status == "pending" and f.submitted_seq <= now and covers(f.trigger.scope, order)
            for f in self.triggers.values()
        ):
            self.judge_later.append(order)  # a covering trigger's submit is still on its way
            return
        covering = [
            f
            for f in self.triggers.values()
            if f.counted and f.submitted_seq <= now and covers(f.trigger.scope, order)
        ]
        if not covering:
            self.violation(
                "scope is respected", f"{order.describe()} cancelled, but no trigger covers it"
            )
            return
        for f in covering:
            if f.trigger.mode is Mode.KILL and (
                f.released_seq is None or f.released_seq > order.placed_seq
            ):
                return
            if f.trigger.mode is Mode.CANCEL and (
                f.flat_seq is None or f.flat_seq > order.placed_seq
            ):
                return
        if any(f.trigger.mode is Mode.CANCEL for f in covering):
            self.violation(
                "one shot is one shot",
                f"{order.describe()}, placed after cancel "
                f"{[f.trigger.id for f in covering]} reported flat, was cancelled",
            )
        else:
            self.violation(
                "scope is respected",
                f"{order.describe()}, placed after latch "
                f"{[f.trigger.id for f in covering]} was released, was cancelled",
            )

    def expected_latches(self) -> tuple[set[str], set[str]]:
        """Latches the engine must hold, and those it may hold (submits that raised)."""
        must = {
            t
            for t, f in self.triggers.items()
            if f.acknowledged and f.trigger.mode is Mode.KILL and f.released_seq is None
        }
        may = {
            t
            for t, f in self.triggers.items()
            if f.status in ("maybe", "pending", "refused")
            and f.trigger.mode is Mode.KILL
            and f.released_seq is None
        }
        return must, must | may

    def engine_latches(self) -> set[str]:
        assert self.engine is not None
        latches = self.engine.status()["latches"]
        return {str(x["trigger_id"]) for x in latches}  # type: ignore[attr-defined,index]

    # -- rules: the bots -------------------------------------------------------------------
    @initialize(compact=st.booleans(), reconcile=st.booleans())
    def boot(self, compact: bool, reconcile: bool = False) -> None:
        if compact:
            self.compact_bytes = 1500
        self.reconcile_s = RECONCILE_S if reconcile else None
        self.note(f"boot compact_bytes={self.compact_bytes} reconcile_s={self.reconcile_s}")
        self.start_life()

    @rule(
        account=st.integers(0, len(ACCOUNTS) - 1),
        symbol=st.integers(0, 2),
        prefix=st.sampled_from(PREFIXES),
        n=st.integers(1, PAGE_CAP + 1),
    )
    def place(self, account: int, symbol: int, prefix: str, n: int) -> None:
        acc = self.venues[self.refs[account]]
        sym = acc.symbols[symbol]
        placed = []
        for _ in range(n):
            self.client_ids += 1
            self.tick()
            placed.append(acc.place(sym, f"{prefix}o{self.client_ids}").order_id)
        self.note(f"place {acc.ref} {sym} {prefix}* ids={placed}")
        self.drain()

    @rule(
        account=st.sampled_from(TWIN_ACCOUNTS),
        symbols=st.sampled_from([(0, 1), (1, 0), (0, 2)]),
        prefix=st.sampled_from(PREFIXES),
    )
    def place_twins(self, account: int, symbols: tuple[int, int], prefix: str) -> None:
        """Two orders with one id on two symbols of an account whose venue numbers per symbol."""
        acc = self.venues[self.refs[account]]
        acc.align_ids()
        placed = []
        for index in symbols:
            self.client_ids += 1
            self.tick()
            placed.append(acc.place(acc.symbols[index], f"{prefix}o{self.client_ids}").describe())
        self.note(f"place_twins {placed}")
        self.drain()

    @rule(
        account=st.sampled_from(LIST_ACCOUNTS),
        symbol=st.integers(0, 2),
        list_prefix=st.sampled_from(PREFIXES),
        leg_a=st.sampled_from(PREFIXES),
        leg_b=st.sampled_from(PREFIXES),
    )
    def place_list(
        self, account: int, symbol: int, list_prefix: str, leg_a: str, leg_b: str
    ) -> None:
        acc = self.venues[self.refs[account]]
        sym = acc.symbols[symbol]
        self.client_ids += 1
        n = self.client_ids
        self.tick()
        legs = acc.place_list(sym, f"{list_prefix}L{n}", (f"{leg_a}l{n}a", f"{leg_b}l{n}b"))
        self.note(
            f"place_list {acc.ref} {sym} list={list_prefix}L{n} legs={leg_a},{leg_b} "
            f"ids={[f.order_id for f in legs]}"
        )
        self.drain()

    @rule(account=st.integers(0, len(ACCOUNTS) - 1), pick=st.integers(0, 50))
    def owner_cancels(self, account: int, pick: int) -> None:
        self._close_one(account, pick, "owner_cancels")

    @rule(account=st.integers(0, len(ACCOUNTS) - 1), pick=st.integers(0, 50))
    def market_fills(self, account: int, pick: int) -> None:
        self._close_one(account, pick, "market_fills")

    def _close_one(self, account: int, pick: int, how: str) -> None:
        """The owner cancels, or the market fills, one open order of the account."""
        acc = self.venues[self.refs[account]]
        open_now = acc.open_facts()
        if not open_now:
            return
        order = open_now[pick % len(open_now)]
        self.tick()
        if how == "owner_cancels":
            acc.owner_cancel(order.key)
        else:
            acc.fill(order.key)
        self.note(f"{how} {order.describe()}")
        self.drain()

    # -- rules: triggers and resets --------------------------------------------------------
    def new_trigger(self, scope: Scope, mode: Mode, source: str) -> Trigger:
        self.trigger_ids += 1
        return Trigger(
            id=f"t{self.trigger_ids}",
            source=source,
            mode=mode,
            reason="model",
            scope=scope,
            created_ms=1_760_000_000_000 + int(self.loop.time() * 1000),
            actor="model",
        )

    async def _submit(self, trigger: Trigger) -> None:
        try:
            await self._submit_once(trigger)
        finally:
            self.judge_settled()

    def judge_settled(self) -> None:
        """Judge the cancels that waited for a submit to return (`judge_later`)."""
        waiting, self.judge_later = self.judge_later, []
        for order in waiting:
            self.judge_cancel(order)

    async def _submit_once(self, trigger: Trigger) -> None:
        assert self.engine is not None
        known = self.triggers.get(trigger.id)
        was_accepted = known is not None and known.status in ("accepted", "maybe")
        fact = TriggerFact(trigger, self.tick())
        if known is None:
            self.triggers[trigger.id] = fact
        else:
            fact = known
        disk_armed = self.disk is not None and self.disk.armed is not None
        try:
            result = await self.engine.submit(trigger)
        except OSError as exc:
            if fact.status == "pending":
                fact.status = "maybe"
            self.history.append(f"    submit {trigger.id} raised {exc!r}")
            if not disk_armed:
                self.violation("the journal reads back", f"submit raised {exc!r}")
            return
        except (ValueError, TypeError) as exc:
            if fact.status == "pending":
                fact.status = "refused"
            self.history.append(f"    submit {trigger.id} refused: {exc!r}")
            if covers_any_account(trigger.scope):
                self.violation("scope is respected", f"submit refused a valid scope: {exc!r}")
            return
        self.history.append(f"    submit {trigger.id} -> {result}")
        if result is SubmitResult.ACCEPTED:
            if was_accepted and known is not None and known.status == "accepted":
                self.violation("nothing acknowledged is forgotten", f"{trigger.id} accepted twice")
            fact.status = "accepted"
            fact.submitted_seq = min(fact.submitted_seq, self.seq)
        elif result is SubmitResult.DUPLICATE:
            if not was_accepted:
                self.violation(
                    "nothing acknowledged is forgotten",
                    f"{trigger.id} answered DUPLICATE but was never acknowledged",
                )
            elif fact.status == "maybe":
                fact.status = "accepted"  # the journal had it: the engine holds it
        else:
            if fact.status == "pending":
                fact.status = "refused"
            if covers_any_account(trigger.scope):
                self.violation("scope is respected", f"submit refused a valid scope: {result}")

    @precondition(lambda self: self.up)
    @rule(scope=scopes, mode=modes, source=sources)
    def submit(self, scope: Scope, mode: Mode, source: str) -> None:
        trigger = self.new_trigger(scope, mode, source)
        self.note(f"submit {trigger.id} {mode.value} {scope.to_json()} from {source}")
        self.run(self._submit(trigger))
        self.drain()

    @precondition(lambda self: self.up and bool(self.triggers))
    @rule(pick=st.integers(0, 50))
    def submit_again(self, pick: int) -> None:
        ids = sorted(self.triggers, key=lambda t: int(t[1:]))
        fact = self.triggers[ids[pick % len(ids)]]
        self.note(f"submit_again {fact.trigger.id} (status {fact.status})")
        self.run(self._submit(fact.trigger))
        self.drain()

    def _named(self, picks: list[int]) -> list[str] | None:
        if not HAS_RESET_ONLY or not picks:
            return None
        kills = sorted(
            (t for t, f in self.triggers.items() if f.trigger.mode is Mode.KILL),
            key=lambda t: int(t[1:]),
        )
        if not kills:
            return None
        return sorted({kills[p % len(kills)] for p in picks})

    async def _reset(self, only: list[str] | None) -> dict[str, object] | None:
        assert self.engine is not None
        before = len(self.events)
        kwargs: dict[str, Any] = {"actor": "model", "reason": "drill"}
        if only is not None:
            kwargs["only"] = only
        try:
            await self.engine.reset(**kwargs)
        except OSError as exc:
            self.history.append(f"    reset raised {exc!r}")
            return None
        resets = [e for e in self.events[before:] if e.get("type") == "reset"]
        if len(resets) != 1:
            self.violation("resets are exact", f"a reset emitted {len(resets)} reset events")
            return None
        return resets[0]

    def check_reset(
        self,
        event: dict[str, object] | None,
        before: set[str],
        added: set[str],
        after: set[str],
        only: list[str] | None,
    ) -> None:
        if event is None:
            return
        named = {str(x["trigger_id"]) for x in event["released"]}  # type: ignore[attr-defined,index]
        if after != (before | added) - named:
            self.violation(
                "resets are exact",
                f"latches before={sorted(before)} added={sorted(added)}, reset named "
                f"{sorted(named)}, left {sorted(after)}",
            )
        if only is not None and not named <= set(only):
            self.violation("resets are exact", f"reset only={only} released {sorted(named)}")
        if only is not None and (set(only) & before) - named:
            self.violation(
                "resets are exact",
                f"reset only={only} kept {sorted((set(only) & before) - named)}",
            )
        if only is None and not added and named != before:
            self.violation(
                "resets are exact", f"reset of all released {sorted(named)} of {sorted(before)}"
            )
        record = self.last_reset_record()
        if record is not None:
            journaled = {str(x["trigger_id"]) for x in record.get("released", [])}
            if journaled != named:
                self.violation(
                    "resets are exact",
                    f"the journal's reset names {sorted(journaled)}, the event {sorted(named)}",
                )

    def last_reset_record(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        for line in reversed(self.path.read_bytes().split(b"\n")):
            if b'"reset"' not in line:
                continue
            with contextlib.suppress(ValueError):
                record = orjson.loads(line)
                if isinstance(record, dict) and record.get("kind") == "reset":
                    return record
        return None

    @precondition(lambda self: self.up)
    @rule(picks=st.lists(st.integers(0, 7), max_size=2))
    def reset(self, picks: list[int]) -> None:
        only = self._named(picks)
        self.note(f"reset only={only}")
        before = self.engine_latches()
        self.tick()
        event = self.run(self._reset(only))
        self.check_reset(event, before, set(), self.engine_latches(), only)
        self.drain()

    @precondition(lambda self: self.up)
    @rule(scope=scopes, reset_first=st.booleans(), picks=st.lists(st.integers(0, 7), max_size=1))
    def reset_races_kill(self, scope: Scope, reset_first: bool, picks: list[int]) -> None:
        trigger = self.new_trigger(scope, Mode.KILL, "kafka")
        only = self._named(picks)
        self.note(
            f"reset_races_kill {trigger.id} {scope.to_json()} reset_first={reset_first} only={only}"
        )
        before = self.engine_latches()
        self.tick()

        async def race() -> dict[str, object] | None:
            # Tasks start in the order they are created: the first runs to its first await
            # (its journal write) before the second begins.
            if reset_first:
                reset = asyncio.ensure_future(self._reset(only))
                submit = asyncio.ensure_future(self._submit(trigger))
            else:
                submit = asyncio.ensure_future(self._submit(trigger))
                reset = asyncio.ensure_future(self._reset(only))
            await asyncio.gather(reset, submit)
            return reset.result()

        event = self.run(race())
        fact = self.triggers[trigger.id]
        added = {trigger.id} if fact.status == "accepted" else set()
        after = self.engine_latches()
        if fact.status == "maybe":
            added = after & {trigger.id}
        self.check_reset(event, before, added, after, only)
        self.drain()

    # -- rules: the world misbehaves -------------------------------------------------------
    @rule(
        account=st.integers(0, len(ACCOUNTS) - 1),
        method=st.sampled_from(
            ["cancel", "snapshot", "cancel_all", "cancel_order", "cancel_order_list"]
        ),
        kind=st.sampled_from(["5xx", "429", "transient", "fatal", "stall"]),
        applied=st.booleans(),
        times=st.integers(1, 3),
        retry_after_s=st.sampled_from([0.5, 3.0, 12.0]),
    )
    def venue_fault(
        self, account: int, method: str, kind: str, applied: bool, times: int, retry_after_s: float
    ) -> None:
        acc = self.venues[self.refs[account]]
        applied = applied and kind == "5xx" and method != "snapshot"
        acc.faults.append(Fault(method, kind, applied, times, retry_after_s))
        self.note(f"venue_fault {acc.ref} {method} {kind} applied={applied} x{times}")

    @rule(account=st.integers(0, len(ACCOUNTS) - 1), how=st.sampled_from(["drop", "mute", "heal"]))
    def stream_trouble(self, account: int, how: str) -> None:
        acc = self.venues[self.refs[account]]
        if how == "drop":
            acc.drop_streams()
        else:
            acc.set_silent(how == "mute")
        self.note(f"stream_trouble {acc.ref} {how}")
        self.drain()

    @rule(account=st.integers(0, len(ACCOUNTS) - 1), latency_s=st.sampled_from([0.0, 0.02, 0.3]))
    def latency(self, account: int, latency_s: float) -> None:
        acc = self.venues[self.refs[account]]
        acc.latency_s = latency_s
        self.note(f"latency {acc.ref} {latency_s}s")

    @precondition(lambda self: self.up and self.disk is not None and self.disk.armed is None)
    @rule(kind=st.sampled_from(["short", "enospc", "fsync"]))
    def disk_fault(self, kind: str) -> None:
        assert self.disk is not None
        self.disk.armed = kind
        self.note(f"disk_fault next journal write: {kind}")

    @rule(iterations=st.integers(0, 6))
    def hurry(self, iterations: int) -> None:
        """The next step's effects get only this many loop iterations before the step after."""
        self.hurry = iterations if iterations else -1
        self.note(f"hurry {iterations}")

    @rule(seconds=st.sampled_from([0.01, 0.1, 0.6, 2.0, 8.0, 35.0]))
    def advance(self, seconds: float) -> None:
        self.note(f"advance {seconds}s")
        self.settle_for(seconds)

    @precondition(lambda self: self.up)
    @rule()
    def settle(self) -> None:
        """Run until the engine is idle; then what live streams showed must be cancelled."""
        self.note("settle")
        if not self.wait_idle():
            return
        self.check_stream_cancels()

    def wait_idle(self) -> bool:
        engine = self.engine
        assert engine is not None

        async def idle() -> None:
            for _ in range(3):
                await engine.wait_idle()
                await asyncio.sleep(0.005)
            await engine.wait_idle()

        try:
            self.run(idle())
        except (TimeoutError, Stalled):
            self.violation(
                "latched means latched",
                f"the engine was still busy after {STEP_LIMIT_S} virtual seconds",
            )
            return False
        return True

    def check_stream_cancels(self) -> None:
        must, _ = self.expected_latches()
        for acc in self.venues.values():
            for order in acc.open_facts():
                clean = (
                    order.stream_epoch == acc.stream_epoch
                    and not acc.stream_silent
                    and order.faults_at_place == acc.faults_fired
                    and order.life_at_place == self.life
                    and order.placed_seq > self.restarted_at
                )
                if not clean:
                    continue
                for tid in must:
                    fact = self.triggers[tid]
                    if fact.submitted_seq < order.placed_seq and covers(fact.trigger.scope, order):
                        self.violation(
                            "latched means latched",
                            f"{order.describe()} placed under latch {tid} and shown on a live "
                            "stream is still open with the engine idle",
                        )
                        break

    # -- rules: lives ----------------------------------------------------------------------
    @precondition(lambda self: self.up)
    @rule(grace_s=st.sampled_from([0.0, 0.5, 5.0]))
    def stop(self, grace_s: float) -> None:
        self.note(f"stop grace_s={grace_s}")
        self.tick()
        self.stop_life(grace_s)

    @precondition(lambda self: self.up)
    @rule(scope=scopes, mode=modes, grace_s=st.sampled_from([0.0, 5.0]), stop_first=st.booleans())
    def stop_races_submit(self, scope: Scope, mode: Mode, grace_s: float, stop_first: bool) -> None:
        """An alert arrives while the daemon shuts down."""
        trigger = self.new_trigger(scope, mode, "kafka")
        self.note(
            f"stop_races_submit {trigger.id} {mode.value} {scope.to_json()} grace_s={grace_s} "
            f"stop_first={stop_first}"
        )
        engine = self.engine
        assert engine is not None
        if self.disk is not None:
            self.disk.armed = None
        self.tick()

        async def race() -> None:
            if stop_first:
                stop = asyncio.ensure_future(engine.stop(grace_s=grace_s))
                submit = asyncio.ensure_future(self._submit_during_stop(trigger))
            else:
                submit = asyncio.ensure_future(self._submit_during_stop(trigger))
                stop = asyncio.ensure_future(engine.stop(grace_s=grace_s))
            await asyncio.gather(stop, submit)

        try:
            self.run(race())
        except (TimeoutError, Stalled):
            self.violation("nothing acknowledged is forgotten", "stop() never returned")
        self.up = False
        self.kill_everything()
        if self.journal is not None:
            self.journal.close()

    async def _submit_during_stop(self, trigger: Trigger) -> None:
        try:
            await self._submit(trigger)
        except RuntimeError as exc:  # refused: the journal is closed or the engine stopping
            fact = self.triggers[trigger.id]
            if fact.status == "pending":
                fact.status = "refused"
            self.history.append(f"    submit {trigger.id} refused while stopping: {exc!r}")
            self.judge_settled()

    @precondition(lambda self: self.up)
    @rule(torn=st.booleans())
    def crash(self, torn: bool) -> None:
        self.note(f"crash torn_tail={torn}")
        self.tick()
        self.crash_life(torn)

    @precondition(lambda self: not self.up)
    @rule()
    def restart(self) -> None:
        self.note("restart")
        self.start_life()

    # -- invariants ------------------------------------------------------------------------
    @invariant()
    def promises_hold(self) -> None:
        if self.violations:
            self.fail()
        self.check_latches()
        if self.violations:
            self.fail()

    def check_latches(self) -> None:
        must, may = self.expected_latches()
        try:
            state, _ = replay(self.path)
        except JournalCorrupt as exc:
            self.violation("the journal reads back", str(exc))
            return
        journaled = set(state.latches)
        if self.up and self.engine is not None:
            held = self.engine_latches()
            if not must <= held or not held <= may:
                self.violation(
                    "latched means latched",
                    f"engine holds latches {sorted(held)}, expected {sorted(must)}"
                    + (f" (maybe {sorted(may - must)})" if may != must else ""),
                )
            if self.journal is not None and self.journal.is_open and journaled != held:
                self.violation(
                    "the journal reads back",
                    f"the journal's latches {sorted(journaled)} differ from the engine's "
                    f"{sorted(held)}",
                )
        elif not must <= journaled or not journaled <= may:
            self.violation(
                "the journal reads back",
                f"the journal's latches {sorted(journaled)}, expected {sorted(must)}",
            )

    def fail(self) -> None:
        self.broken = True
        lines = "\n  ".join(self.violations)
        story = "\n  ".join(self.history)
        raise AssertionError(f"promise broken:\n  {lines}\nhistory:\n  {story}")

    # -- the end of a history: quiescence --------------------------------------------------
    def teardown(self) -> None:
        try:
            if not self.broken and not self.violations:
                self.quiesce()
        finally:
            self.cleanup()

    def quiesce(self) -> None:
        """Heal the world, let the engine finish, sweep, and check what must hold at rest."""
        self.note("quiesce")
        if self.judge_later:  # every submit has returned by now: none may be left unjudged
            self.violation(
                "scope is respected",
                f"cancels never judged: {[o.describe() for o in self.judge_later]}",
            )
        for acc in self.venues.values():
            acc.heal()
            acc.set_silent(False)
        if self.disk is not None:
            self.disk.armed = None
        if not self.up:
            self.start_life()
        if self.violations:
            self.fail()
        engine = self.engine
        assert engine is not None
        if not self.wait_idle():
            self.fail()
        try:
            self.run(engine.sweep())
        except (TimeoutError, Stalled):
            self.violation("latched means latched", "a sweep never finished")
        if not self.wait_idle():
            self.fail()
        must, _ = self.expected_latches()
        for tid in sorted(must, key=lambda t: int(t[1:])):
            scope = self.triggers[tid].trigger.scope
            for acc in self.venues.values():
                for order in acc.open_facts():
                    if covers(scope, order):
                        self.violation(
                            "latched means latched",
                            f"after a sweep, {order.describe()} is open under latch {tid}",
                        )
        for tid, fact in sorted(self.triggers.items(), key=lambda kv: int(kv[0][1:])):
            if not fact.acknowledged or fact.ended:
                continue
            if fact.trigger.mode is Mode.KILL and fact.released_seq is not None:
                continue
            self.violation(
                "nothing acknowledged is forgotten",
                f"{tid} ({fact.trigger.mode.value} {fact.trigger.scope.to_json()}) was "
                "acknowledged and never reported flat, confirmed or failed",
            )
        self.check_latches()
        if self.violations:
            self.fail()

    def cleanup(self) -> None:
        try:
            if self.up and self.engine is not None:
                with contextlib.suppress(Exception):
                    self.run(self.engine.stop(grace_s=0.0), limit_s=60.0)
            self.up = False
            self.kill_everything()
            if self.journal is not None:
                self.journal.close()
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)


async def _iterations(count: int) -> None:
    """Let the loop run `count` iterations at this instant (none for a negative count)."""
    for _ in range(max(0, count)):
        await asyncio.sleep(0)


def _tmp_root() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() else None


__all__ = ["TALLY", "KillHistory", "Tally", "covers"]
