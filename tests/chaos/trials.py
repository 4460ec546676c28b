"""Seeded chaos trials: one kill over the three real simulators while things go wrong.

A trial is a pure function of its seed (`plan_trial`): which faults the simulators inject
(5xx before or after a request is applied, stalls, 429 storms with `Retry-After`, clock skew,
user-stream drops, silent streams), on which venue, account and endpoint, how often, whether a
rogue bot keeps placing orders on one account during the kill, and the kill's scope. `run_trial`
plays it against `kill_rig` (real sims on loopback, real connectors, live stream supervisors,
the in-process engine) and returns what happened; `Outcome.problems` lists every promise
broken:

* the kill is proved flat within its deadline;
* nothing in scope is left open, checked from the simulator's books after the rogue stops
  (stream cancels and the latched sweeper must catch what it placed after the proof);
* nothing out of scope was touched;
* no venue answered 418;
* BingX answered no throttling (100410) our clients earned: none from a window, an error
  lock, or a request sent into a wait (the rogue bot's order path aside; a storm's own 100410s
  are injected, not earned).

Each trial also draws how BingX answers the questions its sources leave open (reference §3.7):
the named `strictest` or `most_permissive` set, or each switch at random. The tally says which
ran, and a failing trial names its variant.

The simulators run with `ban_grace_s = BAN_GRACE_S`: a request that reaches a venue within
50 ms of a 429 it was not told of yet (it was in flight when the 429 left) is refused, but not
counted toward a 418 ban; every later request inside the `Retry-After` is. Binance bans for
"failing to back off after receiving 429s"; without the grace, any client with three requests
in flight when a storm starts is banned, however it behaves.

`TALLY` collects outcomes for the summary line `tests/chaos/conftest.py` prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from killswitch.drill.demo import BASES, Workload, symbol
from killswitch.kill.config import EngineConfig
from killswitch.model import AccountRef, Mode, Scope, Trigger
from killswitch.sim.bingx import VARIANTS, BingxBehaviour, BingxSim
from killswitch.sim.rogue import RogueBot
from tests.conftest import eventually
from tests.fixtures.kill import KillRig, kill_rig

VENUES = ("binance", "mexc", "bingx")
ROGUE_PATH = {"bingx": "/openApi/spot/v1/trade/order"}
BAN_GRACE_S = 0.05
ACCOUNTS = ("mm-1", "mm-2")
DEADLINE_S = 30.0  # BingX at its real limits: lists at 2/s, unannounced 100410 backoffs of 2 s
CHAOS_CONFIG = EngineConfig(
    deadline_s=DEADLINE_S,
    retry_initial_s=0.02,
    retry_max_s=0.5,
    quiet_window_s=0.3,
    sweep_interval_s=1.0,  # the latched sweeper catches what a silent stream hides
)
WORKLOAD = Workload(
    accounts_per_venue=len(ACCOUNTS),
    symbols_per_venue=4,
    orders_per_symbol=6,
    list_fraction=0.34,
    latency_ms=2.0,
    jitter_ms=1.0,
)
# Request endpoints a fault may target (None: every request of the account).
ENDPOINTS: dict[str, tuple[str | None, ...]] = {
    "binance": (
        None,
        "openOrders.cancelAll",
        "orderList.cancel",
        "openOrders.status",
        "openOrderLists.status",
        "/api/v3/openOrders",
    ),
    "mexc": (None, "/api/v3/openOrders", "/api/v3/order"),
    "bingx": (
        None,
        "/openApi/spot/v1/trade/cancelOpenOrders",
        "/openApi/spot/v1/trade/cancelOrders",
        "/openApi/spot/v1/oco/cancel",
        "/openApi/spot/v1/trade/openOrders",
        "/openApi/spot/v1/oco/openOrderList",
    ),
}
FAULT_KINDS = (
    "error_before",
    "error_after",
    "stall",
    "rate_limit",
    "clock_skew",
    "ws_drop",
    "ws_silent",
    "rogue",
)


@dataclass(frozen=True)
class Injection:
    """One fault for one venue: the admin API's fault JSON, and when to add it."""

    venue: str
    spec: dict[str, Any]
    after_s: float = 0.0  # 0: before the trigger; else this long after it


