"""Crash drills: SIGKILL the daemon at a random point of a kill, restart it as systemd would.

Each drill is seeded (`plan_drill`): a workload on the three simulators with a round trip and a
few 5xx answers that stretch the kill, an operator's `fire` on the control socket, then a
SIGKILL at one of the kill's stages (right after the fire, once the trigger is in the audit
log, after the first cancel outcome, after a wave, after `flat`), a few milliseconds later,
and sometimes a second SIGKILL while the restarted daemon is still re-sweeping. Then the daemon
is started again with the same config, state directory and credentials, as `Restart=` does.

Every drill must end with: the books empty (read from the simulator), the daemon latched,
every trigger the operator was told "accepted" present in the journal (nothing lost), the
journal readable with no unfinished kill once the restart is done. A fire the daemon died
before answering is fired again by the operator when it is not in the journal.

`KILLSWITCH_CRASH_TRIALS` drills run (default 5).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from killswitch.control_client import ControlUnreachable, request
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
from killswitch.journal import Journal, replay
from killswitch.model import Mode, Scope, Trigger
from killswitch.sim.faults import Fault
from killswitch.sim.server import SimCluster
from killswitch.sinks.audit import read_audit
from tests.conftest import eventually

TRIALS = int(os.environ.get("KILLSWITCH_CRASH_TRIALS", "5"))
BASE_SEED = int(os.environ.get("KILLSWITCH_CRASH_SEED", "7700"))
STAGES = ("fired", "triggered", "wave", "outcome", "flat")
WORKLOAD = Workload(
    accounts_per_venue=1,
    symbols_per_venue=5,
    orders_per_symbol=6,
    list_fraction=0.34,
    latency_ms=10.0,
    jitter_ms=2.0,
)
CANCEL_ENDPOINTS = {
    "binance": "openOrders.cancelAll",
    "mexc": "/api/v3/openOrders",
    "bingx": "/openApi/spot/v1/trade/cancel*",
}


@dataclass(frozen=True)
class DrillPlan:
    seed: int
    stage: str
    delay_ms: float
    slow_venue: str
    failures: int
    kill_again: bool
    down_ms: float  # how long the daemon stays dead before the restart


def plan_drill(seed: int) -> DrillPlan:
    """The first drills take each stage in turn (the fourth also dies again while resuming);
    the rest draw theirs."""
    rng = random.Random(seed)
    stage = STAGES[seed % len(STAGES)] if seed - BASE_SEED < len(STAGES) else rng.choice(STAGES)
    # Right after the fire, the moment decides whether the trigger reached the journal at all.
    delays = (0.0, 0.0, 2.0) if stage == "fired" else (0.0, 1.0, 5.0, 20.0)
    return DrillPlan(
        seed=seed,
        stage=stage,
        delay_ms=rng.choice(delays),
        slow_venue=rng.choice(("binance", "mexc", "bingx")),
        failures=rng.randint(1, 4),
        kill_again=rng.random() < 0.3 or seed - BASE_SEED == 3,  # one in every make test
        down_ms=rng.choice((0.0, 50.0, 300.0)),
    )


class Site:
    """One drill's simulators, config and state directory, and the daemon's restarts."""

    def __init__(self, cluster: SimCluster, workdir: Path) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.config = workdir / "killswitch.toml"
        self.credentials = workdir / "credentials"
        self.socket = workdir / "control.sock"
        self.audit = workdir / "state" / "audit.jsonl"
        self.journal = workdir / "state" / "journal.jsonl"
        self.starts = 0

    def open_orders(self) -> dict[str, int]:
        return {
            f"{v}/{name}": len(sim.book(acc).orders) + len(sim.book(acc).lists)
            for v, sim in self.cluster.venues.items()
            for name, acc in sim.accounts.items()
        }

    def log(self) -> str:
        return "\n".join(
            f"--- start {i} ---\n" + (self.workdir / f"daemon-{i}.log").read_text()[-3000:]
            for i in range(1, self.starts + 1)
        )

    def audit_types(self) -> list[str]:
        if not self.audit.exists():
            return []
        return [str(r.get("type")) for r in read_audit(self.audit)]

    @contextlib.asynccontextmanager
    async def daemon(self) -> AsyncIterator[tuple[asyncio.subprocess.Process, NotifySocket]]:
        self.starts += 1
        notify = NotifySocket(self.workdir / f"n{self.starts}.sock")
        log = (self.workdir / f"daemon-{self.starts}.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            *killswitch_command(),
            "run",
            "--config",
            str(self.config),
            env=daemon_env(
                NOTIFY_SOCKET=str(notify.path),
                CREDENTIALS_DIRECTORY=str(self.credentials),
                KILLSWITCH_LOGGING__FORMAT="text",
            ),
            stdin=asyncio.subprocess.DEVNULL,
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

    async def ask(self, payload: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
        return await asyncio.to_thread(request, self.socket, payload, timeout_s=timeout_s)


@contextlib.asynccontextmanager
async def site(tmp_path: Path, grace_period_s: float = 10.0) -> AsyncIterator[Site]:
    accounts = drill_accounts(WORKLOAD.accounts_per_venue)
    cluster = SimCluster.from_toml(sim_toml(accounts, WORKLOAD), "<crash drill>")
    await cluster.start()
    try:
        s = Site(cluster, tmp_path)
        s.config.write_text(
            daemon_toml(
                tmp_path / "state",
                s.socket,
                accounts,
                cluster,
                engine={
                    "deadline_s": 60.0,
                    "quiet_window_s": 0.3,
                    "sweep_interval_s": 3600.0,
                    "grace_period_s": grace_period_s,
                },
            )
        )
        write_credentials(s.credentials, accounts)
        yield s
    finally:
        await cluster.stop()


async def fire(s: Site, reason: str) -> asyncio.Task[dict[str, Any]]:
    """Send the operator's fire; the answer may never come if the daemon dies first."""

    async def send() -> dict[str, Any]:
        return await s.ask({"op": "fire", "reason": reason, "actor": "drill"})

    return asyncio.create_task(send())


