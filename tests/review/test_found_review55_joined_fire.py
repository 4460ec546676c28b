"""Review 55: `fire` for a trigger that joined a running kill answered "aborted" (exit 1,
"NOT flat") when a reset released only the other trigger of that kill. The reset ends the
joined kill and relaunches the rest at their own scopes; the socket waited on the old kill
object, though its own latch held and its relaunched kill ended confirmed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson

from killswitch.control_client import exit_code
from killswitch.handlers.control import ControlServer
from killswitch.kill.record import KillState
from tests.conftest import eventually
from tests.review.helpers import ReadsFake
from tests.unit.test_engine import kill_trigger, make_rig


async def test_a_joined_fire_follows_its_trigger_when_a_reset_releases_the_other(
    tmp_path: Path,
) -> None:
    venue = ReadsFake("binance", "b1")
    venue.place("BTCUSDT", "a-", n=2)
    venue.place("ETHUSDT", "b-", n=2)
    rig = await make_rig(tmp_path, {"binance": venue})
    server = ControlServer(rig.engine, tmp_path / "control.sock")
    try:
        venue.hold_from = 2  # k1's verification read waits: k1 still runs
        await rig.engine.submit(kill_trigger("k1", venues=["binance"]))
        await eventually(lambda: venue.reads >= 2)
        line = {
            "op": "fire",
            "id": "k2",
            "venues": ["binance"],
            "symbols": ["BTCUSDT"],
            "reason": "desk a",
            "wait": "done",
            "timeout_s": 10,
        }
        fire = asyncio.create_task(server.handle_line(orjson.dumps(line), "ops"))
        await eventually(lambda: rig.engine.kill_for("k2") is not None)
        assert rig.engine.kill_for("k2") is rig.engine.kill_for("k1")  # joined

        assert await rig.engine.reset(actor="op", reason="desk b may trade", only=["k1"])
        venue.release.set()
        answer = await fire
        relaunched = rig.engine.kill_for("k2")
        assert relaunched is not None
        assert "k2" in rig.engine.latches()
        assert answer["outcome"] == relaunched.state.value, answer
        assert relaunched.state in (KillState.FLAT, KillState.CONFIRMED)
        assert exit_code(answer) == 0, answer

        waited = await server.handle_line(
            orjson.dumps({"op": "wait", "trigger_id": "k2", "until": "done", "timeout_s": 5}),
            "ops",
        )
        assert exit_code(waited) == 0, waited
    finally:
        venue.release.set()
        await rig.engine.stop()
