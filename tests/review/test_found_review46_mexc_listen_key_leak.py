"""Found by review 46: MEXC allows 60 listenKeys per UID, and a create answered 5xx may have
made its key (a 5xx is an unknown outcome). The connector forgot such keys and the supervisor's
next reconnect created another: a 5xx storm leaked one key per reconnect until the UID could
create none, for the daemon and every bot on the UID, for up to an hour. The valid keys are now
listed before and after a create gone unanswered, and the key it made is taken up."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web

from killswitch.model import AccountRef
from killswitch.sim.mexc import MexcSim
from killswitch.streams.supervisor import StreamSupervisor
from killswitch.streams.tracker import OrderTracker
from tests.fixtures.mexc import mexc_sim

UNANSWERED = 20


async def test_creates_answered_5xx_after_making_their_key_leak_no_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = MexcSim._create_listen_key
    calls = {"n": 0}

    async def made_then_503(
        self: MexcSim, request: web.Request, account: Any, params: dict[str, str]
    ) -> web.Response:
        await original(self, request, account, params)  # the key is made...
        calls["n"] += 1
        if calls["n"] <= UNANSWERED:
            return web.json_response({"code": 503, "msg": "busy"}, status=503)  # ...unanswered
        return await original(self, request, account, params)

    monkeypatch.setattr(MexcSim, "_create_listen_key", made_then_503)
    async with mexc_sim(accounts=1) as (sim, connect):
        exchange = connect("acct0")
        await exchange.start()
        supervisor = StreamSupervisor(
            exchange,
            OrderTracker(AccountRef("mexc", "acct0")),
            backoff_initial_s=0.01,
            backoff_max_s=0.02,
            reconcile_interval_s=None,
        )
        task = asyncio.create_task(supervisor.run())
        try:
            assert await supervisor.wait_live(30)
            held = [k for k in sim.listen_keys.values() if k.account == "acct0"]
            assert len(held) == 1, f"{len(held)} listenKeys held by one UID"
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
