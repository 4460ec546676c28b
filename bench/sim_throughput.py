"""How many signed single-order cancels per second the simulator serves on one core.

Target: >= 5,000 requests/s per venue on loopback, so the simulator is never the bottleneck of
our own benchmarks. Method:

1. Serve all three venues with `python -m killswitch.sim.cli` (the product's own command) in a
   process pinned to ONE core, rate limits scaled out of the way, no latency.
2. Seed N open orders per venue, read their ids from the admin API.
3. Per venue, a separate client PROCESS pinned to another core signs every cancel up front
   (HMAC as each venue documents), then fires them over C keep-alive connections with a minimal
   HTTP/1.1 client (so the client's CPU is neither counted against the sim nor its bottleneck).
4. The same for Binance's WebSocket API (`order.cancel`, ad-hoc HMAC-signed), the path our
   Binance connector kills through.
5. Print requests/s per venue, its ratio to 5,000, and how busy the sim was while the cancels
   flowed. On a shared machine other processes take turns on the sim's core: then "sim cpu" is
   well under 100%, and "per cpu-s" (requests per second of sim CPU time) is the capacity the
   sim would have with the core to itself.

Usage: python bench/sim_throughput.py [--orders 20000] [--concurrency 64] [--venues binance,mexc]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET_RPS = 5000
ROOT = Path(__file__).resolve().parents[1]

VENUES: dict[str, dict[str, str]] = {
    "binance": {
        "symbol": "BTCUSDT",
        "method": "DELETE",
        "path": "/api/v3/order",
        "header": "X-MBX-APIKEY",
        "key": "benchBinanceKey000000000000000000000000000000000000000000000001",
        "secret": "benchBinanceSecret000000000000000000000000000000000000000000001",
    },
    "mexc": {
        "symbol": "BTCUSDT",
        "method": "DELETE",
        "path": "/api/v3/order",
        "header": "X-MEXC-APIKEY",
        "key": "mx0vbenchMexcKey0001",
        "secret": "0123456789abcdef0123456789abcdef",
    },
    "bingx": {
        "symbol": "BTC-USDT",
        "method": "POST",
        "path": "/openApi/spot/v1/trade/cancel",
        "header": "X-BX-APIKEY",
        "key": "benchBingxKey00000000000000000000000000000000000000000000000001",
        "secret": "benchBingxSecret000000000000000000000000000000000000000000000001",
    },
}


def sim_config(venues: list[str], orders: int) -> str:
    lines = ['host = "127.0.0.1"', "seed = 1"]
    for name in venues:
        v = VENUES[name]
        lines += [
            f"[venues.{name}]",
            "rate_limit_scale = 100000.0",
            f"[[venues.{name}.accounts]]",
            'name = "bench"',
            f'api_key = "{v["key"]}"',
            f'secret = "{v["secret"]}"',
            f"[[venues.{name}.generate]]",
            f'symbols = ["{v["symbol"]}"]',
            f"per_symbol = {orders}",
            'client_id_prefix = "bench"',
        ]
    return "\n".join(lines) + "\n"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pinned(cpu: int) -> Any:
    def pin() -> None:
        os.sched_setaffinity(0, {cpu})

    return pin


def admin(rest_url: str, method: str, path: str, body: Any = None) -> Any:
    host, port = rest_url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request(method, f"/_sim/{path}", body=None if body is None else json.dumps(body))
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"admin {method} {path}: {resp.status} {data[:200]!r}")
        return json.loads(data)
    finally:
        conn.close()


def admin_book(rest_url: str) -> list[str]:
    book = admin(rest_url, "GET", "book?account=bench")
    return [str(o["orderId"]) for o in book["orders"]]


def run_parent(args: argparse.Namespace) -> int:
    cpus = sorted(os.sched_getaffinity(0))
    sim_cpu, client_cpu = cpus[0], cpus[-1]
    venues = [v for v in args.venues.split(",") if v]
    print(f"sim on cpu {sim_cpu}, client on cpu {client_cpu} ({len(cpus)} usable)")
    if sim_cpu == client_cpu:
        print("WARNING: one core only: the client competes with the sim for it")
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.toml"
        config.write_text(sim_config(venues, args.orders + args.warmup))
        sim = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "killswitch.sim.cli",
                "--config",
                str(config),
                "--log-level",
                "WARNING",
            ],
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=pinned(sim_cpu),
            cwd=ROOT,
        )
        try:
            assert sim.stdout is not None
            described = {}
            for _ in venues:
                line = sim.stdout.readline()
                if not line:
                    print("the sim exited before it was ready")
                    return 1
                info = json.loads(line)
                described[info["venue"]] = info
            results = []
            jobs = [(name, "rest") for name in venues]
            if "binance" in venues and not args.no_ws:
                jobs.append(("binance", "ws-api"))
            for name, transport in jobs:
                rest_url = described[name]["rest_url"]
                if transport == "ws-api":
                    reseed(rest_url, args.orders + args.warmup, VENUES[name]["symbol"])
                ids = admin_book(rest_url)
                job = {
                    "venue": name,
                    "transport": transport,
                    "rest_url": rest_url,
                    "ws_url": described[name]["ws_url"],
                    "ids": ids,
                    "warmup": args.warmup,
                    "concurrency": args.concurrency,
                    "sim_pid": sim.pid,
                    **VENUES[name],
                }
                result = run_client(job, client_cpu)
                result["left_open"] = len(admin_book(rest_url))
                results.append(result)
        finally:
            sim.terminate()
            sim.wait(timeout=30)
    print()
    print(
        f"{'venue':16} {'requests':>9} {'non-200':>8} {'seconds':>8} {'req/s':>9} "
        f"{'ratio':>7} {'sim cpu':>8} {'per cpu-s':>10} {'ratio':>7} {'left':>6}"
    )
    ok = True
    for r in results:
        ratio = r["rps"] / TARGET_RPS
        per_cpu_s = r["rps"] / max(r["sim_busy"], 1e-9)
        ok = ok and ratio >= 1.0
        print(
            f"{r['venue'] + ' ' + r['transport']:16} {r['requests']:>9} {r['non_200']:>8} "
            f"{r['seconds']:>8.2f} "
            f"{r['rps']:>9.0f} {ratio:>6.2f}x {r['sim_busy']:>7.0%} {per_cpu_s:>10.0f} "
            f"{per_cpu_s / TARGET_RPS:>6.2f}x {r['left_open']:>6}"
        )
    print(f"\ntarget {TARGET_RPS} cancels/s per venue on one core: {'met' if ok else 'NOT met'}")
    if any(r["sim_busy"] < 0.9 for r in results):
        print("note: the sim had its core less than 90% of the time; see per cpu-s")
    return 0


def reseed(rest_url: str, orders: int, symbol: str) -> None:
    body = {"account": "bench", "generate": {"symbols": [symbol], "per_symbol": orders}}
    admin(rest_url, "POST", "seed", body)


def run_client(job: dict[str, Any], cpu: int) -> dict[str, Any]:
    client = subprocess.run(
        [sys.executable, __file__, "--client"],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        preexec_fn=pinned(cpu),
        check=False,
    )
    if client.returncode != 0:
        raise RuntimeError(f"client failed for {job['venue']} {job['transport']}: {client.stderr}")
    result: dict[str, Any] = json.loads(client.stdout)
    result["venue"] = job["venue"]
    result["transport"] = job["transport"]
    return result


# -- the client process -------------------------------------------------------------------------


def signed_requests(job: dict[str, Any]) -> list[bytes]:
    host = job["rest_url"].removeprefix("http://")
    now = int(time.time() * 1000)
    out = []
    for order_id in job["ids"]:
        query = f"symbol={job['symbol']}&orderId={order_id}&recvWindow=60000&timestamp={now}"
        # Values here need no percent-encoding, so the string each venue signs is the query.
        signature = hmac.new(job["secret"].encode(), query.encode(), hashlib.sha256).hexdigest()
        out.append(
            (
                f"{job['method']} {job['path']}?{query}&signature={signature} HTTP/1.1\r\n"
                f"Host: {host}\r\n{job['header']}: {job['key']}\r\nContent-Length: 0\r\n\r\n"
            ).encode()
        )
    return out


async def fire(host: str, port: int, requests: list[bytes], concurrency: int) -> dict[str, Any]:
    statuses: dict[int, int] = {}
    queue = iter(requests)

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for request in queue:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - start
    return {"statuses": statuses, "seconds": seconds}


def signed_ws_requests(job: dict[str, Any]) -> list[str]:
    now = int(time.time() * 1000)
    out = []
    for n, order_id in enumerate(job["ids"]):
        params: dict[str, Any] = {
            "apiKey": job["key"],
            "orderId": int(order_id),
            "recvWindow": 60000,
            "symbol": job["symbol"],
            "timestamp": now,
        }
        # ws-api signs every param but `signature`, sorted by name, not percent-encoded.
        payload = "&".join(f"{k}={v}" for k, v in sorted(params.items()))
        params["signature"] = hmac.new(
            job["secret"].encode(), payload.encode(), hashlib.sha256
        ).hexdigest()
        out.append(json.dumps({"id": n, "method": "order.cancel", "params": params}))
    return out


async def fire_ws(url: str, requests: list[str], concurrency: int) -> dict[str, Any]:
    import websockets

    statuses: dict[int, int] = {}
    queue = iter(requests)

    async def worker() -> None:
        async with websockets.connect(url, max_size=None, compression=None) as ws:
            for request in queue:
                await ws.send(request)
                status = int(json.loads(await ws.recv())["status"])
                statuses[status] = statuses.get(status, 0) + 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"statuses": statuses, "seconds": time.perf_counter() - start}


def run_client_process() -> int:
    job = json.load(sys.stdin)
    warmup_n = job["warmup"]
    if job["transport"] == "ws-api":
        url = f"{job['ws_url'].rstrip('/')}/ws-api/v3"
        ws_requests = signed_ws_requests(job)
        asyncio.run(fire_ws(url, ws_requests[:warmup_n], job["concurrency"]))
        cpu_before = cpu_seconds(job["sim_pid"])
        result = asyncio.run(fire_ws(url, ws_requests[warmup_n:], job["concurrency"]))
        n = len(ws_requests) - warmup_n
    else:
        requests = signed_requests(job)
        host, port = job["rest_url"].removeprefix("http://").rsplit(":", 1)
        asyncio.run(fire(host, int(port), requests[:warmup_n], job["concurrency"]))
        cpu_before = cpu_seconds(job["sim_pid"])
        result = asyncio.run(fire(host, int(port), requests[warmup_n:], job["concurrency"]))
        n = len(requests) - warmup_n
    sim_cpu = cpu_seconds(job["sim_pid"]) - cpu_before
    json.dump(
        {
            "requests": n,
            "non_200": n - result["statuses"].get(200, 0),
            "statuses": result["statuses"],
            "seconds": result["seconds"],
            "rps": n / result["seconds"],
            "sim_busy": sim_cpu / result["seconds"],
        },
        sys.stdout,
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--orders", type=int, default=20_000, help="cancels measured per venue")
    parser.add_argument("--warmup", type=int, default=2_000, help="cancels before measuring")
    parser.add_argument("--concurrency", type=int, default=64, help="keep-alive connections")
    parser.add_argument("--venues", default="binance,mexc,bingx")
    parser.add_argument("--no-ws", action="store_true", help="skip the Binance ws-api run")
    args = parser.parse_args()
    if args.client:
        return run_client_process()
    return run_parent(args)


if __name__ == "__main__":
    sys.exit(main())