async def wait_stage(s: Site, stage: str) -> None:
    if stage == "fired":
        return
    await eventually(lambda: stage in s.audit_types(), timeout_s=30.0, interval_s=0.001)


async def sigkill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGKILL)
    await proc.wait()


@pytest.mark.parametrize("seed", [BASE_SEED + i for i in range(TRIALS)])
async def test_sigkill_at_a_random_point_of_a_kill_then_restart_ends_flat_latched_and_journaled(
    seed: int, tmp_path: Path
) -> None:
    plan = plan_drill(seed)
    async with site(tmp_path) as s:
        before = s.open_orders()
        assert all(before.values())
        slow = s.cluster.venues[plan.slow_venue]
        slow.faults.add(
            Fault.from_json(
                {
                    "kind": "error_before",
                    "endpoint": CANCEL_ENDPOINTS[plan.slow_venue],
                    "http_status": 503,
                    "count": plan.failures,
                }
            )
        )
        accepted: list[str] = []
        async with s.daemon() as (proc, notify):
            assert await notify.wait_for("READY=1", 60), s.log()
            answer = await fire(s, f"drill {seed}")
            await wait_stage(s, plan.stage)
            await asyncio.sleep(plan.delay_ms / 1000)  # the drill's chosen moment, not a wait
            await sigkill(proc)
            open_at_kill = sum(s.open_orders().values())
            stages_seen = [t for t in STAGES if t in s.audit_types()]
        with contextlib.suppress(ControlUnreachable, ConnectionError, OSError):
            reply = await answer
            if reply.get("result") == "accepted":
                accepted.append(str(reply["trigger_id"]))
        state, _ = replay(s.journal)
        for trigger_id in accepted:
            assert trigger_id in state.seen, f"an accepted fire is not in the journal: {plan}"
        await asyncio.sleep(plan.down_ms / 1000)  # how long systemd's RestartSec keeps it down

        if plan.kill_again:
            resumed_before = s.audit_types().count("resumed")
            async with s.daemon() as (proc, notify):
                # Killed again while it resumes the kill (or, with nothing to resume, at READY).
                await eventually(
                    lambda: (
                        s.audit_types().count("resumed") > resumed_before
                        or "READY=1" in notify.lines
                    ),
                    timeout_s=30.0,
                    interval_s=0.001,
                )
                await asyncio.sleep(plan.delay_ms / 1000)  # the drill's chosen moment
                await sigkill(proc)

        async with s.daemon() as (proc, notify):
            assert await notify.wait_for("READY=1", 60), s.log()
            if not state.seen:
                # The daemon died before journaling the fire: the operator fires again.
                reply = await s.ask({"op": "fire", "reason": f"drill {seed} again"})
                assert reply.get("result") == "accepted", reply
                accepted.append(str(reply["trigger_id"]))
            await eventually(lambda: all(n == 0 for n in s.open_orders().values()), timeout_s=30.0)
            status = (await s.ask({"op": "status"}))["status"]
            assert status["latched"] is True, (plan, status, s.log())
            for trigger_id in [*state.seen, *accepted]:
                await s.ask(
                    {"op": "wait", "trigger_id": trigger_id, "until": "done", "timeout_s": 30},
                    timeout_s=40.0,
                )

        final, _ = replay(s.journal)
        print(  # the drill's line in `pytest -s` output: where it died and what it left
            f"crash drill seed={seed} killed after {plan.stage}+{plan.delay_ms:.0f}ms "
            f"(audit had {stages_seen}) with {open_at_kill}/{sum(before.values())} open, "
            f"fire {'acknowledged' if state.seen else 'lost before the journal'}, "
            f"second kill {plan.kill_again}, starts {s.starts}: flat, latched, journal whole"
        )
        assert final.latched, plan
        assert not final.unfinished, (plan, final.unfinished)
        for trigger_id in accepted:
            assert trigger_id in final.seen, (plan, trigger_id)
        assert all(n == 0 for n in s.open_orders().values()), (plan, s.open_orders())
        # Only the final line of a journal may be torn by a SIGKILL, and replay says so.
        assert final.records >= len(accepted)


