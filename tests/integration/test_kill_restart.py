"""The daemon as systemd runs it, killed with SIGKILL in the middle of a kill, then restarted."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from killswitch.control_client import request
from killswitch.drill.demo import (
    NotifySocket,
    Workload,
    daemon_env,
    daemon_toml,
    drill_accounts,
    killswitch_command,
    sim_toml,
    write_credentials,
)
from killswitch.journal import replay
from killswitch.sim.book import OrderSpec
from killswitch.sim.faults import Fault
from killswitch.sim.server import SimCluster
from killswitch.sinks.audit import read_audit
from tests.conftest import eventually

WORKLOAD = Workload(
    accounts_per_venue=1, symbols_per_venue=4, orders_per_symbol=5, latency_ms=2, jitter_ms=1
)


@dataclass
class Drill:
    cluster: SimCluster
    workdir: Path
    config: Path
    credentials: Path
    socket: Path

    def open_orders(self) -> dict[str, int]:
        return {
            f"{v}/{a}": len(sim.book(acc).orders) + len(sim.book(acc).lists)
            for v, sim in self.cluster.venues.items()
            for a, acc in sim.accounts.items()
        }

    async def ask(self, payload: dict[str, object]) -> dict[str, object]:
        return await asyncio.to_thread(request, self.socket, payload, timeout_s=30.0)

    @contextlib.asynccontextmanager
    async def daemon(
        self, name: str
    ) -> AsyncIterator[tuple[asyncio.subprocess.Process, NotifySocket]]:
        notify = NotifySocket(self.workdir / f"{name}.notify")
        log = (self.workdir / f"{name}.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            *killswitch_command(),
            "run",
            "--config",
            str(self.config),
            env=daemon_env(
                NOTIFY_SOCKET=str(notify.path), CREDENTIALS_DIRECTORY=str(self.credentials)
            ),
            stdout=log,
            stderr=log,
        )
        log.close()
        try:
            yield proc, notify
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    async with asyncio.timeout(30):
                        await proc.wait()
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            notify.close()


@contextlib.asynccontextmanager
async def drill(tmp_path: Path) -> AsyncIterator[Drill]:
    accounts = drill_accounts(WORKLOAD.accounts_per_venue)
    cluster = SimCluster.from_toml(sim_toml(accounts, WORKLOAD))
    await cluster.start()
    try:
        workdir = tmp_path  # pytest keeps it short enough for a unix socket path
        config = workdir / "killswitch.toml"
        socket_path = workdir / "control.sock"
        config.write_text(
            daemon_toml(
                workdir / "state",
                socket_path,
                accounts,
                cluster,
                engine={"deadline_s": 60.0, "quiet_window_s": 0.3, "sweep_interval_s": 3600.0},
            )
        )
        write_credentials(workdir / "credentials", accounts)
        yield Drill(cluster, workdir, config, workdir / "credentials", socket_path)
    finally:
        await cluster.stop()


async def test_sigkill_in_the_middle_of_a_kill_then_restart_ends_flat_and_latched(
    tmp_path: Path,
) -> None:
    async with drill(tmp_path) as d:
        assert all(n > 0 for n in d.open_orders().values())
        bingx = d.cluster.venues["bingx"]
        # BingX refuses every cancel: the kill is stuck retrying there when the daemon dies.
        for endpoint in ("/openApi/spot/v1/trade/cancel*", "/openApi/spot/v1/oco/cancel"):
            bingx.faults.add(
                Fault.from_json({"kind": "error_before", "endpoint": endpoint, "http_status": 503})
            )
        async with d.daemon("first") as (proc, notify):
            assert await notify.wait_for("READY=1", 60), (d.workdir / "first.log").read_text()
            answer = await d.ask({"op": "fire", "reason": "drawdown"})
            assert answer["result"] == "accepted"

            def bingx_retrying() -> bool:
                records = read_audit(d.workdir / "state" / "audit.jsonl")
                return any(
                    r["type"] == "outcome" and str(r["account"]).startswith("bingx")
                    for r in records
                ) or any(
                    r["type"] == "wave" and str(r["account"]).startswith("bingx") for r in records
                )

            await eventually(bingx_retrying, timeout_s=30)
            assert d.open_orders()["bingx/mm-1"] > 0  # the kill is not done
            proc.send_signal(signal.SIGKILL)
            await proc.wait()

        bingx.faults.clear()
        bingx.book(bingx.accounts["mm-1"]).place(
            OrderSpec("SOL-USDT", client_order_id="while_down")
        )
        state, _ = replay(d.workdir / "state" / "journal.jsonl")
        assert state.latched
        assert state.unfinished  # no kill_done: the restart must resume it

        async with d.daemon("second") as (_proc, notify):
            assert await notify.wait_for("READY=1", 60), (d.workdir / "second.log").read_text()
            # The re-sweep runs before READY: the books are empty the moment READY arrives.
            assert d.open_orders() == dict.fromkeys(d.open_orders(), 0)
            status = await d.ask({"op": "status"})
            assert status["status"]["latched"] is True  # type: ignore[index]
        state, _ = replay(d.workdir / "state" / "journal.jsonl")
        assert state.latched
        assert not state.unfinished


async def test_reset_over_the_daemon_socket_unlatches_and_is_audited(tmp_path: Path) -> None:
    async with drill(tmp_path) as d, d.daemon("one") as (_proc, notify):
        assert await notify.wait_for("READY=1", 60), (d.workdir / "one.log").read_text()
        fired = await d.ask({"op": "fire", "reason": "risk", "wait": "done", "timeout_s": 25})
        log = (d.workdir / "one.log").read_text()
        assert fired["ok"] is True, (fired, log)
        assert d.open_orders() == dict.fromkeys(d.open_orders(), 0), (fired, log)
        reset = await d.ask({"op": "reset", "reason": "false alarm"})
        assert reset["was_latched"] is True
        status = await d.ask({"op": "status"})
        assert status["status"]["latched"] is False  # type: ignore[index]
        resets = [
            r for r in read_audit(d.workdir / "state" / "audit.jsonl") if r["type"] == "reset"
        ]
        assert resets[-1]["reason"] == "false alarm"
        assert resets[-1]["actor"] == reset["actor"]
