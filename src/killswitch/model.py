"""Domain types shared by handlers, engine and exchange connectors.

Frozen, slotted dataclasses: values, not objects with behaviour. Venue-native strings
(symbols, ids, statuses) are kept as the venue sent them; `canonical_symbol` is the one
place where `BTC-USDT` and `BTCUSDT` are made comparable.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

VENUES: tuple[str, ...] = ("binance", "mexc", "bingx")


def json_object(raw: bytes, error: Callable[[str], Exception]) -> dict[str, Any]:
    """Decode `raw` as one JSON object, or raise `error(what is wrong)` (never echoing it)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise error(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise error(f"expected a JSON object, got {type(data).__name__}")
    return data


def canonical_symbol(symbol: str) -> str:
    """Return the venue-independent form of a symbol: upper case, no separator."""
    return symbol.replace("-", "").replace("_", "").replace("/", "").upper()


class Mode(enum.StrEnum):
    """What a trigger asks for: a latched kill, or a one-shot cancel."""

    KILL = "kill"
    CANCEL = "cancel"


@dataclass(frozen=True, slots=True)
class AccountRef:
    """One venue account, as named in the configuration."""

    venue: str
    account: str

    def __str__(self) -> str:
        return f"{self.venue}/{self.account}"


OrderKey = tuple[str, str]
"""(symbol, order id): an order's identity. Binance numbers orders per symbol [BN-REST §1.6]."""

ListKey = tuple[str, str]
"""(symbol, list id): an order list's identity. Whether Binance numbers lists per symbol, as
it numbers orders, its docs leave open (its list cancel names the symbol): so never an id alone."""

# The client id of an order, or an order list, whose read did not show it (BingX's documented
# openOrders row has no `clientOrderID`; its stream's `C` is undocumented; the flat-legs shape of
# `oco/openOrderList` has no list client id). Whether a client-id prefix covers it cannot be
# told: no legal client id starts with "<", so no prefix matches it by accident, and
# `Scope.undecided` names it. A read holding one on a symbol in scope proves nothing flat.
UNREAD_CLIENT_ID = "<unread>"
# A client id a read did not show, of a kind the venue allows only digits in (BingX's OCO list
# ids, "only supports numeric strings"): no prefix with another character covers it.
UNREAD_DIGITS_ID = "<unread digits>"
UNREAD_IDS = frozenset((UNREAD_CLIENT_ID, UNREAD_DIGITS_ID))


@dataclass(frozen=True, slots=True)
class Order:
    """An order as a venue reports it. Ids are strings: BingX ids overflow a double."""

    symbol: str
    order_id: str
    client_order_id: str = ""
    side: str = ""
    order_type: str = ""
    price: str = "0"
    orig_qty: str = "0"
    executed_qty: str = "0"
    status: str = "NEW"
    list_id: str | None = None
    time_ms: int = 0

    @property
    def key(self) -> OrderKey:
        return (self.symbol, self.order_id)


@dataclass(frozen=True, slots=True)
class OrderList:
    """An order list (Binance OCO/OTO, BingX OCO): cancelling it cancels every leg."""

    symbol: str
    list_id: str
    list_client_order_id: str = ""
    order_ids: tuple[str, ...] = ()
    client_order_ids: tuple[str, ...] = ()
    contingency_type: str = "OCO"

    @property
    def key(self) -> ListKey:
        return (self.symbol, self.list_id)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Open orders and order lists of one account, read from the venue at `server_time_ms`.

    `complete` is False when the read may have been cut short (a capped page, a symbol left
    unread): what it lists is open, but more may be. Such a snapshot is never proof of flat.
    `undecided`: open orders and lists a scope could not be told to cover or not (their client
    ids unread); never cancelled, and named wherever a kill says what may still be open.
    """

    orders: tuple[Order, ...] = ()
    lists: tuple[OrderList, ...] = ()
    server_time_ms: int = 0
    complete: bool = True
    undecided: tuple[Order | OrderList, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.orders and not self.lists

    @property
    def proves_flat(self) -> bool:
        """Nothing open, and the read was complete."""
        return self.complete and self.empty

    def symbols(self) -> set[str]:
        return {o.symbol for o in self.orders} | {lst.symbol for lst in self.lists}

    def merged(self, other: Snapshot) -> Snapshot:
        """Both reads' orders and lists, once each; complete only if both were."""
        orders = {o.key: o for o in (*self.orders, *other.orders)}
        lists = {x.key: x for x in (*self.lists, *other.lists)}
        return Snapshot(
            orders=tuple(orders.values()),
            lists=tuple(lists.values()),
            server_time_ms=max(self.server_time_ms, other.server_time_ms),
            complete=self.complete and other.complete,
            undecided=(*self.undecided, *other.undecided),
        )


class ExecType(enum.StrEnum):
    """Normalised kind of an order event from a user-data stream."""

    NEW = "new"
    TRADE = "trade"
    CANCELED = "canceled"
    EXPIRED = "expired"
    REJECTED = "rejected"
    REPLACED = "replaced"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class OrderEvent:
    """One order change seen on a user-data stream, normalised across venues.

    `is_open` says whether the order is still working after this event; it is the only field
    the tracker needs. `last_qty`/`last_price` describe the fill of a TRADE event.
    """

    symbol: str
    order_id: str
    client_order_id: str
    exec_type: ExecType
    status: str
    is_open: bool
    event_time_ms: int
    side: str = ""
    order_type: str = ""
    price: str = "0"
    orig_qty: str = "0"
    last_qty: str = "0"
    last_price: str = "0"
    list_id: str | None = None

    def to_order(self) -> Order:
        return Order(
            symbol=self.symbol,
            order_id=self.order_id,
            client_order_id=self.client_order_id,
            side=self.side,
            order_type=self.order_type,
            price=self.price,
            orig_qty=self.orig_qty,
            status=self.status,
            list_id=self.list_id,
            time_ms=self.event_time_ms,
        )


@dataclass(frozen=True, slots=True)
class ListEvent:
    """An order list changed (Binance `listStatus`). `is_open` false once ALL_DONE."""

    symbol: str
    list_id: str
    list_client_order_id: str
    is_open: bool
    order_ids: tuple[str, ...]
    event_time_ms: int


@dataclass(frozen=True, slots=True)
class StreamSubscribed:
    """The venue confirmed the subscription: every order change from here on is delivered.

    A connector yields it once per connection, before any event; the supervisor reads its
    snapshot only after it, so no event can fall between the snapshot and the subscription."""


@dataclass(frozen=True, slots=True)
class StreamTerminated:
    """The venue ended the subscription or asked us to reconnect (eventStreamTerminated,
    serverShutdown, listenKey expiry). The stream iterator ends after yielding it."""

    reason: str


StreamEvent = OrderEvent | ListEvent | StreamSubscribed | StreamTerminated


@dataclass(frozen=True, slots=True)
class Scope:
    """What a trigger covers. An empty field means "all"; fields narrow by intersection."""

    venues: frozenset[str] = frozenset()
    accounts: frozenset[str] = frozenset()
    symbols: frozenset[str] = frozenset()  # canonical symbols
    client_order_id_prefix: str | None = None

    @classmethod
    def of(
        cls,
        venues: Iterable[str] = (),
        accounts: Iterable[str] = (),
        symbols: Iterable[str] = (),
        client_order_id_prefix: str | None = None,
    ) -> Scope:
        return cls(
            venues=frozenset(v.lower() for v in venues),
            accounts=frozenset(accounts),
            symbols=frozenset(canonical_symbol(s) for s in symbols),
            client_order_id_prefix=client_order_id_prefix or None,
        )

    @property
    def is_everything(self) -> bool:
        return not (self.venues or self.accounts or self.symbols or self.client_order_id_prefix)

    def within(self, other: Scope) -> bool:
        """Whether everything this scope covers, `other` covers too, over any account at all:
        from the two scopes alone, so every daemon that holds them decides alike."""
        if other.symbols and not (self.symbols and self.symbols <= other.symbols):
            return False
        prefix = other.client_order_id_prefix
        mine = self.client_order_id_prefix
        if prefix is not None and (mine is None or not mine.startswith(prefix)):
            return False
        return all(
            not theirs or bool(ours and ours <= theirs)
            for ours, theirs in ((self.venues, other.venues), (self.accounts, other.accounts))
        )

    def covers_account(self, ref: AccountRef) -> bool:
        return (not self.venues or ref.venue in self.venues) and (
            not self.accounts or ref.account in self.accounts
        )

    def covers_symbol(self, symbol: str) -> bool:
        return not self.symbols or canonical_symbol(symbol) in self.symbols

    def covers_client_id(self, client_order_id: str) -> bool:
        """Whether the prefix covers this client id; an id a read did not show is covered
        only by no prefix or the empty one (review 99: "<" matched the unread markers)."""
        prefix = self.client_order_id_prefix
        if not prefix:  # none, or "" (every id: a one-shot's scope by id)
            return True
        return client_order_id not in UNREAD_IDS and client_order_id.startswith(prefix)

    def covers_order(self, order: Order | OrderEvent) -> bool:
        return self.covers_symbol(order.symbol) and self.covers_client_id(order.client_order_id)

    def undecided(self, item: Order | OrderEvent | OrderList) -> bool:
        """Could `item` be in scope though its read did not show the client id that would
        tell? Only a client-id prefix asks for client ids; a venue whose rows may lack them
        (BingX's documented openOrders row, its stream's `C`) gives `UNREAD_CLIENT_ID`."""
        prefix = self.client_order_id_prefix
        if prefix is None or not self.covers_symbol(item.symbol):
            return False
        if isinstance(item, OrderList):
            ids = (item.list_client_order_id, *item.client_order_ids)
            # (review 95: a BingX list read in the flat shape, its legs' ids all shown, was
            # undecided for every prefix, and no prefix kill there ever ended flat)
            unread = UNREAD_CLIENT_ID in ids or (UNREAD_DIGITS_ID in ids and prefix.isdigit())
            return unread and not self.covers_list(item)
        return item.client_order_id == UNREAD_CLIENT_ID and not self.covers_order(item)

    def covers_list(self, order_list: OrderList) -> bool:
        if not self.covers_symbol(order_list.symbol):
            return False
        prefix = self.client_order_id_prefix
        if prefix is None:
            return True
        ids = (order_list.list_client_order_id, *order_list.client_order_ids)
        return any(self.covers_client_id(c) for c in ids)

    def contains(self, other: Scope) -> bool:
        """True when every order `other` covers is also covered by this scope."""

        def wider(mine: frozenset[str], theirs: frozenset[str]) -> bool:
            return not mine or (bool(theirs) and theirs <= mine)

        prefix_ok = self.client_order_id_prefix is None or (
            other.client_order_id_prefix is not None
            and other.client_order_id_prefix.startswith(self.client_order_id_prefix)
        )
        return (
            wider(self.venues, other.venues)
            and wider(self.accounts, other.accounts)
            and wider(self.symbols, other.symbols)
            and prefix_ok
        )

    def to_json(self) -> dict[str, object]:
        return {
            "venues": sorted(self.venues),
            "accounts": sorted(self.accounts),
            "symbols": sorted(self.symbols),
            "client_order_id_prefix": self.client_order_id_prefix,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Scope:
        def strs(key: str) -> list[str]:
            value = data.get(key) or []
            if not isinstance(value, list):
                raise TypeError(f"scope.{key} must be a list")
            return [str(v) for v in value]

        prefix = data.get("client_order_id_prefix")
        return cls.of(
            strs("venues"),
            strs("accounts"),
            strs("symbols"),
            str(prefix) if prefix else None,
        )


@dataclass(frozen=True, slots=True)
class Unmatched:
    """A name in a scope that matches no configured account: `field` is `venues` or `accounts`."""

    field: str
    name: str
    message: str


def unmatched(scope: Scope, accounts: Collection[AccountRef]) -> list[Unmatched]:
    """Return each venue and account `scope` names that selects no account in `accounts`.

    A name counts only together with the rest of the scope: `venues = ["mexc"]` with
    `accounts = ["mm-1"]` names nothing when mm-1 is configured on binance alone.
    """
    found: list[Unmatched] = []
    for venue in sorted(scope.venues):
        if not any(ref.venue == venue and scope.covers_account(ref) for ref in accounts):
            among = f" among accounts {sorted(scope.accounts)}" if scope.accounts else ""
            found.append(Unmatched("venues", venue, f"no configured account on {venue}{among}"))
    for name in sorted(scope.accounts):
        if not any(ref.account == name and scope.covers_account(ref) for ref in accounts):
            on = f" on {', '.join(sorted(scope.venues))}" if scope.venues else ""
            found.append(Unmatched("accounts", name, f"no configured account {name}{on}"))
    return found


# How each venue writes a spot symbol (exchange-apis.md §1.7, §2.6, §3.6). Binance symbols may
# hold non-ASCII letters (its testnet lists `这是测试币456`), so letters are not just A-Z.
SYMBOL_FORMS: dict[str, str] = {
    "binance": 'upper case letters and digits with no separator, like "BTCUSDT"',
    "mexc": 'upper case letters and digits with no separator, like "BTCUSDT"',
    "bingx": 'upper case, base and quote joined by a hyphen, like "BTC-USDT"',
}


def is_venue_symbol(venue: str, symbol: str) -> bool:
    """True when `symbol` is written the way `venue` writes its spot symbols."""
    parts = symbol.split("-") if venue == "bingx" else [symbol]
    return len(parts) == (2 if venue == "bingx" else 1) and all(
        part.isalnum() and part == part.upper() for part in parts
    )


@dataclass(frozen=True, slots=True)
class Trigger:
    """A decision to cancel: from an alert, an operator, a heartbeat watch or a risk rule."""

    id: str
    source: str
    mode: Mode
    reason: str
    scope: Scope = field(default_factory=Scope)
    created_ms: int = 0  # wall clock at the producer (alert `ts`), ms since the epoch
    received_ms: int = 0  # wall clock when the daemon accepted it
    actor: str = ""  # who: operator name, alert producer, rule name

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "source": self.source,
            "mode": self.mode.value,
            "reason": self.reason,
            "scope": self.scope.to_json(),
            "created_ms": self.created_ms,
            "received_ms": self.received_ms,
            "actor": self.actor,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Trigger:
        scope = data.get("scope") or {}
        if not isinstance(scope, dict):
            raise TypeError("trigger.scope must be an object")
        return cls(
            id=str(data["id"]),
            source=str(data.get("source", "")),
            mode=Mode(str(data.get("mode", "kill"))),
            reason=str(data.get("reason", "")),
            scope=Scope.from_json(scope),
            created_ms=int(str(data.get("created_ms", 0))),
            received_ms=int(str(data.get("received_ms", 0))),
            actor=str(data.get("actor", "")),
        )