@dataclass(frozen=True)
class Trial:
    seed: int
    kinds: tuple[str, ...]
    injections: tuple[Injection, ...]
    rogue: str | None  # the account label the rogue bot trades on
    rogue_rate_per_s: float
    scope: Scope
    bingx: BingxBehaviour = field(default_factory=BingxBehaviour)

    @property
    def bingx_variant(self) -> str:
        """`strictest`, `most_permissive`, or `mixed` (switches drawn one by one)."""
        name = self.bingx.describe()
        return name if name in VARIANTS else "mixed"

    def describe(self) -> str:
        parts = [f"{i.venue}:{i.spec}@{i.after_s:.2f}s" for i in self.injections]
        if self.rogue:
            parts.append(f"rogue on {self.rogue} at {self.rogue_rate_per_s:.0f}/s")
        return (
            f"seed={self.seed} scope={self.scope.to_json()} bingx={self.bingx.describe()} "
            + "; ".join(parts)
        )


def plan_trial(seed: int) -> Trial:
    """Draw a trial from `seed`: one to three kinds of trouble, and a scope."""
    rng = random.Random(seed)
    kinds = tuple(sorted(rng.sample(FAULT_KINDS, k=rng.randint(1, 3))))
    roll = rng.random()
    if roll < 0.7:
        scope = Scope()
    elif roll < 0.85:
        scope = Scope.of(venues=[rng.choice(VENUES)])
    else:
        scope = Scope.of(venues=[rng.choice(VENUES)], accounts=[rng.choice(ACCOUNTS)])
    in_scope = [f"{v}/{a}" for v in VENUES for a in ACCOUNTS if _covers(scope, v, a)]
    rogue = rng.choice(in_scope) if "rogue" in kinds else None
    injections: list[Injection] = []
    for kind in kinds:
        if kind == "rogue":
            continue
        for _ in range(rng.randint(1, 2)):
            label = rng.choice(in_scope)
            venue, account = label.split("/")
            if kind == "rate_limit" and label == rogue:
                # The bot signs with the same key: a storm on it would be the bot's 418, not ours.
                others = [x for x in in_scope if x != rogue]
                if not others:
                    continue
                venue, account = rng.choice(others).split("/")
            injections.append(_injection(rng, kind, venue, account))
    return Trial(
        seed=seed,
        kinds=kinds,
        injections=tuple(injections),
        rogue=rogue,
        rogue_rate_per_s=rng.choice((10.0, 20.0, 40.0)),
        scope=scope,
        bingx=_draw_bingx(random.Random(seed * 7919 + 1)),
    )


def _draw_bingx(rng: random.Random) -> BingxBehaviour:
    """A named set a third of the time each, else every switch drawn on its own."""
    roll = rng.random()
    if roll < 1 / 3:
        return VARIANTS["strictest"]
    if roll < 2 / 3:
        return VARIANTS["most_permissive"]
    return BingxBehaviour(
        **{name: rng.choice(choices) for name, choices in BingxBehaviour.CHOICES.items()}
    )


def _covers(scope: Scope, venue: str, account: str) -> bool:
    return scope.covers_account(AccountRef(venue, account))


def _injection(rng: random.Random, kind: str, venue: str, account: str) -> Injection:
    spec: dict[str, Any] = {"kind": kind, "account": account}
    after_s = 0.0
    if kind in ("error_before", "error_after"):
        spec["endpoint"] = rng.choice(ENDPOINTS[venue])
        spec["http_status"] = rng.choice((500, 502, 503, 504))
        if rng.random() < 0.5:
            spec["count"] = rng.randint(1, 4)
        else:
            spec["probability"] = rng.choice((0.3, 0.5))
            spec["count"] = rng.randint(3, 8)
    elif kind == "stall":
        spec["endpoint"] = rng.choice(ENDPOINTS[venue])
        spec["stall_s"] = rng.choice((0.3, 0.8, 1.5))
        spec["count"] = rng.randint(1, 2)
    elif kind == "rate_limit":
        spec["endpoint"] = rng.choice(ENDPOINTS[venue])
        spec["retry_after_s"] = rng.choice((1, 1, 2))
        spec["count"] = rng.randint(1, 4)
        after_s = rng.choice((0.0, 0.0, 0.003, 0.01))  # before the kill, or into its wave
    elif kind == "clock_skew":
        # Past the 5 s receive window (and BingX's 5 s), ahead or behind.
        spec["skew_ms"] = rng.choice((-1, 1)) * rng.randint(7_000, 30_000)
    elif kind == "ws_drop":
        spec["count"] = rng.randint(1, 3)
        after_s = rng.choice((0.0, 0.0, 0.005, 0.02, 0.05))
    elif kind == "ws_silent":
        pass  # standing: the stream stays up and says nothing until the trial ends
    return Injection(venue, spec, after_s)


