"""How many user-stream events per second the OrderTracker absorbs on one core, decoding included.

Target: >= 50,000 events/s per venue. Method, per venue, all in this one process (pinned to one
core) and without the network:

1. Play a market maker's day on the venue simulator's own order book (`SimBook` with that
   venue's ids): orders placed, some partly filled, then cancelled or filled, about `--open`
   orders working at any time over ten symbols.
2. Encode every book change with the simulator dialect's own encoder into the raw frame the
   venue sends: Binance ws-api JSON text (`{"subscriptionId":..,"event":{executionReport}}`),
   MEXC protobuf binary (`PushDataV3ApiWrapper`/`privateOrders`), BingX gzip-compressed JSON.
3. Timed: each frame through the connector's own decoder (Binance `parse_frame`, MEXC
   `decode_push`, BingX `decode_frame` + the stream's executionReport handling) and every
   resulting event into `OrderTracker.apply`. Best of `--repeat` runs; decode-only and
   apply-only passes are timed separately to show where the time goes.
4. Check the tracker ends equal to the simulator's book (else exit 1), and print a table with
   the ratio to the target.

Usage: python bench/tracker_throughput.py [--events 100000] [--repeat 3] [--venues binance,mexc]
"""

from __future__ import annotations

import argparse
import gc
import gzip
import itertools
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from killswitch.model import AccountRef, ListEvent, OrderEvent, StreamEvent
from killswitch.sim.book import BookEvent, OrderSpec, SimBook
from killswitch.sim.venue import SimAccount, SimVenue, VenueSettings
from killswitch.streams.tracker import OrderTracker

TARGET_EPS = 50_000
SYMBOLS = ("BTC", "ETH", "SOL", "XRP", "DOGE", "ADA", "LTC", "TRX", "DOT", "LINK")

Frame = str | bytes
Decoder = Callable[[Frame], Sequence[StreamEvent]]


@dataclass
class Venue:
    name: str
    sim: SimVenue
    symbols: list[str]
    encode: Callable[[BookEvent], Frame | None]
    decode: Decoder


def binance() -> Venue:
    from killswitch.exchanges.binance import parse_frame
    from killswitch.sim import binance as dialect

    sim = dialect.BinanceSim(_settings())
    book = sim.book(sim.accounts["bench"])
    trade_ids, exec_ids = itertools.count(1), itertools.count(1)

    def encode(event: BookEvent) -> Frame:
        payload = dialect._event_json(event, book, trade_ids, exec_ids)
        return orjson.dumps({"subscriptionId": 0, "event": payload}).decode()

    return Venue("binance", sim, [f"{s}USDT" for s in SYMBOLS], encode, parse_frame)


def mexc() -> Venue:
    from killswitch.exchanges.mexc import decode_push
    from killswitch.sim import mexc as dialect

    sim = dialect.MexcSim(_settings(), symbols=[f"{s}USDT" for s in SYMBOLS])

    def encode(event: BookEvent) -> Frame | None:
        if event.order is None:
            return None
        return dialect.encode_order_push(event.order, event, event.time_ms)

    def decode(frame: Frame) -> Sequence[StreamEvent]:
        assert isinstance(frame, bytes)
        event = decode_push(frame)
        return () if event is None else (event,)

    return Venue("mexc", sim, [f"{s}USDT" for s in SYMBOLS], encode, decode)


def bingx() -> Venue:
    from killswitch.exchanges import bingx as connector
    from killswitch.sim import bingx as dialect

    sim = dialect.BingxSim(_settings())
    ex = connector.BingxExchange(  # never started: only its stream decoding is used
        account="bench",
        api_key="bench",
        api_secret="bench-secret",  # noqa: S106 - a placeholder, nothing is signed
        rest_url="http://127.0.0.1:9",
        ws_url="ws://127.0.0.1:9",
    )

    def encode(event: BookEvent) -> Frame | None:
        data = sim.execution_report(event)
        if data is None:
            return None
        message = {"code": 0, "dataType": dialect.EXECUTION_REPORT, "data": data}
        return gzip.compress(orjson.dumps(message), compresslevel=1, mtime=0)

    def decode(frame: Frame) -> Sequence[StreamEvent]:
        # The stream loop's own steps: gunzip + JSON, then its executionReport handling.
        message = connector.decode_frame(frame)
        if message.get("dataType") == connector.EXECUTION_REPORT:
            return ex._order_events(message["data"])
        return ()

    return Venue("bingx", sim, [f"{s}-USDT" for s in SYMBOLS], encode, decode)


