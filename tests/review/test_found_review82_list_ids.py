"""Review 82, F1: the kill knew an order list by its bare id.

Binance numbers orders per symbol (reference §1.6, "orderId uniquely identifies the order on a
symbol"); whether it numbers order lists per symbol too its docs leave open, and its list cancel
takes the symbol with `orderListId`. Under the per-symbol reading, a one-shot `cancel` whose
first look saw list BTCUSDT:7 took a list ETHUSDT:7, placed after that look, for its target and
cancelled it ("One shot is one shot"); `Snapshot.merged` kept one of two lists sharing an id;
`coverage` and `still_to_send` matched a list of the same id on another symbol.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

from killswitch.exchanges.base import BatchResult, CancelAck, Priority
from killswitch.kill.planner import CancelRequest, RequestKind, coverage, still_to_send
from killswitch.kill.record import KillState
from killswitch.model import Mode, Order, OrderList, Snapshot
from tests.fakes import BINANCE_CAPS, FakeExchange
from tests.unit.test_engine import kill_trigger, make_rig


class ListsPerSymbol(FakeExchange):
    """Binance read as numbering order lists per symbol, as it numbers orders: each symbol
    keeps a book of its own, whose lists count from 7. `after_read(n)` runs after the n-th
    read has been taken, as a bot acting between two reads."""

    def __init__(self) -> None:
        super().__init__("binance", "b1", BINANCE_CAPS, ids_per_symbol=True)
        self.books: dict[str, FakeExchange] = {}
        self.reads = 0
        self.after_read: dict[int, list[str]] = {}

    def on(self, symbol: str) -> FakeExchange:
        book = self.books.get(symbol)
        if book is None:
            book = FakeExchange("binance", "b1", BINANCE_CAPS, ids_per_symbol=True)
            book._list_ids = itertools.count(7)
            self.books[symbol] = book
        return book

    def place_list_on(self, symbol: str) -> str:
        return self.on(symbol).place_list(symbol, "L-" + symbol)

    def open_lists(self) -> set[tuple[str, str]]:
        return {(x.symbol, x.list_id) for b in self.books.values() for x in b.book.open_lists()}

    async def snapshot(
        self, symbols: Sequence[str] | None = None, *, priority: Priority = Priority.KILL
    ) -> Snapshot:
        self.reads += 1
        names = sorted(self.books) if symbols is None else [s for s in symbols if s in self.books]
        reads = [await self.books[s].snapshot([s]) for s in names]
        for symbol in self.after_read.pop(self.reads, []):
            self.place_list_on(symbol)
        return Snapshot(
            orders=tuple(o for r in reads for o in r.orders),
            lists=tuple(x for r in reads for x in r.lists),
        )

    async def cancel_all(self, symbols: Sequence[str] | None) -> CancelAck:
        assert symbols is not None  # Binance has no cancel-all without a symbol
        acks = [await self.on(s).cancel_all([s]) for s in symbols]
        return CancelAck(
            cancelled=tuple(k for a in acks for k in a.cancelled),
            lists_cancelled=tuple(k for a in acks for k in a.lists_cancelled),
        )

    async def cancel_order(self, symbol: str, order_id: str) -> CancelAck:
        return await self.on(symbol).cancel_order(symbol, order_id)

    async def cancel_orders(self, symbol: str, order_ids: Sequence[str]) -> BatchResult:
        return await self.on(symbol).cancel_orders(symbol, order_ids)

    async def cancel_order_list(self, symbol: str, list_id: str) -> CancelAck:
        return await self.on(symbol).cancel_order_list(symbol, list_id)


async def test_a_cancel_leaves_a_list_placed_after_its_first_look_that_shares_an_old_lists_id(
    tmp_path: Path,
) -> None:
    venue = ListsPerSymbol()
    assert venue.place_list_on("BTCUSDT") == "7"
    venue.after_read[1] = ["ETHUSDT"]  # placed once the first look was taken: ETHUSDT:7
    rig = await make_rig(tmp_path, {"binance": venue})
    try:
        await rig.engine.submit(kill_trigger("c1", mode=Mode.CANCEL, venues=["binance"]))
        kill = rig.engine.kill_for("c1")
        assert kill is not None
        await kill.finished.wait()

        assert kill.state is KillState.FLAT
        # Open before the trigger, cancelled; placed after the cancel looked, not its business.
        assert venue.open_lists() == {("ETHUSDT", "7")}
        assert [c.method for c in venue.on("ETHUSDT").calls] == [
            "snapshot"
        ]  # read, never cancelled
        (result,) = kill.accounts.values()
        assert result.lists_cancelled == {("BTCUSDT", "7")}
    finally:
        await rig.engine.stop()


def _list(symbol: str, list_id: str = "7") -> OrderList:
    return OrderList(symbol, list_id, "L-" + symbol, ("1", "2"), ("a", "b"))


def _legs(symbol: str, list_id: str = "7") -> tuple[Order, ...]:
    return (Order(symbol, "1", "a", list_id=list_id), Order(symbol, "2", "b", list_id=list_id))


def test_merged_reads_keep_two_lists_sharing_an_id_on_two_symbols() -> None:
    btc, eth = _list("BTCUSDT"), _list("ETHUSDT")
    merged = Snapshot(lists=(btc,)).merged(Snapshot(lists=(eth,)))
    assert set(merged.lists) == {btc, eth}
    assert set(Snapshot(lists=(btc, eth)).merged(Snapshot(lists=(btc,))).lists) == {btc, eth}


def test_a_list_cancel_covers_and_resends_only_its_own_symbols_list() -> None:
    request = CancelRequest(RequestKind.CANCEL_LIST, symbols=("BTCUSDT",), list_id="7")
    known = {o.key: o for o in (*_legs("BTCUSDT"), *_legs("ETHUSDT"))}
    assert coverage(request, known) == {("BTCUSDT", "1"), ("BTCUSDT", "2")}
    # The BTCUSDT list is gone; ETHUSDT holds a list of the same id: nothing left to send.
    others = Snapshot(orders=_legs("ETHUSDT"), lists=(_list("ETHUSDT"),))
    assert still_to_send(request, others, BINANCE_CAPS) is None
    both = Snapshot(
        orders=others.orders + _legs("BTCUSDT"), lists=(*others.lists, _list("BTCUSDT"))
    )
    assert still_to_send(request, both, BINANCE_CAPS) == request
