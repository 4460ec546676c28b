"""BingX OCO lists: reading them page by page, the leg <-> list index (and the list events an
order event means), and settling legs the venue would not cancel by id through `oco/cancel`.

Functions of the connector (`ListsHost`), moved out of `BingxExchange` as they were."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from killswitch.exchanges.base import (
    MALFORMED_ANSWER,
    AlreadyGone,
    Fatal,
    OutcomeUnknown,
)
from killswitch.exchanges.bingx.errors import read_found_nothing
from killswitch.exchanges.bingx.parse import (
    _OcoList,
    order_id_str,
    parse_execution_report,
    parse_oco_page,
)
from killswitch.exchanges.bingx.rest import RestHost
from killswitch.exchanges.bingx.stream import stream_lost
from killswitch.exchanges.bingx.venue import (
    OCO_CANCEL,
    OCO_MAX_PAGES,
    OCO_OPEN_LIST,
    OCO_PAGE_SIZE,
)
from killswitch.exchanges.budget import Priority
from killswitch.exchanges.paths import LearnedPaths
from killswitch.model import (
    ListEvent,
    StreamEvent,
)

log = logging.getLogger(__name__)


class ListsHost(RestHost, Protocol):
    """What the OCO list code reads and keeps on the connector (`BingxExchange`)."""

    _list_legs: dict[str, tuple[str, ...]]  # OCO list id -> leg order ids
    _leg_list: dict[str, str]  # leg order id -> OCO list id
    _list_symbol: dict[str, str]  # OCO list id -> symbol
    _list_time: dict[str, int]  # OCO list id -> when placed (venue ms)
    # The last account-wide cancel-all: (monotonic when acknowledged, venue ms before which a
    # list placed was open when it acted, lists known open before it was sent).
    _cancel_all_acked: tuple[float, int, frozenset[str]] | None
    _oco_read: tuple[float, list[_OcoList], bool] | None
    _oco_page_most: dict[str, tuple[int, int]]  # by shape: most lists, items a page showed

    @property
    def learned(self) -> LearnedPaths: ...
    @property
    def _oco_read_lock(self) -> asyncio.Lock: ...


# Full reads of the lists (each checked by the start of the next) before a multi-page read
# that keeps moving is called incomplete: the engine looks again.
OCO_MAX_PASSES = 3


@dataclass(slots=True)
class _Pass:
    """One read of `oco/openOrderList` from page 1 on: its lists (legs of a list split over
    two pages joined), the items (leg ids: `OcoPage.items`) each page showed, and whether a
    short page ended it."""

    lists: dict[str, _OcoList] = field(default_factory=dict)
    pages: list[tuple[str, ...]] = field(default_factory=list)
    ended: bool = False

    def items(self, pages: int | None = None) -> set[str]:
        return {item for page in self.pages[:pages] for item in page}

    def repeats(self) -> bool:
        """Did an item show on two pages (the pages moved while they were read)?"""
        return len(self.items()) < sum(len(page) for page in self.pages)


async def _read_page(ex: ListsHost, read: _Pass, priority: Priority) -> None:
    page_index = len(read.pages) + 1
    asked = time.monotonic()
    try:
        data = await ex.rest.request(
            "GET",
            OCO_OPEN_LIST,
            [("pageIndex", str(page_index)), ("pageSize", str(OCO_PAGE_SIZE))],
            priority=priority,
        )
    except AlreadyGone as exc:
        raise OutcomeUnknown(exc.msg, venue=ex.venue, account=ex.account) from exc
    except Fatal as exc:
        if not read_found_nothing(exc, None):
            raise
        read.pages.append(())  # "No data": an empty page
        read.ended = True
        return
    page = parse_oco_page(data)
    if ex.learned.oco_list_shape != page.shape:
        ex.learned.learn("oco_list_shape", page.shape)
    for oco_list in page.lists:
        prior = read.lists.get(oco_list.list_id)
        if prior is None:
            read.lists[oco_list.list_id] = oco_list
        else:  # a list's legs split over two pages of legs
            read.lists[oco_list.list_id] = replace(prior, legs=prior.legs + oco_list.legs)
    read.pages.append(page.items)
    saw_open_after_cancel_all(ex, ((x.list_id, placed_ms(x)) for x in page.lists), asked)
    # What a page shows of one shape says nothing of the other's unit (lists or legs).
    most = ex._oco_page_most.get(page.shape, (0, 0))
    if not page.full(OCO_PAGE_SIZE, most):
        read.ended = True
    seen = (max(most[0], page.lists_shown), max(most[1], len(page.items)))
    ex._oco_page_most[page.shape] = seen


async def _read_on(ex: ListsHost, read: _Pass, priority: Priority) -> bool:
    """Read `read` on to its short page; False when the pages never ended."""
    while not read.ended:
        if len(read.pages) >= OCO_MAX_PAGES:
            log.warning("bingx oco/openOrderList never ended account=%s: incomplete", ex.account)
            return False
        await _read_page(ex, read, priority)
    return True


async def open_oco_lists(ex: ListsHost, priority: Priority) -> tuple[list[_OcoList], bool]:
    """Every open OCO list, page by page; and whether the read surely shows every list that
    was open all through it.

    One page is one answer of the venue: complete when it is short. More pages are read at
    different times, and the venue's order moves under them: a list leaving an earlier page
    (filled, cancelled by the desk, by our own cancels) moves every later one a place back,
    and the one that stood first on the next page is never shown; a list placed ahead moves
    them on (an item shows twice). Whether `trade/openOrders` shows OCO legs at all is
    undocumented (reference §3.7), so a skipped list may be seen nowhere else: a read that
    could have skipped one is never called complete.

    Which unit `pageSize` counts in the grouped shape is undocumented (lists, or legs as in
    the flat shape): a page ends the read only when it is short in both (`OcoPage.full`).
    Items below are the venue's units (lists or legs); the check follows leg ids, which
    serves both: every list shows a leg (or stands for itself) and never changes its legs, so
    a list shown twice shows a leg twice, and a read that shows a leg shows its list.

    When is a read of pages 1..m (read at t_1 < ... < t_m, page m short) sure? Take the
    venue's order of items as stable: items come and go, but two items never swap. If no
    item showed on two pages, and every item shown on pages 1..m-1 is still open at t_m, the
    read skipped no item L open all through it. Proof: were L skipped, let b_i be the number
    of items ahead of L at t_i. L is not on page 1, so b_1 >= S (the page size); and page m
    reaches the end, so b_m < (m-1)S. Call L beyond page i when b_i >= iS: it is beyond
    page 1 and not beyond page m. Take the first j with L beyond page j but not beyond page
    j+1; as L is not on page j+1 either, b_{j+1} < jS. L was beyond every page i <= j: all S
    items of page i were ahead of L at t_i. These jS items are distinct (none showed twice),
    stay ahead of L (the order is stable), and are all still open at t_{j+1} (they are at
    t_m): so b_{j+1} >= jS. Contradiction.

    "Still open at t_m" is checked by reading again: a second read (its page 1 sent after
    page m answered) that shows every item of pages 1..m-1 stops as soon as it has shown
    them all (it reads at most m-1 pages). When it cannot vouch for them (an item gone, or
    moved on past page m-1) or the first read showed an item twice, the second read is read
    on to its end and is checked by a third the same way, up to `OCO_MAX_PASSES` full reads;
    then the answer is incomplete (never proof of flat; the engine looks again), with the
    lists of the last full read. Lists placed during a read may be missing from it, as from
    any one-page answer: a list that was open before the read began is never.

    The page size S is what the venue serves, which may be less than we ask (`OcoPage.full`):
    the proof holds for any S the venue keeps (of at least `MIN_OCO_PAGE` items), and a page
    is called short only when it is short of every page size the venue could be keeping.

    Costs: a first page under `MIN_OCO_PAGE` items, or shorter than the most a page of the
    account has shown, is one request (every final check of a kill that left no list, and
    accounts with a few lists); one as long as that may be a capped one, and costs the next
    page and a read of page 1 that vouches for it: three. An m-page read of a quiet book
    costs m + (m-1) or fewer. What we cancelled ourselves is not excused from the check: a
    cancel answered during the read may have moved the pages as much as any other.
    """
    read = _Pass()
    for passes in range(1, OCO_MAX_PASSES + 1):
        if not await _read_on(ex, read, priority):
            return list(read.lists.values()), False
        if len(read.pages) == 1:
            return list(read.lists.values()), True
        witness = _Pass()
        owed = read.items(len(read.pages) - 1)
        if not read.repeats():
            while not witness.ended and len(witness.pages) < len(read.pages) - 1:
                await _read_page(ex, witness, priority)
                if owed <= witness.items():
                    return list(read.lists.values()), True
        if passes == OCO_MAX_PASSES:
            break
        log.info(
            "bingx oco/openOrderList moved while read account=%s pages=%d: reading again",
            ex.account,
            len(read.pages),
        )
        read = witness
    log.warning(
        "bingx oco/openOrderList kept moving account=%s: incomplete after %d reads",
        ex.account,
        OCO_MAX_PASSES,
    )
    return list(read.lists.values()), False


def placed_ms(oco_list: _OcoList) -> int:
    """When `oco_list` was placed (venue ms; 0 when no leg says)."""
    return min((leg.time_ms for leg in oco_list.legs if leg.time_ms > 0), default=0)


def saw_open_after_cancel_all(
    ex: ListsHost, lists: Iterable[tuple[str, int]], asked: float
) -> None:
    """Learn from lists (id, when placed) the venue showed open to a request asked for at
    `asked` (monotonic): one open before the last cancel-all acted (known open before it was
    sent, or placed before the venue time it acted at), shown open by a request asked for
    after its acknowledgement (so served after it), was not covered by it.

    Every answer counts: a page of any read, an `oco/cancel` or a batch that found a list's
    leg open. Lists never reopen, so the record stays good until the next cancel-all (and
    corrects a "covers" learned in error)."""
    acked = ex._cancel_all_acked
    if acked is None or asked <= acked[0]:
        return
    _, acted_ms, before = acked
    if any(lid in before or 0 < when < acted_ms for lid, when in lists):
        ex.learned.learn("cancel_all_covers_lists", False)


def index_lists(ex: ListsHost, lists: list[_OcoList], complete: bool) -> None:
    """Keep the leg <-> list maps from a read of the lists (`complete`: of all of them)."""
    list_legs = {x.list_id: tuple(leg.order_id for leg in x.legs) for x in lists}
    placed = {x.list_id: placed_ms(x) for x in lists}
    if complete:
        # Every complete OCO read lists all open lists: it replaces what we knew.
        ex._list_legs = list_legs
        ex._leg_list = {leg: lid for lid, legs in list_legs.items() for leg in legs}
        ex._list_symbol = {x.list_id: x.symbol for x in lists}
        ex._list_time = placed
    else:
        ex._list_legs.update(list_legs)
        ex._leg_list.update({leg: lid for lid, legs in list_legs.items() for leg in legs})
        ex._list_symbol.update({x.list_id: x.symbol for x in lists})
        ex._list_time.update(placed)


def may_be_refused_leg(ex: ListsHost, order_id: str) -> bool:
    """Could a "gone" answer for `order_id` be a refused OCO leg? Yes for a known leg; and
    for any id while the account has not shown that leg ids are taken (a list placed since
    our last read of the lists is not known yet)."""
    return order_id in ex._leg_list or ex.learned.leg_id_cancels_list is not True


async def lists_read_after(
    ex: ListsHost, after: float, priority: Priority
) -> tuple[list[_OcoList], bool]:
    """The open OCO lists, from a read that started after `after` (monotonic): one read
    serves every caller waiting at once."""
    async with ex._oco_read_lock:
        cached = ex._oco_read
        if cached is not None and cached[0] > after:
            return cached[1], cached[2]
        started = time.monotonic()
        lists, complete = await open_oco_lists(ex, priority)
        index_lists(ex, lists, complete)
        ex._oco_read = (started, lists, complete)
        return lists, complete


async def settle_legs(
    ex: ListsHost, symbol: str, legs: set[str], priority: Priority, *, batch: bool = False
) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """Ids the venue called gone: re-read the open lists; cancel through `oco/cancel` the
    lists still open that hold one of them. Returns (list ids cancelled, their leg ids), or
    None when every one really was gone."""
    lists, _ = await lists_read_after(ex, time.monotonic(), priority)
    still_open = {x.list_id: x for x in lists if any(leg.order_id in legs for leg in x.legs)}
    if not still_open:
        return None
    if batch:
        ex.learned.learn("leg_id_cancels_list", False)
    log.info(
        "bingx OCO legs refused by id account=%s lists=%d: cancelling through oco/cancel",
        ex.account,
        len(still_open),
    )
    acks = await asyncio.gather(
        *(oco_cancel(ex, x.legs[0].order_id, priority) for x in still_open.values()),
        return_exceptions=True,
    )
    done_lists: list[str] = []
    done_legs: list[str] = []
    for oco_list, ack in zip(still_open.values(), acks, strict=True):
        if isinstance(ack, AlreadyGone) or ack is None:
            done_lists.append(oco_list.list_id)
            done_legs.extend(leg.order_id for leg in oco_list.legs)
        elif isinstance(ack, BaseException):
            raise ack
    return tuple(done_lists), tuple(done_legs)


async def oco_cancel(ex: ListsHost, leg_id: str, priority: Priority) -> None:
    # Looked up before it is sent: the leg's stream event may forget its list first.
    list_id = ex._leg_list.get(leg_id)
    placed = ex._list_time.get(list_id, 0) if list_id is not None else 0
    asked = time.monotonic()
    await ex.rest.request("POST", OCO_CANCEL, [("orderId", leg_id)], priority=priority)
    # Cancelled: it was open when the venue took this (a list already gone is an error).
    if list_id is not None:
        saw_open_after_cancel_all(ex, [(list_id, placed)], asked)


def forget_list(ex: ListsHost, list_id: str) -> None:
    ex._list_symbol.pop(list_id, None)
    for order_id in ex._list_legs.pop(list_id, ()):
        ex._leg_list.pop(order_id, None)


def order_events(ex: ListsHost, data: dict[str, Any]) -> list[StreamEvent]:
    """The events one `spot.executionReport` payload means; `Transient` if unreadable."""
    try:
        order_id = order_id_str(data.get("i"))
        list_id = ex._leg_list.get(order_id)
        event = parse_execution_report(data, list_id)
    except MALFORMED_ANSWER as exc:
        # An order event we cannot read may hide an open order: end the stream so the
        # supervisor resnapshots, rather than skip it.
        raise stream_lost(ex, f"malformed executionReport: {type(exc).__name__}") from exc
    if list_id is None or event.is_open:
        return [event]
    # One OCO leg done ends the list (the other leg is cancelled with it) [BX-DOC].
    legs = ex._list_legs.get(list_id, (order_id,))
    forget_list(ex, list_id)
    return [
        event,
        ListEvent(
            symbol=event.symbol,
            list_id=list_id,
            list_client_order_id="",
            is_open=False,
            order_ids=legs,
            event_time_ms=event.event_time_ms,
        ),
    ]