async def test_a_stop_while_a_cancel_resumes_at_start_leaves_it_to_resume_next_time(
    tmp_path: Path,
) -> None:
    """Review 53: a SIGTERM while a one-shot cancel resumed before READY stopped the venues
    under it (the engine, whose start had not finished, was not stopped): its next request
    failed on a closed session, the kill ended `failed` in the journal, and the next start did
    not resume it. A graceful stop must never be worse than a crash."""
    async with site(tmp_path, grace_period_s=1.0) as s:
        assert s.open_orders()["binance/mm-1"] > 0
        (tmp_path / "state").mkdir(parents=True, exist_ok=True)
        journal = Journal(s.journal)
        journal.open()
        cancel = Trigger(
            "c1", "control", Mode.CANCEL, "one shot", Scope.of(["binance"]), actor="ops"
        )
        journal.append("trigger", trigger=cancel.to_json())  # a crash left it unfinished
        journal.close()
        binance = s.cluster.venues["binance"]
        refusals = 10**6
        faults = [
            Fault.from_json(
                {"kind": "error_before", "endpoint": e, "http_status": 503, "count": refusals}
            )
            for e in ("openOrders.cancelAll", "/api/v3/openOrders")
        ]
        for fault in faults:
            binance.faults.add(fault)
        async with s.daemon() as (proc, notify):
            # The resumed cancel's first cancels were refused: it is retrying, before READY.
            await eventually(lambda: any(f.count != refusals for f in faults), timeout_s=30.0)
            assert "READY=1" not in notify.lines  # still resuming
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 30)
        state, _ = replay(s.journal)
        assert "c1" in state.unfinished, (state.last_kill, s.log())
        binance.faults.clear()
        async with s.daemon() as (proc, notify):
            assert await notify.wait_for("READY=1", 60), s.log()
            assert s.audit_types().count("resumed") == 2
            assert s.open_orders()["binance/mm-1"] == 0
        final, _ = replay(s.journal)
        assert not final.unfinished
        assert not final.latched
