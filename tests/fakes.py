"""An in-process `FakeExchange`: the Exchange Protocol over a simulator `SimBook`, no sockets.

A fake, not a mock: it keeps a real book, applies cancels to it and answers the way a venue
connector does (`AlreadyGone` for an order that is not open, `CancelAck` with the ids that
went). Faults are scripted per method with `fail(...)`: an error raised before the request is
applied, or after it (`applied=True`: the outcome-unknown case). `before_call` hooks let a test
act as a rogue bot placing orders while a kill runs. Every call is logged in `calls`.

Capabilities presets mirror the venues: `BINANCE_CAPS`, `MEXC_CAPS`, `BINGX_CAPS`.

Orders are keyed by (symbol, id) as in the simulator's book. With `ids_per_symbol=True` the fake
numbers orders per symbol as Binance does, so two symbols hold the same id (off by default:
tests written before that compare bare ids).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from killswitch.exchanges import binance, bingx, mexc
from killswitch.exchanges.base import (
    AlreadyGone,
    BatchResult,
    CancelAck,
    Capabilities,
    DeadMansSwitchState,
    Fatal,
    Priority,
    VenueError,
)
from killswitch.model import (
    ExecType,
    Order,
    OrderEvent,
    OrderKey,
    OrderList,
    Snapshot,
    StreamEvent,
    StreamSubscribed,
)
from killswitch.sim.book import (
    BookEvent,
    BookEventKind,
    OrderSpec,
    SimBook,
    SimOrder,
    UnknownOrder,
)

# The connectors' own capabilities, so the fakes plan exactly as the venues do.
BINANCE_CAPS = binance.CAPABILITIES
MEXC_CAPS = mexc.MEXC_CAPABILITIES
BINGX_CAPS = bingx.CAPABILITIES


@dataclass(slots=True)
class ScriptedFault:
    """Raise `error` on the next `times` calls of `method`; `applied` applies the call first."""

    method: str
    error: VenueError
    times: int = 1
    applied: bool = False
    when: Callable[[tuple[object, ...]], bool] | None = None


@dataclass(slots=True)
class Call:
    method: str
    args: tuple[object, ...]
    result: str = ""


@dataclass(slots=True)
class FakeExchange:
    """One venue account over a `SimBook`. Implements `killswitch.exchanges.base.Exchange`."""

    venue: str = "binance"
    account: str = "main"
    capabilities: Capabilities = BINANCE_CAPS
    book: SimBook = field(init=False)
    faults: list[ScriptedFault] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    before_call: list[Callable[[str, tuple[object, ...]], None]] = field(default_factory=list)
    dms_armed: list[int] = field(default_factory=list)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    started: bool = False
    closed: bool = False
    ids_per_symbol: bool = False
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))
    _symbol_ids: dict[str, itertools.count[int]] = field(default_factory=dict)
    _list_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _queues: list[asyncio.Queue[StreamEvent]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.ids_per_symbol:
            self.book = SimBook(
                new_symbol_order_id=self._next_symbol_id,
                new_list_id=lambda: str(next(self._list_ids)),
                now_ms=lambda: 0,
            )
        else:
            self.book = SimBook(
                new_order_id=lambda: str(next(self._ids)),
                new_list_id=lambda: str(next(self._list_ids)),
                now_ms=lambda: 0,
            )
        self.book.subscribe(self._publish)

    def _next_symbol_id(self, symbol: str) -> str:
        counter = self._symbol_ids.setdefault(symbol, itertools.count(1000))
        return str(next(counter))

    # -- test helpers ------------------------------------------------------------------------
    def place(self, symbol: str, client_order_id: str = "", n: int = 1) -> list[str]:
        """Place `n` open orders on `symbol`; returns their ids."""
        return [
            self.book.place(
                OrderSpec(
                    symbol, client_order_id=f"{client_order_id}{i}" if n > 1 else client_order_id
                )
            ).order_id
            for i in range(n)
        ]

    def place_list(self, symbol: str, list_client_order_id: str = "", leg_prefix: str = "") -> str:
        legs = [
            OrderSpec(
                symbol, "SELL", "LIMIT_MAKER", Decimal(200), client_order_id=f"{leg_prefix}a"
            ),
            OrderSpec(
                symbol, "SELL", "STOP_LOSS_LIMIT", Decimal(50), client_order_id=f"{leg_prefix}b"
            ),
        ]
        lst = self.book.place_list(legs, list_client_order_id=list_client_order_id)
        return lst.list_id

    def fail(
        self,
        method: str,
        error: VenueError,
        *,
        times: int = 1,
        applied: bool = False,
        when: Callable[[tuple[object, ...]], bool] | None = None,
    ) -> None:
        """Raise `error` from the next `times` calls of `method` whose args match `when`."""
        self.faults.append(ScriptedFault(method, error, times, applied, when))

    def hold(self, method: str, gate: asyncio.Event) -> None:
        """Make calls of `method` wait for `gate` before they read or change the book."""
        self.gates[method] = gate

    def open_ids(self) -> set[str]:
        """Bare ids of the open orders (ambiguous when ids repeat across symbols)."""
        return set(self.book.orders)

    def open_keys(self) -> set[OrderKey]:
        """(symbol, id) keys of the open orders."""
        return set(self.book.open)

    def count(self, method: str) -> int:
        return sum(1 for c in self.calls if c.method == method)

    # -- protocol ----------------------------------------------------------------------------
    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True

    async def server_time_ms(self) -> int:
        return 0

    async def resync_clock(self) -> None:
        return

    async def client_ids(self, orders: Sequence[Order]) -> dict[OrderKey, str]:
        return {}  # its reads show every client id

    async def snapshot(
        self, symbols: Sequence[str] | None = None, *, priority: Priority = Priority.KILL
    ) -> Snapshot:
        if "snapshot" in self.gates:
            await self.gates["snapshot"].wait()
        fault = self._enter("snapshot", (None if symbols is None else tuple(symbols),))
        if fault is not None:
            raise fault.error
        orders = tuple(_order(o) for o in self.book.open_orders(symbols))
        lists = tuple(
            OrderList(
                symbol=x.symbol,
                list_id=x.list_id,
                list_client_order_id=x.list_client_order_id,
                order_ids=tuple(x.order_ids),
                client_order_ids=tuple(o.client_order_id for o in self.book.legs(x)),
                contingency_type=x.contingency_type,
            )
            for x in self.book.open_lists(symbols)
        )
        return Snapshot(orders, lists)

    async def cancel_all(self, symbols: Sequence[str] | None) -> CancelAck:
        args = (None if symbols is None else tuple(symbols),)
        fault = self._enter("cancel_all", args)
        if fault is not None and not fault.applied:
            raise fault.error
        if symbols is None and not self.capabilities.cancel_all_without_symbol:
            raise Fatal("cancel-all needs a symbol on this venue", venue=self.venue)
        if symbols is not None and len(symbols) > self.capabilities.cancel_all_max_symbols:
            raise Fatal("too many symbols for one cancel-all", venue=self.venue)
        lists_before = {(x.symbol, x.list_id) for x in self.book.open_lists(symbols)}
        gone = self.book.cancel_symbols(
            symbols, include_lists=self.capabilities.cancel_all_covers_lists
        )
        lists_after = {(x.symbol, x.list_id) for x in self.book.open_lists(symbols)}
        if fault is not None:
            raise fault.error
        self._log_result(f"cancelled={len(gone)}")
        return CancelAck(
            cancelled=tuple((o.symbol, o.order_id) for o in gone),
            lists_cancelled=tuple(sorted(lists_before - lists_after)),
        )

    async def cancel_order(self, symbol: str, order_id: str) -> CancelAck:
        fault = self._enter("cancel_order", (symbol, order_id))
        if fault is not None and not fault.applied:
            raise fault.error
        try:
            gone = self.book.cancel(order_id, symbol=symbol)
        except UnknownOrder:
            self._log_result("gone")
            raise AlreadyGone("Unknown order sent.", venue=self.venue, code=-2011) from None
        if fault is not None:
            raise fault.error
        self._log_result(f"cancelled={len(gone)}")
        return CancelAck(cancelled=tuple((o.symbol, o.order_id) for o in gone))

    async def cancel_orders(self, symbol: str, order_ids: Sequence[str]) -> BatchResult:
        fault = self._enter("cancel_orders", (symbol, tuple(order_ids)))
        if fault is not None and not fault.applied:
            raise fault.error
        cancelled: list[str] = []
        missing: list[str] = []
        for order_id in order_ids:
            try:
                cancelled.extend(o.order_id for o in self.book.cancel(order_id, symbol=symbol))
            except UnknownOrder:
                missing.append(order_id)
        if fault is not None:
            raise fault.error
        return BatchResult(cancelled=tuple(cancelled), gone=tuple(missing))

    async def cancel_order_list(self, symbol: str, list_id: str) -> CancelAck:
        fault = self._enter("cancel_order_list", (symbol, list_id))
        if fault is not None and not fault.applied:
            raise fault.error
        open_list = self.book.lists.get(list_id)
        if open_list is None or open_list.symbol != symbol:
            raise AlreadyGone("Unknown order list sent.", venue=self.venue, code=-2011)
        gone = self.book.cancel_list(list_id)
        if fault is not None:
            raise fault.error
        return CancelAck(
            cancelled=tuple((o.symbol, o.order_id) for o in gone),
            lists_cancelled=((symbol, list_id),),
        )

    async def arm_dead_mans_switch(self, timeout_s: int) -> DeadMansSwitchState:
        fault = self._enter("arm_dead_mans_switch", (timeout_s,))
        if fault is not None:
            raise fault.error
        if not self.capabilities.dead_mans_switch:
            raise Fatal("no dead man's switch on this venue", venue=self.venue)
        self.dms_armed.append(timeout_s)
        return DeadMansSwitchState(active=True, trigger_time_s=timeout_s)

    async def disarm_dead_mans_switch(self) -> DeadMansSwitchState:
        self._enter("disarm_dead_mans_switch", ())
        return DeadMansSwitchState(active=False)

    async def user_stream(self) -> AsyncIterator[StreamEvent]:
        queue: asyncio.Queue[StreamEvent] = asyncio.Queue()
        self._queues.append(queue)
        try:
            yield StreamSubscribed()
            while True:
                yield await queue.get()
        finally:
            self._queues.remove(queue)

    # -- internals ---------------------------------------------------------------------------
    def _enter(self, method: str, args: tuple[object, ...]) -> ScriptedFault | None:
        self.calls.append(Call(method, args))
        for hook in list(self.before_call):
            hook(method, args)
        for fault in self.faults:
            if (
                fault.method == method
                and fault.times > 0
                and (fault.when is None or fault.when(args))
            ):
                fault.times -= 1
                self.calls[-1].result = fault.error.kind
                return fault
        return None

    def _log_result(self, result: str) -> None:
        if self.calls and not self.calls[-1].result:
            self.calls[-1].result = result

    def _publish(self, event: BookEvent) -> None:
        if event.kind is BookEventKind.LIST_STATUS or event.order is None:
            return
        order = event.order
        exec_type = {
            BookEventKind.NEW: ExecType.NEW,
            BookEventKind.TRADE: ExecType.TRADE,
            BookEventKind.CANCELED: ExecType.CANCELED,
        }[event.kind]
        stream_event = OrderEvent(
            symbol=order.symbol,
            order_id=order.order_id,
            client_order_id=order.client_order_id,
            exec_type=exec_type,
            status=order.status,
            is_open=order.is_open,
            event_time_ms=event.time_ms,
            list_id=order.list_id,
        )
        for queue in self._queues:
            queue.put_nowait(stream_event)


def _order(o: SimOrder) -> Order:
    return Order(
        symbol=o.symbol,
        order_id=o.order_id,
        client_order_id=o.client_order_id,
        side=o.side,
        order_type=o.order_type,
        price=str(o.price),
        orig_qty=str(o.orig_qty),
        status=o.status,
        list_id=o.list_id,
    )


@dataclass(slots=True)
class FakeClock:
    """Monotonic time that moves only when the engine sleeps: backoffs take no wall time."""

    now: float = 1000.0
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def clock(self) -> float:
        """The same time, as a method: for budgets given `clock=` and `sleep=` separately."""
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@dataclass(slots=True)
class StaticTracker:
    """A tracker view for unit tests: what it holds and whether to trust it."""

    held: Snapshot = field(default_factory=Snapshot)
    is_trusted: bool = True

    @property
    def trusted(self) -> bool:
        return self.is_trusted

    def as_snapshot(self) -> Snapshot:
        return self.held


class EventLog:
    """An event sink that keeps every record, for assertions."""

    def __init__(self) -> None:
        self.records: list[dict[str, object]] = []

    def emit(self, event: dict[str, object]) -> None:
        self.records.append(event)

    def of(self, event_type: str) -> list[dict[str, object]]:
        return [r for r in self.records if r["type"] == event_type]
