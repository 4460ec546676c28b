"""The simulator's venue base: accounts, books, faults, rate limits and the admin API.

A dialect (`sim/binance.py`, `sim/mexc.py`, `sim/bingx.py`) subclasses `SimVenue`, adds its REST
routes and websocket handlers, and renders bodies in its venue's words. This base does what is
the same everywhere, in one middleware, in this order for every venue request:

    log + count -> half the latency -> stall -> 418/429 (bans, weight windows, storms)
    -> 5xx before -> the dialect's handler -> 5xx after (applied, outcome unknown)
    -> rate-limit headers -> the rest of the latency (the venue's own work inside the round trip)

Admin routes live under `/_sim/` and are never rate limited or faulted.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from abc import ABC, abstractmethod
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web

from killswitch.sim.book import OrderSpec, SimBook, UnknownOrder
from killswitch.sim.faults import Fault, FaultKind, FaultSet
from killswitch.sim.frames import PUSH_DUE
from killswitch.sim.ratelimit import BanTracker, Verdict

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SimAccount:
    """One API key on the venue, with its own book."""

    name: str
    api_key: str
    secret: str  # HMAC secret; for Ed25519 keys, the base64 raw public key or PEM
    key_type: str = "hmac"  # hmac | ed25519
    book: SimBook | None = None


@dataclass(slots=True)
class VenueSettings:
    """How one simulated venue is served. Loaded from the sim TOML or built by tests."""

    accounts: list[SimAccount]
    host: str = "127.0.0.1"
    port: int = 0
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    seed: int | None = None
    strikes_to_ban: int = 3
    first_ban_s: float = 120.0
    ban_grace_s: float = 0.0  # requests this soon after a 429 were in flight: no strike
    fill_fraction: float = 0.0  # share of open orders filled per fill_interval_s
    fill_interval_s: float = 1.0
    ping_interval_s: float | None = None  # None: the venue's documented interval
    rate_limit_scale: float = 1.0  # multiply documented limits (drills on slow machines)
    faults: list[Fault] = field(default_factory=list)
    symbols: list[str] = field(default_factory=list)  # listed by exchangeInfo; empty: defaults
    shutdown_timeout_s: float = 1.0  # how long stop() lets in-flight requests finish


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, headers=headers, content_type="application/json"
    )


class SimVenue(ABC):
    """A simulated exchange. Subclasses set `name`, `key_header` and implement the hooks."""

    name: str = ""
    key_header: str = ""

    def __init__(self, settings: VenueSettings) -> None:
        self.settings = settings
        self.faults = FaultSet(seed=settings.seed)
        for fault in settings.faults:
            self.faults.add(fault)
        if settings.latency_ms or settings.jitter_ms:
            self.faults.add(
                Fault(
                    FaultKind.LATENCY, latency_ms=settings.latency_ms, jitter_ms=settings.jitter_ms
                )
            )
        self.rng = random.Random(settings.seed)
        self.accounts_by_key: dict[str, SimAccount] = {}
        self.accounts: dict[str, SimAccount] = {}
        for account in settings.accounts:
            account.book = self.new_book()
            self.accounts_by_key[account.api_key] = account
            self.accounts[account.name] = account
        self.counters: Counter[str] = Counter()
        self.request_log: deque[dict[str, Any]] = deque(maxlen=10_000)
        self.bans: dict[str, BanTracker] = {}
        self.app = web.Application(middlewares=[self._middleware])
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.base_url = ""
        self.ws_url = ""
        self._add_admin_routes()
        self.add_routes(self.app)

    # -- hooks for dialects --------------------------------------------------------------
    @abstractmethod
    def new_book(self) -> SimBook:
        """A book minting this venue's id formats."""

    @abstractmethod
    def add_routes(self, app: web.Application) -> None:
        """Register the dialect's REST and websocket routes."""

    @abstractmethod
    def weight(self, request: web.Request, account: SimAccount | None) -> list[tuple[str, int]]:
        """The (bucket key, weight) pairs a request spends; empty if it is not limited."""

    @abstractmethod
    def spend(self, bucket: str, weight: int, now: float) -> Verdict:
        """Spend `weight` in `bucket`'s window."""

    @abstractmethod
    def throttled(self, verdict: Verdict, request: web.Request) -> web.Response:
        """A 429 (or 418 when `verdict.banned`) in the venue's words, with Retry-After."""

    @abstractmethod
    def server_error(self, status: int, request: web.Request) -> web.Response:
        """A 5xx in the venue's words (outcome unknown)."""

    def decorate(
        self, response: web.StreamResponse, request: web.Request, used: dict[str, int]
    ) -> None:
        """Add rate-limit headers (X-MBX-USED-WEIGHT-1M, X-RateLimit-Requests-Remain...)."""
        return

    def on_fault(self, fault: Fault) -> None:
        """React to a fault added at run time (drop streams, shut down, expire keys)."""
        return

    # -- clock and accounts --------------------------------------------------------------
    def now_ms(self, account: str | None = None) -> int:
        return int(time.time() * 1000) + self.faults.skew_ms(account)

    def account_for_key(self, api_key: str | None) -> SimAccount | None:
        return self.accounts_by_key.get(api_key or "")

    def book(self, account: SimAccount) -> SimBook:
        assert account.book is not None
        return account.book

    def book_ticker(self, symbol: str, qty: str) -> dict[str, str]:
        """A Binance-style `bookTicker` of `symbol`: the best bid is the highest priced open buy
        in any account's book (100 when there is none); the ask is twice the bid."""
        bids = [
            o.price
            for account in self.accounts.values()
            for o in self.book(account).open_orders([symbol])
            if o.side == "BUY" and o.price
        ]
        bid = max(bids, default=Decimal(100))
        return {
            "symbol": symbol,
            "bidPrice": f"{bid:.8f}",
            "bidQty": qty,
            "askPrice": f"{bid * 2:.8f}",
            "askQty": qty,
        }

    def client_id(self, request: web.Request) -> str:
        """Whom bans and 429 blocks apply to: the venue's limits are per IP; loopback clients
        share one IP, so the sim keys them by API key when there is one."""
        return request.headers.get(self.key_header) or (request.remote or "?")

    # -- the common middleware -------------------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path.startswith("/_sim/"):
            return await handler(request)
        account = self.account_for_key(request.headers.get(self.key_header))
        account_name = account.name if account else None
        endpoint = f"{request.method} {path}"
        self.counters[f"requests {endpoint}"] += 1
        entry = {
            "t": time.time(),
            "method": request.method,
            "path": path,
            "account": account_name,
            "query": request.query_string[:500],
        }
        self.request_log.append(entry)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            refusal = self.turned_away(request, account, time.monotonic())
            return refusal if refusal is not None else await handler(request)
        delay = self.faults.latency_s(account_name, path)
        answer_at = time.monotonic() + delay
        if delay:
            await asyncio.sleep(delay / 2)  # the request's way to the venue
        due = PUSH_DUE.set(answer_at)
        try:
            response = await self._serve(request, handler, account, path, entry)
        finally:
            PUSH_DUE.reset(due)
        # The answer's way back: it leaves one round trip after the request came, the venue's
        # own work inside it (a venue serves its clients on many machines at once; this one
        # process serves them one after another, which must not lengthen the round trip).
        left = answer_at - time.monotonic()
        if left > 0:
            await asyncio.sleep(left)
        # aiohttp writes the answer as this returns, in the same step of the event loop
        entry["answered"] = time.monotonic()
        return response

    async def _serve(
        self,
        request: web.Request,
        handler: Handler,
        account: SimAccount | None,
        path: str,
        entry: dict[str, Any],
    ) -> web.StreamResponse:
        """A request at the venue, half a round trip after it was sent (its pushes are held
        until they would reach the client: `PUSH_DUE`)."""
        account_name = account.name if account else None
        stall = self.faults.draw(FaultKind.STALL, account_name, path)
        if stall is not None:
            self.counters["faults stall"] += 1
            await asyncio.sleep(stall.stall_s)
            return self.server_error(504, request)
        used, refusal = self.admit(request, account)
        if refusal is not None:
            return refusal
        before = self.faults.draw(FaultKind.ERROR_BEFORE, account_name, path)
        if before is not None:
            self.counters["faults error_before"] += 1
            return self.server_error(before.http_status, request)
        entry["start"] = time.monotonic()
        response = await handler(request)
        after = self.faults.draw(FaultKind.ERROR_AFTER, account_name, path)
        if after is not None:
            self.counters["faults error_after"] += 1
            return self.server_error(after.http_status, request)
        self.decorate(response, request, used)
        return response

    def ban_tracker(self, client: str) -> BanTracker:
        """The strikes and bans of one client (an IP), made on first sight."""
        tracker = self.bans.get(client)
        if tracker is None:
            # A request is served after the simulated latency: one served that long after a
            # 429 left was sent before it, and never a strike (it did not ignore the 429).
            in_flight_s = (self.settings.latency_ms + self.settings.jitter_ms) / 1000
            tracker = self.bans[client] = BanTracker(
                strikes_to_ban=self.settings.strikes_to_ban,
                first_ban_s=self.settings.first_ban_s,
                grace_s=self.settings.ban_grace_s + in_flight_s,
            )
        return tracker

    def admit(
        self, request: web.Request, account: SimAccount | None
    ) -> tuple[dict[str, int], web.Response | None]:
        """Bans, weight windows and 429 storms. Returns the weight used and a refusal if any."""
        now = time.monotonic()
        refusal = self.turned_away(request, account, now)
        if refusal is not None:
            return {}, refusal
        tracker = self.ban_tracker(self.client_id(request))
        used: dict[str, int] = {}
        for bucket, weight in self.weight(request, account):
            verdict = self.spend(bucket, weight, now)
            used[bucket] = verdict.used
            if not verdict.ok:
                tracker.limited(now, verdict.retry_after_s)
                return used, self._refuse(verdict, request)
        return used, None

    def turned_away(
        self, request: web.Request, account: SimAccount | None, now: float
    ) -> web.Response | None:
        """A ban, a client ignoring a Retry-After, or a 429 storm: the refusal, before any
        weight is spent. Websocket handshakes meet it too: a venue that bans an IP refuses
        its connections as well (Binance answers the handshake 429/418)."""
        tracker = self.ban_tracker(self.client_id(request))
        verdict = tracker.check(now)
        if verdict is None:
            storm = self.faults.draw(
                FaultKind.RATE_LIMIT, account.name if account else None, request.path
            )
            if storm is None:
                return None
            self.counters["faults rate_limit"] += 1
            tracker.limited(now, storm.retry_after_s)
            verdict = Verdict(ok=False, used=0, retry_after_s=storm.retry_after_s)
        return self._refuse(verdict, request)

    def _refuse(self, verdict: Verdict, request: web.Request) -> web.Response:
        self.counters["http 418" if verdict.banned else "http 429"] += 1
        return self.throttled(verdict, request)

    # -- admin API -------------------------------------------------------------------------
    def _add_admin_routes(self) -> None:
        r = self.app.router
        r.add_post("/_sim/seed", self._admin_seed)
        r.add_get("/_sim/book", self._admin_book)
        r.add_post("/_sim/faults", self._admin_add_fault)
        r.add_get("/_sim/faults", self._admin_faults)
        r.add_delete("/_sim/faults", self._admin_clear_faults)
        r.add_delete("/_sim/faults/{fault_id}", self._admin_remove_fault)
        r.add_get("/_sim/counters", self._admin_counters)
        r.add_get("/_sim/log", self._admin_log)
        r.add_post("/_sim/fill", self._admin_fill)
        r.add_post("/_sim/reset-limits", self._admin_reset_limits)

    def _admin_account(self, name: str | None) -> SimAccount:
        if name is None and len(self.accounts) == 1:
            return next(iter(self.accounts.values()))
        if name not in self.accounts:
            raise web.HTTPNotFound(text=f"no account {name!r}; have {sorted(self.accounts)}")
        return self.accounts[name]

    def seed(
        self,
        account: SimAccount,
        orders: list[OrderSpec],
        lists: list[tuple[list[OrderSpec], str, str]] = (),  # type: ignore[assignment]
    ) -> tuple[int, int]:
        book = self.book(account)
        for spec in orders:
            book.place(spec)
        for legs, contingency, list_client_id in lists:
            book.place_list(legs, contingency_type=contingency, list_client_order_id=list_client_id)
        return len(orders), len(lists)

    async def _admin_seed(self, request: web.Request) -> web.Response:
        data = await _admin_json(request)
        account = self._admin_account(data.get("account"))
        try:
            orders = [spec_from_json(o) for o in data.get("orders", [])]
            lists = [
                (
                    [spec_from_json(leg) for leg in lst["legs"]],
                    str(lst.get("contingency_type", "OCO")),
                    str(lst.get("list_client_order_id", "")),
                )
                for lst in data.get("lists", [])
            ]
            gen = data.get("generate")
            if gen:
                orders_gen, lists_gen = generate_workload(
                    symbols=[str(s) for s in gen["symbols"]],
                    per_symbol=int(gen.get("per_symbol", 10)),
                    list_fraction=float(gen.get("list_fraction", 0.0))
                    if self.supports_lists()
                    else 0.0,
                    client_id_prefix=str(gen.get("client_id_prefix", "")),
                    rng=self.rng,
                )
                orders += orders_gen
                lists += lists_gen
        except (AttributeError, KeyError, TypeError, ValueError, ArithmeticError) as exc:
            return json_response({"error": f"bad seed request: {exc!r}"}, status=400)
        n_orders, n_lists = self.seed(account, orders, lists)
        return json_response({"account": account.name, "orders": n_orders, "lists": n_lists})

    def supports_lists(self) -> bool:
        return True

    async def _admin_book(self, request: web.Request) -> web.Response:
        account = self._admin_account(request.query.get("account"))
        book = self.book(account)
        return json_response(
            {
                "account": account.name,
                "orders": [
                    {
                        "orderId": o.order_id,
                        "clientOrderId": o.client_order_id,
                        "symbol": o.symbol,
                        "side": o.side,
                        "type": o.order_type,
                        "price": str(o.price),
                        "origQty": str(o.orig_qty),
                        "executedQty": str(o.executed_qty),
                        "status": o.status,
                        "orderListId": o.list_id,
                        "time": o.time_ms,
                    }
                    for o in book.open_orders()
                ],
                "lists": [
                    {
                        "orderListId": lst.list_id,
                        "listClientOrderId": lst.list_client_order_id,
                        "symbol": lst.symbol,
                        "contingencyType": lst.contingency_type,
                        "orderIds": lst.order_ids,
                    }
                    for lst in book.open_lists()
                ],
            }
        )

    async def _admin_add_fault(self, request: web.Request) -> web.Response:
        try:
            fault = Fault.from_json(await _admin_json(request))
        except ValueError as exc:
            return json_response({"error": str(exc)}, status=400)
        self.faults.add(fault)
        self.on_fault(fault)
        return json_response(fault.to_json())

    async def _admin_faults(self, request: web.Request) -> web.Response:
        return json_response(self.faults.to_json())

    async def _admin_clear_faults(self, request: web.Request) -> web.Response:
        self.faults.clear()
        return json_response({"cleared": True})

    async def _admin_remove_fault(self, request: web.Request) -> web.Response:
        fault_id = request.match_info["fault_id"]
        if not fault_id.isdigit():
            return json_response({"error": f"fault id must be an integer: {fault_id!r}"}, 400)
        removed = self.faults.remove(int(fault_id))
        return json_response({"removed": removed}, status=200 if removed else 404)

    async def _admin_counters(self, request: web.Request) -> web.Response:
        return json_response(dict(self.counters))

    async def _admin_log(self, request: web.Request) -> web.Response:
        limit = request.query.get("limit", "200")
        if not limit.isdigit():
            return json_response({"error": f"limit must be an integer: {limit!r}"}, 400)
        entries = list(self.request_log)
        return json_response(entries[-int(limit) :] if int(limit) else [])

    async def _admin_fill(self, request: web.Request) -> web.Response:
        data = await _admin_json(request)
        account = self._admin_account(data.get("account"))
        if "order_id" not in data:
            return json_response({"error": "order_id is required"}, 400)
        qty = data.get("quantity")
        try:
            quantity = Decimal(str(qty)) if qty is not None else None
        except ArithmeticError:
            return json_response({"error": f"bad quantity: {qty!r}"}, 400)
        try:
            order = self.book(account).fill(str(data["order_id"]), quantity)
        except UnknownOrder:
            return json_response({"error": f"no open order {data['order_id']!r}"}, 404)
        return json_response({"orderId": order.order_id, "status": order.status})

    async def _admin_reset_limits(self, request: web.Request) -> web.Response:
        self.reset_limits()
        return json_response({"reset": True})

    def reset_limits(self) -> None:
        """Lift bans and 429 blocks. Dialects that keep weight windows extend this to clear them."""
        for tracker in self.bans.values():
            tracker.clear()

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=self.settings.shutdown_timeout_s,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port, reuse_address=True)
        await site.start()
        port = int(self._runner.addresses[0][1])
        self.base_url = f"http://{self.settings.host}:{port}"
        self.ws_url = f"ws://{self.settings.host}:{port}"
        if self.settings.fill_fraction > 0:
            self.spawn(self._fill_loop())

    def spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def stop(self) -> None:
        """Stop background tasks and the server. Safe to call twice."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            # asyncio.wait, not `suppress(CancelledError)`: a cancel aimed at our caller must
            # still reach it.
            await asyncio.wait(tasks)
            for task in tasks:
                if not task.cancelled() and task.exception() is not None:
                    log.error(
                        "sim task failed venue=%s task=%s",
                        self.name,
                        task.get_name(),
                        exc_info=task.exception(),
                    )
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _fill_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.fill_interval_s)
            for account in self.accounts.values():
                book = self.book(account)
                open_ids = list(book.orders)
                k = int(len(open_ids) * self.settings.fill_fraction)
                for order_id in self.rng.sample(open_ids, min(k, len(open_ids))):
                    if order_id in book.orders:
                        book.fill(order_id)

    def describe(self) -> dict[str, Any]:
        return {
            "venue": self.name,
            "rest_url": self.base_url,
            "ws_url": self.ws_url,
            "accounts": sorted(self.accounts),
        }


async def _admin_json(request: web.Request) -> dict[str, Any]:
    """The JSON object body of an admin request, or a 400."""
    try:
        data = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise web.HTTPBadRequest(text=f"body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return data


def spec_from_json(data: dict[str, Any]) -> OrderSpec:
    return OrderSpec(
        symbol=str(data["symbol"]),
        side=str(data.get("side", "BUY")),
        order_type=str(data.get("type", "LIMIT")),
        price=Decimal(str(data.get("price", "1"))),
        quantity=Decimal(str(data.get("quantity", "1"))),
        client_order_id=str(data.get("client_order_id", "")),
        time_in_force=str(data.get("time_in_force", "GTC")),
        stop_price=Decimal(str(data.get("stop_price", "0"))),
    )


def generate_workload(
    *,
    symbols: list[str],
    per_symbol: int,
    list_fraction: float,
    client_id_prefix: str,
    rng: random.Random,
) -> tuple[list[OrderSpec], list[tuple[list[OrderSpec], str, str]]]:
    """Orders spread over `symbols`; `list_fraction` of them as legs of two-leg OCO lists."""
    orders: list[OrderSpec] = []
    lists: list[tuple[list[OrderSpec], str, str]] = []
    seq = 0
    for symbol in symbols:
        n_list_orders = int(per_symbol * list_fraction) // 2 * 2
        for i in range(per_symbol - n_list_orders):
            seq += 1
            side = "BUY" if i % 2 == 0 else "SELL"
            price = Decimal(100 + rng.randint(-50, 50))
            orders.append(
                OrderSpec(symbol, side, "LIMIT", price, Decimal("0.5"), f"{client_id_prefix}o{seq}")
            )
        for _ in range(n_list_orders // 2):
            seq += 1
            legs = [
                OrderSpec(
                    symbol,
                    "SELL",
                    "LIMIT_MAKER",
                    Decimal(200),
                    Decimal(1),
                    f"{client_id_prefix}l{seq}a",
                ),
                OrderSpec(
                    symbol,
                    "SELL",
                    "STOP_LOSS_LIMIT",
                    Decimal(50),
                    Decimal(1),
                    f"{client_id_prefix}l{seq}b",
                    stop_price=Decimal(51),
                ),
            ]
            lists.append((legs, "OCO", f"{client_id_prefix}L{seq}"))
    return orders, lists