@dataclass
class Outcome:
    trial: Trial
    problems: list[str] = field(default_factory=list)
    time_to_flat_ms: float | None = None
    wall_s: float = 0.0
    rogue_placed: int = 0
    faults_fired: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class Tally:
    """Every trial's outcome in this session, for the printed summary."""

    outcomes: list[Outcome] = field(default_factory=list)

    def lines(self) -> list[str]:
        if not self.outcomes:
            return []
        passed = sum(o.ok for o in self.outcomes)
        failed = len(self.outcomes) - passed
        lines = [f"chaos: {passed} passed, {failed} failed"]
        per_kind: Counter[str] = Counter()
        per_kind_failed: Counter[str] = Counter()
        fired: Counter[str] = Counter()
        for o in self.outcomes:
            for kind in o.trial.kinds:
                per_kind[kind] += 1
                per_kind_failed[kind] += not o.ok
            fired.update(o.faults_fired)
        lines.append(
            "chaos trials per fault: "
            + ", ".join(
                f"{k} {per_kind[k]}"
                + (f" ({per_kind_failed[k]} failed)" if per_kind_failed[k] else "")
                for k in FAULT_KINDS
            )
        )
        variants: Counter[str] = Counter(o.trial.bingx_variant for o in self.outcomes)
        variants_failed: Counter[str] = Counter(
            o.trial.bingx_variant for o in self.outcomes if not o.ok
        )
        lines.append(
            "chaos bingx variants: "
            + ", ".join(
                f"{k} {variants[k]}"
                + (f" ({variants_failed[k]} failed)" if variants_failed[k] else "")
                for k in ("strictest", "most_permissive", "mixed")
            )
        )
        lines.append(
            "chaos faults drawn in the sims (standing skew and silence not counted): "
            + (", ".join(f"{k} {v}" for k, v in sorted(fired.items())) or "none")
        )
        ttf = sorted(o.time_to_flat_ms for o in self.outcomes if o.time_to_flat_ms is not None)
        if ttf:
            p95 = ttf[min(len(ttf) - 1, int(0.95 * len(ttf)))]
            placed = sum(o.rogue_placed for o in self.outcomes)
            lines.append(
                f"chaos time to flat: median {ttf[len(ttf) // 2]:.0f} ms, p95 {p95:.0f} ms, "
                f"max {ttf[-1]:.0f} ms; rogue orders placed during kills: {placed}"
            )
        lines += [
            f"chaos FAILED {o.trial.describe()}: {'; '.join(o.problems)}"
            for o in self.outcomes
            if not o.ok
        ]
        return lines

    def export(self) -> list[dict[str, Any]]:
        """The outcomes as plain data, for a pytest-xdist worker to send to the controller."""
        return [
            {
                "seed": o.trial.seed,
                "problems": o.problems,
                "time_to_flat_ms": o.time_to_flat_ms,
                "wall_s": o.wall_s,
                "rogue_placed": o.rogue_placed,
                "faults_fired": dict(o.faults_fired),
            }
            for o in self.outcomes
        ]

    def absorb(self, exported: list[dict[str, Any]]) -> None:
        """Add another process's `export()`; each trial is drawn again from its seed."""
        for o in exported:
            self.outcomes.append(
                Outcome(
                    plan_trial(o["seed"]),
                    problems=list(o["problems"]),
                    time_to_flat_ms=o["time_to_flat_ms"],
                    wall_s=o["wall_s"],
                    rogue_placed=o["rogue_placed"],
                    faults_fired=Counter(o["faults_fired"]),
                )
            )


TALLY = Tally()


