"""MEXC's open-orders reads, and what each may prove (reference §2.3).

`GET /api/v3/openOrders`'s table takes one symbol. Unverified, each handled under every
reading: the read without a symbol (tried first; checked against the known symbols read by
name; retired when refused as "symbol mandatory" or caught answering a subset), and a list of
up to five comma-separated symbols (only a changelog promises it). A list is trusted for each
symbol it names only up to the length one was seen to answer: a probe list (beside one-symbol
reads, or first when they would be many) that showed orders on each of its first two or more
symbols answers at least that far (one symbol's orders prove nothing: a list might answer its
first or its last symbol only). A list
refused as a bad symbol (when no symbol in it is itself refused), or answering a symbol it did
not name, is never sent again. A known symbol MEXC calls bad is looked up in `exchangeInfo`:
gone from it (delisted), account-wide reads no longer check it, and a read naming it is never
complete; listed, it is read alone from then on, and no account-wide read proves flat while it
cannot be read.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from killswitch.exchanges.base import (
    BAD_SYMBOL_CODES,
    Capabilities,
    Fatal,
    OutcomeUnknown,
    VenueError,
)
from killswitch.exchanges.budget import Priority
from killswitch.exchanges.clock import ServerClock
from killswitch.exchanges.mexc.parse import AUTH_CODES, MAX_SYMBOLS_PER_CALL, _rows
from killswitch.exchanges.rest import SignedRest
from killswitch.exchanges.spot_v3 import text_id

log = logging.getLogger(__name__)

OPEN_ORDERS = "/api/v3/openOrders"
# Missing-parameter codes: MEXC's (700004, "Mandatory parameter '...' was not sent") and the
# Binance one MEXC's table copies (-1102).
MISSING_PARAM_CODES = frozenset({700004, -1102})
# An order this much younger than a read may have been placed between it and its check.
_PLACED_MEANWHILE_MS = 2_000
# Requests a read without a symbol's check may add: a kill's read checks every known symbol, up
# to `_KILL_CHECK_READS` requests (120 weight of the endpoint's 500 per 10 s; review 40: one
# request per known symbol, unbounded, was a burst past it); past that it proves nothing flat
# (review 41). A background read (a stream reconcile) checks `_CHECK_READS`, in turn.
_CHECK_READS = 2
_KILL_CHECK_READS = 40
# What MEXC says of a symbol it does not take.
# How often `exchangeInfo` is asked again whether a delisted symbol is listed again.
_RELIST_CHECK_S = 60.0
_MISSING_WORDS = ("mandatory", "required", "must be sent", "not sent", "empty")


def symbol_required(exc: VenueError) -> bool:
    """Does this refusal say, in the venue's words, that `symbol` must be sent?"""
    msg = exc.msg.lower()
    if "symbol" not in msg:
        return False
    return exc.code in MISSING_PARAM_CODES or any(word in msg for word in _MISSING_WORDS)


def _key(row: Any) -> tuple[str, str]:
    return str(row["symbol"]), text_id(row["orderId"])


def _keys(rows: list[Any]) -> set[tuple[str, str]]:
    return {_key(row) for row in rows}


def _refusal(exc: VenueError) -> bool:
    """A 4xx that is not about the key: the request's form or symbol was refused."""
    status = exc.http_status
    return exc.code not in AUTH_CODES and status is not None and 400 <= status < 500


def with_checks(rows: list[Any], checked: list[Any], read_at: int) -> tuple[list[Any], list[Any]]:
    """The rows of a read without a symbol with those its check by symbol found that it did not
    show; and the orders it left out that are older than both reads (one placed meanwhile
    proves nothing): while there is one, the read was not whole."""
    shown = _keys(rows)
    left_out = []
    for row in checked:
        if _key(row) not in shown:
            rows.append(row)
            if int(row.get("time") or 0) < read_at - _PLACED_MEANWHILE_MS:
                left_out.append(row)
    return rows, left_out


class _ListRefused(Exception):
    """A list read refused (a 4xx); `bad_symbol` when as a bad symbol."""

    def __init__(self, bad_symbol: bool) -> None:
        super().__init__("list refused")
        self.bad_symbol = bad_symbol