VENUES: dict[str, Callable[[], Venue]] = {"binance": binance, "mexc": mexc, "bingx": bingx}


def _settings() -> VenueSettings:
    account = SimAccount(name="bench", api_key="bench", secret="bench-secret")  # noqa: S106
    return VenueSettings(accounts=[account])


def play(venue: Venue, events: int, open_target: int, seed: int) -> tuple[list[Frame], SimBook]:
    """Trade on the sim's book until `events` book changes happened; their encoded frames."""
    rng = random.Random(seed)
    book = venue.sim.book(venue.sim.accounts["bench"])
    changes: list[BookEvent] = []
    book.subscribe(changes.append)
    working: list[str] = []
    while len(changes) < events:
        if len(working) < open_target and (len(working) < open_target // 2 or rng.random() < 0.6):
            spec = OrderSpec(
                rng.choice(venue.symbols),
                rng.choice(("BUY", "SELL")),
                "LIMIT",
                Decimal(rng.randint(90, 110)),
                Decimal(4),
            )
            working.append(book.place(spec).order_id)
            continue
        order_id = working.pop(rng.randrange(len(working)))
        roll = rng.random()
        if roll < 0.3:
            if book.fill(order_id, Decimal(1)).is_open:  # partly filled, still working
                working.append(order_id)
        elif roll < 0.45:
            book.fill(order_id)
        else:
            book.cancel(order_id)
    frames = [f for f in (venue.encode(c) for c in changes) if f is not None]
    return frames, book


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def measure(venue: Venue, frames: list[Frame], repeat: int) -> dict[str, Any]:
    ref = AccountRef(venue.name, "bench")
    decode = venue.decode

    def end_to_end() -> OrderTracker:
        tracker = OrderTracker(ref)
        apply = tracker.apply
        for frame in frames:
            for event in decode(frame):
                apply(event)  # type: ignore[arg-type]
        return tracker

    def decode_only() -> list[OrderEvent | ListEvent]:
        out: list[OrderEvent | ListEvent] = []
        for frame in frames:
            out.extend(decode(frame))  # type: ignore[arg-type]
        return out

    seconds, tracker = timed(end_to_end, repeat)
    decode_s, events = timed(decode_only, repeat)

    def apply_only() -> None:
        tracker = OrderTracker(ref)
        apply = tracker.apply
        for event in events:
            apply(event)

    apply_s, _ = timed(apply_only, repeat)
    return {
        "events": len(events),
        "seconds": seconds,
        "decode_s": decode_s,
        "apply_s": apply_s,
        "tracker": tracker,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="book changes per venue")
    parser.add_argument("--open", type=int, default=500, help="orders working at a time")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--venues", default=",".join(VENUES))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cpu", type=int, default=None, help="pin to this core (default: one)")
    args = parser.parse_args(argv)

    if hasattr(os, "sched_setaffinity"):
        cpu = args.cpu if args.cpu is not None else min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        print(f"pinned to cpu {cpu}; python {sys.version.split()[0]}")
    rows = []
    failed = False
    for name in args.venues.split(","):
        venue = VENUES[name]()
        frames, book = play(venue, args.events, args.open, args.seed)
        result = measure(venue, frames, args.repeat)
        tracker: OrderTracker = result["tracker"]
        exact = {o.order_id for o in tracker.open_orders()} == set(book.orders)
        failed |= not exact
        eps = result["events"] / result["seconds"]
        rows.append(
            (
                name,
                f"{result['events']:,}",
                f"{result['seconds']:.3f}",
                f"{eps:,.0f}",
                f"{eps / TARGET_EPS:.1f}x",
                f"{result['decode_s'] / result['events'] * 1e6:.2f}",
                f"{result['apply_s'] / result['events'] * 1e6:.2f}",
                f"{len(tracker):,}",
                "yes" if exact else "NO",
            )
        )
    header = (
        "venue",
        "events",
        "seconds",
        "events/s",
        f"vs {TARGET_EPS:,}/s",
        "decode us/ev",
        "apply us/ev",
        "open at end",
        "tracker == book",
    )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).rjust(w) for cell, w in zip(row, widths, strict=True)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