async def run_trial(trial: Trial, tmp_path: Path) -> Outcome:
    """Play `trial` on a fresh rig and check every promise; never raises for a broken one."""
    outcome = Outcome(trial)
    started = time.monotonic()
    async with kill_rig(tmp_path, WORKLOAD, CHAOS_CONFIG) as rig:
        bingx_sim = rig.sim("bingx")
        assert isinstance(bingx_sim, BingxSim)
        bingx_sim.set_behaviour(trial.bingx)
        for venue in VENUES:
            sim = rig.sim(venue)
            sim.settings.ban_grace_s = BAN_GRACE_S
            for tracker in sim.bans.values():  # the clients met while the rig started
                tracker.grace_s = BAN_GRACE_S
        labels = [a.label for a in rig.accounts]
        in_scope = [x for x in labels if _covers(trial.scope, *x.split("/"))]
        before = rig.all_open()
        bot = await _start_rogue(rig, trial) if trial.rogue else None
        late: list[asyncio.Task[None]] = []
        try:
            for inj in trial.injections:
                if inj.after_s == 0.0:
                    rig.fault(inj.venue, **inj.spec)
            trigger = Trigger(
                f"chaos-{trial.seed}",
                "chaos",
                Mode.KILL,
                "chaos trial",
                trial.scope,
                created_ms=int(time.time() * 1000),
            )
            await rig.engine.submit(trigger)
            for inj in trial.injections:
                if inj.after_s > 0:
                    late.append(asyncio.create_task(_late_fault(rig, inj)))
            kill = rig.engine.kill_for(trigger.id)
            assert kill is not None
            try:
                async with asyncio.timeout(DEADLINE_S + 10):
                    await kill.done.wait()
            except TimeoutError:
                outcome.problems.append("the kill reported neither flat nor failed in time")
            if not kill.flat.is_set():
                outcome.problems.append(f"not proved flat: state {kill.state.value}")
            elif kill.time_to_flat_ms is not None:
                outcome.time_to_flat_ms = kill.time_to_flat_ms
                if kill.time_to_flat_ms > DEADLINE_S * 1000:
                    outcome.problems.append(f"flat after the deadline: {kill.time_to_flat_ms} ms")
            if bot is not None:
                # Let the bot place a few orders into the latch before it stops.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await bot.wait_placed(bot.placed + 3)
        finally:
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
            if bot is not None:
                await bot.stop()
                outcome.rogue_placed = bot.placed
        try:
            await eventually(
                lambda: all(rig.open_orders(x) == 0 and not rig.book(x).lists for x in in_scope),
                timeout_s=15.0,
                interval_s=0.05,
            )
        except AssertionError:
            left = {x: rig.open_orders(x) for x in in_scope if rig.open_orders(x)}
            outcome.problems.append(f"left open in scope: {left}")
        touched = {x: (before[x], rig.open_orders(x)) for x in labels if x not in in_scope}
        changed = {x: v for x, v in touched.items() if v[0] != v[1]}
        if changed:
            outcome.problems.append(f"out of scope changed (before, after): {changed}")
        earned = bingx_sim.earned_throttles(ignore=[ROGUE_PATH["bingx"]])
        if earned:
            outcome.problems.append(f"bingx throttled our clients: {earned}")
        for venue in VENUES:
            counters = rig.sim(venue).counters
            if venue == "bingx":
                # The rogue bot signs with the account's key: its own order path may earn a
                # ban (that path and key only), which says nothing of the kill.
                bans = sum(
                    v
                    for k, v in counters.items()
                    if k.startswith("418 ") and not k.endswith(ROGUE_PATH["bingx"])
                )
                if bans:
                    outcome.problems.append(f"bingx answered 418 x{bans}")
            elif counters["http 418"]:
                outcome.problems.append(f"{venue} answered 418 x{counters['http 418']}")
            for key, value in counters.items():
                if key.startswith("faults "):
                    outcome.faults_fired[key.removeprefix("faults ")] += value
    outcome.wall_s = time.monotonic() - started
    return outcome


async def _late_fault(rig: KillRig, inj: Injection) -> None:
    await asyncio.sleep(inj.after_s)  # the trial's schedule, not a wait for a condition
    rig.fault(inj.venue, **inj.spec)


async def _start_rogue(rig: KillRig, trial: Trial) -> RogueBot:
    assert trial.rogue is not None
    venue, _ = trial.rogue.split("/")
    account = rig.account(trial.rogue)
    bot = RogueBot(
        venue=venue,
        rest_url=rig.sim(venue).base_url,
        api_key=account.api_key,
        api_secret=account.secret,
        symbols=[symbol(venue, b) for b in BASES[:3]],
        rate_per_s=trial.rogue_rate_per_s,
        client_id_prefix="rogue_",
    )
    await bot.start()
    async with asyncio.timeout(10.0):
        await bot.wait_placed(2)
    return bot


def kind_counts(trials: list[Trial]) -> Counter[str]:
    """How many of `trials` include each kind of trouble."""
    return Counter(k for t in trials for k in t.kinds)
