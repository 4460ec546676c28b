"""Review: `fire` with an `id` already used answers with the earlier kill's outcome.

`ControlServer._fire` submits; the engine answers DUPLICATE; `kill_for(id)` is the earlier
kill, whose CONFIRMED state becomes this request's `ok: true, outcome: confirmed`, and
`exit_code` gives 0. The request's own scope (echoed in the answer) was never acted on: every
MEXC order is still open (DESIGN "No false flat"; `fire` exit 0 only when flat or confirmed).
A client that reuses an id for idempotent retries gets "done" for a different kill.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from killswitch.control_client import exit_code
from killswitch.handlers.control import ControlServer
from tests.unit.test_engine import make_rig


async def test_a_fire_answered_duplicate_never_exits_0_for_a_scope_it_did_not_act_on(
    tmp_path: Path,
) -> None:
    rig = await make_rig(tmp_path)
    server = ControlServer(rig.engine, tmp_path / "control.sock")
    try:

        def fire(venue: str) -> bytes:
            return orjson.dumps(
                {
                    "op": "fire",
                    "id": "eod-flatten",
                    "venues": [venue],
                    "reason": "end of day",
                    "wait": "confirmed",
                    "timeout_s": 30,
                }
            )

        first = await server.handle_line(fire("binance"), "ops")
        assert exit_code(first) == 0
        mexc_open = set(rig.venues["mexc"].open_keys())
        assert mexc_open

        second = await server.handle_line(fire("mexc"), "ops")
        assert rig.venues["mexc"].open_keys() == mexc_open  # nothing was done on MEXC
        assert exit_code(second) != 0, f"exit 0 for a MEXC fire that cancelled nothing: {second}"
        assert second.get("refused"), second  # refused: the id belongs to another fire

        retry = await server.handle_line(fire("binance"), "ops")  # the same fire, again
        assert retry["result"] == "duplicate"
        assert exit_code(retry) == 0  # an idempotent retry reports the kill it started
    finally:
        await rig.engine.stop()