class OpenOrderReads:
    """The read side of `MexcExchange` (see the module docstring)."""

    rest: SignedRest
    account: str
    clock: ServerClock
    capabilities: Capabilities

    def _init_reads(self, symbols_hint: Sequence[str]) -> None:
        self.known_symbols: set[str] = set(symbols_hint)
        self._no_symbol_refused = False  # the read without a symbol is not used again
        self._one_symbol_reads = False  # lists are refused, or answer symbols not named
        self._list_answers = 1  # lists this long or shorter answer each symbol they name
        self._unreadable: set[str] = set()  # known symbols MEXC refused by name, still listed
        self._busy: list[str] = []  # symbols the last read showed orders on: what a probe reads
        self._refused_list: set[str] = set()  # the list whose refusal made reads one per request
        self._delisted_symbols: set[str] = set()  # refused, and not in exchangeInfo
        self._delisted_asked: dict[str, float] = {}  # when exchangeInfo was last asked of one
        self._check_from = 0  # where the next check of the read without a symbol starts

    async def _read_every_symbol(self, priority: Priority) -> tuple[object, list[Any], bool]:
        """`openOrders` without a symbol, and beside it (the same round) the symbols we know of
        read by name, as many as the priority allows, in turn. Returns its answer (or error),
        the rows of the check, and whether the check read every known symbol."""
        known = sorted(self.known_symbols)
        reads = _KILL_CHECK_READS if priority is Priority.KILL else _CHECK_READS
        unread = sorted(self._unreadable)
        retried = unread[:reads]
        reads -= len(retried)
        per_request = 1 if self._one_symbol_reads else self._list_answers
        probe: Sequence[str] = known
        if (
            not self._probe_pick(known)
            or (reads - 1) * per_request < len(known) <= reads * per_request
        ):
            probe = ()  # no probe, or one that would leave a known symbol unread
        elif reads > 1:
            reads -= 1  # the probe list
        take = min(len(known), reads * per_request)
        start = self._check_from % len(known) if known else 0
        chosen = (known[start:] + known[:start])[:take]
        self._check_from = start + take
        whole, checks, *retries = await asyncio.gather(
            self.rest.request("GET", OPEN_ORDERS, weight=3, priority=priority),
            self._read_symbols(chosen, priority, probe=probe),
            *(self._read_symbol(symbol, priority) for symbol in retried),
            return_exceptions=True,
        )
        rows: list[Any] = []
        answered = take == len(known) and len(retried) == len(unread)
        for outcome in (checks, *retries):
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
            if isinstance(outcome, VenueError):
                log.info("openOrders check failed account=%s error=%s", self.account, outcome)
                answered = False
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                assert isinstance(outcome, list)
                rows.extend(outcome)
        if isinstance(whole, asyncio.CancelledError):
            raise whole
        return whole, rows, answered

    def _refused(self, exc: Fatal | OutcomeUnknown) -> None:
        """Raise `exc` unless it is a refusal of the read without a symbol (a 4xx that is not
        about the key): then the known symbols are read this time. Only the venue's own "symbol
        is mandatory" is its rule, remembered; any other (a proxy's 404, a passing 400) may be
        gone next time. A 5xx, a timeout or an unreadable answer proves nothing."""
        if not _refusal(exc):
            raise exc
        if symbol_required(exc):
            self._retire_no_symbol_read()
        log.warning(
            "openOrders without symbol refused account=%s code=%s%s: reading known symbols",
            self.account,
            exc.code,
            " (symbol required)" if self._no_symbol_refused else "",
        )

    def _retire_no_symbol_read(self) -> None:
        self._no_symbol_refused = True
        self.capabilities = replace(self.capabilities, open_orders_without_symbol=False)

    async def _confirm_subset(self, left_out: list[Any], priority: Priority) -> None:
        """A read without a symbol left out orders its check showed open: read it again, then
        those symbols by name. An order still open then was open while the second read was
        answered (an order never reopens): it too left it out, and it is never used again. A
        race (an order cancelled or filled between the first two reads) confirms nothing."""
        symbols = sorted({str(row["symbol"]) for row in left_out})
        try:
            answer = await self.rest.request("GET", OPEN_ORDERS, weight=3, priority=priority)
            again = _keys(_rows(answer, self.account))
            still = _keys(await self._read_symbols(symbols, priority, lists=False))
        except VenueError as exc:
            log.info("openOrders subset check failed account=%s error=%s", self.account, exc)
            return
        if any(_key(row) in still and _key(row) not in again for row in left_out):
            self._retire_no_symbol_read()
            log.warning(
                "openOrders without symbol answers a subset account=%s: reading known symbols "
                "from now on, and an account-wide read proves nothing flat",
                self.account,
            )

    def _probe_pick(self, symbols: Sequence[str]) -> list[str]:
        """Up to five of `symbols` for a probe list, those the last read showed orders on first
        (a list teaches only as far as its last symbol with an order): longer than what lists
        are trusted with, or none."""
        if self._one_symbol_reads or self._list_answers >= MAX_SYMBOLS_PER_CALL:
            return []
        wanted = [s for s in dict.fromkeys(symbols) if s not in self._unreadable]
        busy = set(self._busy)
        pick = ([s for s in wanted if s in busy] + [s for s in wanted if s not in busy])[
            :MAX_SYMBOLS_PER_CALL
        ]
        return pick if len(pick) > self._list_answers else []

    async def _read_symbols(
        self,
        symbols: Sequence[str],
        priority: Priority,
        *,
        probe: Sequence[str] = (),
        lists: bool = True,
    ) -> list[Any]:
        """The open orders of `symbols`: in lists as long as lists are trusted with, else one
        per request; with `probe` (its candidates), a probe list beside them, or, for more than
        ten symbols, first and alone, so that what it teaches serves the rest (see the module
        docstring). The probe's own rows count only where it is trusted."""
        listed = [s for s in dict.fromkeys(symbols) if s not in self._unreadable]
        alone = [s for s in dict.fromkeys(symbols) if s in self._unreadable]
        pick = self._probe_pick(probe) if lists else []
        rows: list[Any] = []
        if pick and len(listed) > 2 * MAX_SYMBOLS_PER_CALL:
            taught = await self._probe(pick, priority)
            if taught is not None and len(pick) <= self._list_answers:
                # trusted now: its symbols are read
                rows = [row for row in taught if str(row["symbol"]) in listed]
                listed = [s for s in listed if s not in pick]
            pick = []
        size = 1 if self._one_symbol_reads or not lists else self._list_answers
        chunks = [listed[i : i + size] for i in range(0, len(listed), size)]
        outcomes = await asyncio.gather(
            *(self._read_chunk(chunk, priority) for chunk in chunks),
            *(self._read_symbol(s, priority) for s in alone),
            *([self._probe(pick, priority)] if pick else []),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
        for outcome in outcomes[: len(chunks) + len(alone)]:
            if isinstance(outcome, BaseException):
                raise outcome
            rows.extend(outcome)
        return rows

    async def _probe(self, pick: list[str], priority: Priority) -> list[Any] | None:
        """Send a probe list and learn from it; its rows, or None when it taught nothing."""
        try:
            answer = await self._read_list(pick, priority)
        except _ListRefused as refused:
            self._list_refusal(pick, refused)
            return None
        except VenueError:
            return None
        self._learn(pick, answer)
        return answer

    async def _read_chunk(self, chunk: list[str], priority: Priority) -> list[Any]:
        """One symbol, or a trusted list; a list refused is read one symbol per request."""
        if len(chunk) == 1:
            return await self._read_symbol(chunk[0], priority)
        try:
            return await self._read_list(chunk, priority)
        except _ListRefused as exc:
            refused = exc
        rows = await asyncio.gather(
            *(self._read_symbol(s, priority) for s in chunk), return_exceptions=True
        )
        self._list_refusal(chunk, refused)
        found: list[Any] = []
        for part in rows:
            if isinstance(part, BaseException):
                raise part
            found.extend(part)
        return found

    def _list_refusal(self, chunk: list[str], refused: _ListRefused) -> None:
        """A list refused as a bad symbol is the read's rule, unless a symbol of it is itself
        one MEXC refuses: then that symbol, read alone from now on, explains it (also when a
        read by name finds it out later: `_read_symbol`)."""
        explained = (self._unreadable | self._delisted_symbols) & set(chunk)
        if refused.bad_symbol and not explained and not self._one_symbol_reads:
            self._one_symbol_reads = True
            self._refused_list = set(chunk)
            log.warning(
                "openOrders of several symbols refused account=%s: one per request from now on",
                self.account,
            )

    async def _read_list(self, chunk: list[str], priority: Priority) -> list[Any]:
        """A comma list's open orders. Raises `_ListRefused` on a refusal (a 4xx not about the
        key); a list answering a symbol it did not name is never sent again."""
        try:
            answer = await self.rest.request(
                "GET", OPEN_ORDERS, [("symbol", ",".join(chunk))], weight=3, priority=priority
            )
        except (Fatal, OutcomeUnknown) as exc:
            if not _refusal(exc):
                raise
            raise _ListRefused(exc.code in BAD_SYMBOL_CODES) from exc
        rows = _rows(answer, self.account)
        strays = {str(row["symbol"]) for row in rows} - set(chunk)
        if strays:
            self._one_symbol_reads = True
            log.warning(
                "openOrders of several symbols answered others account=%s: one per request "
                "from now on",
                self.account,
            )
            raise _ListRefused(False)
        return rows

    def _learn(self, pick: list[str], answer: list[Any]) -> None:
        """A list that showed orders on each of its first two or more symbols answers (at least)
        that far: lists that long are trusted. One symbol's orders teach nothing: a reading
        where a list answers one symbol of it (the first, or the last) shows that too; and a
        gap (orders on its first and last only) could hide a reading that skips symbols."""
        shown = {str(row["symbol"]) for row in answer}
        answered = 0  # its first symbols, each with an order: no gap a reading could hide in
        while answered < len(pick) and pick[answered] in shown:
            answered += 1
        if answered < 2:
            return
        if answered > self._list_answers:
            self._list_answers = answered
            log.info(
                "openOrders lists of %d symbols answer each account=%s", answered, self.account
            )

    async def _read_symbol(self, symbol: str, priority: Priority) -> list[Any]:
        """One symbol's open orders; a read MEXC refuses as a bad symbol fails (see
        `symbol_refused`): a symbol it could not read is never taken as one with nothing open."""
        try:
            answer = await self.rest.request(
                "GET", OPEN_ORDERS, [("symbol", symbol)], weight=3, priority=priority
            )
        except (Fatal, OutcomeUnknown) as exc:
            if exc.code in BAD_SYMBOL_CODES:
                await self.symbol_refused(symbol, priority)
            raise
        if symbol in self._unreadable:
            self._unreadable.discard(symbol)
            self.known_symbols.add(symbol)
        return _rows(answer, self.account)

    async def symbol_refused(self, symbol: str, priority: Priority) -> None:
        """MEXC refused `symbol` as a bad symbol. Gone from its `exchangeInfo` (delisted), it is
        no longer checked by account-wide reads, and a read naming it is never complete;
        listed (a symbol its API does not serve), it is read alone from now on, and no
        account-wide read proves flat while it cannot be read. Either way it explains a list
        refused for it."""
        self.known_symbols.discard(symbol)
        if symbol in self._refused_list:
            self._one_symbol_reads = False  # the list was refused for this symbol
            self._refused_list = set()
        if await self._delisted(symbol, priority):
            if symbol not in self._delisted_symbols:
                log.warning(
                    "openOrders symbol=%s refused and not in exchangeInfo account=%s: "
                    "delisted, no longer checked",
                    symbol,
                    self.account,
                )
            self._unreadable.discard(symbol)
            self._delisted_symbols.add(symbol)
            self._delisted_asked[symbol] = time.monotonic()
            return
        if symbol not in self._unreadable:
            log.warning(
                "openOrders symbol=%s refused as a bad symbol account=%s: read alone from now "
                "on; no account-wide read proves flat while it fails",
                symbol,
                self.account,
            )
        self._unreadable.add(symbol)

    async def _still_delisted(self, symbol: str, priority: Priority) -> bool:
        """Is `symbol` one found delisted, and not listed again since? `exchangeInfo` is asked
        again at most once a minute per symbol; listed again, it is read as any other."""
        if symbol not in self._delisted_symbols:
            return False
        now = time.monotonic()
        if now - self._delisted_asked.get(symbol, -math.inf) < _RELIST_CHECK_S:
            return True
        self._delisted_asked[symbol] = now
        if await self._delisted(symbol, priority) is not False:
            return True  # still delisted, or could not tell (review 50): ask again later
        log.warning("symbol=%s listed again account=%s", symbol, self.account)
        self._delisted_symbols.discard(symbol)
        self.known_symbols.add(symbol)
        return False

    async def _delisted(self, symbol: str, priority: Priority) -> bool | None:
        """True when MEXC's `exchangeInfo` says it has no such symbol (refused by name, or a
        list without it); False when it lists it; None when it could not tell."""
        try:
            info = await self.rest.request(
                "GET",
                "/api/v3/exchangeInfo",
                [("symbol", symbol)],
                signed=False,
                weight=10,
                priority=priority,
            )
        except (Fatal, OutcomeUnknown) as exc:
            return True if _refusal(exc) and exc.code in BAD_SYMBOL_CODES else None
        except VenueError:
            return None
        listed = info.get("symbols") if isinstance(info, dict) else None
        if not isinstance(listed, list):
            return None
        return all(isinstance(s, dict) and s.get("symbol") != symbol for s in listed)
