"""Review 99, of bef9882 and 39b8028.

- A stop's "dead man's switch left armed" line missed a switch left to expire while the daemon
  was unhealthy (armed on the venue all the same: it fires), and named one whose every arm was
  refused (never armed: nothing fires). Now it names each switch armed at least once.
- "No legal client id starts with '<'" held for ids, not for prefixes: a scope's prefix "<"
  covered the unread markers, so a list (or order) whose ids no read showed was decided in
  scope. Now an unread id is covered by no prefix.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import pytest

from killswitch.exchanges.base import DeadMansSwitchState, Fatal
from killswitch.exchanges.bingx import CAPABILITIES as BINGX
from killswitch.kill.latched import DeadMansSwitches
from killswitch.model import UNREAD_CLIENT_ID, UNREAD_DIGITS_ID, AccountRef, Order, OrderList, Scope

REF = AccountRef("bingx", "bx0")


@dataclass
class Switch:
    """A venue account's cancel-all-after timer: arms answered, or refused."""

    refuse: bool = False
    capabilities: object = BINGX
    arms: list[int] = field(default_factory=list)

    async def arm_dead_mans_switch(self, timeout_s: int) -> DeadMansSwitchState:
        if self.refuse:
            raise Fatal("permission denied", venue="bingx", account="bx0")
        self.arms.append(timeout_s)
        return DeadMansSwitchState(active=True)


@dataclass
class Acct:
    exchange: Switch
    ref: AccountRef = REF
    dead_mans_switch_s: int = 30


async def kept(switch: Switch, rounds: int) -> DeadMansSwitches:
    """`DeadMansSwitches.keep` run for `rounds` rounds: healthy for the first, then not."""
    done = asyncio.Event()
    seen = [0]

    async def sleep(_s: float) -> None:
        seen[0] += 1
        if seen[0] >= rounds:
            done.set()
            await asyncio.Event().wait()

    dms = DeadMansSwitches(emit=lambda *a, **k: None, healthy=lambda: seen[0] == 0, sleep=sleep)
    task = asyncio.create_task(dms.keep(Acct(switch)))  # type: ignore[arg-type]
    await done.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return dms


async def test_a_switch_left_to_expire_while_unhealthy_is_named_at_a_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    switch = Switch()
    dms = await kept(switch, rounds=2)
    assert switch.arms == [30]
    assert dms.state[REF] == "expiring"
    with caplog.at_level(logging.WARNING, logger="killswitch.kill.latched"):
        dms.left_armed([Acct(switch)])  # type: ignore[list-item]
    assert "dead man's switch left armed account=bingx/bx0" in caplog.text


async def test_a_switch_never_armed_is_not_said_to_be_left_armed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    switch = Switch(refuse=True)
    dms = await kept(switch, rounds=1)
    assert dms.state[REF] == "failed"
    with caplog.at_level(logging.WARNING, logger="killswitch.kill.latched"):
        dms.left_armed([Acct(switch)])  # type: ignore[list-item]
    assert "left armed" not in caplog.text, caplog.text


@pytest.mark.parametrize("unread", [UNREAD_CLIENT_ID, UNREAD_DIGITS_ID])
def test_a_prefix_covers_no_id_a_read_did_not_show(unread: str) -> None:
    scope = Scope.of(client_order_id_prefix="<")
    order_list = OrderList(
        symbol="BTC-USDT",
        list_id="1",
        order_ids=("10", "11"),
        client_order_ids=("555001", "555002"),
        list_client_order_id=unread,
        contingency_type="OCO",
    )
    assert not scope.covers_list(order_list)
    assert not scope.covers_order(Order("BTC-USDT", "10", unread))
