"""Review 38: BingX's error-count lock ("over 20 error code:... requests within 480000 ms for
this api", reference §3.5) does not say whose count it is, and §3.5 names two dimensions for
its limits ("per account UID and per API, and also per IP"). Each account kept its own count:
two accounts behind our IP could send 38 errors on one API in 480 s and earn the lock under the
per-IP reading ("No ban: zero BingX locks"). Each error now also counts for the IP, and the
larger count holds.
"""

from __future__ import annotations

import itertools
import random

import pytest

from killswitch.exchanges.base import AlreadyGone, RateLimited
from killswitch.exchanges.bingx.rest import BingxCharges
from killswitch.exchanges.bingx.venue import OCO_CANCEL
from killswitch.exchanges.budget import Priority
from killswitch.exchanges.clock import ServerClock
from killswitch.exchanges.rest import Answer

_SCOPES = itertools.count()


def _charges(account: str, now: list[float], scope: str) -> BingxCharges:
    async def sleep(_: float) -> None:
        return None

    return BingxCharges(
        account,
        ServerClock(),
        scope,
        budget_clock=lambda: now[0],
        budget_sleep=sleep,
        rng=random.Random(1),
    )


async def _errors(charges: BingxCharges, n: int, now: list[float]) -> None:
    answer = Answer(200, code=80016, msg="order not exist")
    for _ in range(n):
        await charges.acquire("POST", OCO_CANCEL, 1, Priority.KILL)
        charges.landed("POST", OCO_CANCEL, 1, answered=True)
        gone = AlreadyGone("order not exist", venue="bingx", account=charges.account, code=80016)
        charges.settle(OCO_CANCEL, answer, gone, None)
        now[0] += 1.0


async def test_the_errors_of_every_account_behind_one_ip_count_toward_one_lock() -> None:
    now = [1000.0]
    scope = f"review38-bingx-ip-{next(_SCOPES)}"
    a, b = _charges("mm-1", now, scope), _charges("mm-2", now, scope)
    await _errors(a, 19, now)
    # The IP has had 19 errors on this API: one more may lock it, from either account.
    with pytest.raises(RateLimited):
        await b.acquire("POST", OCO_CANCEL, 1, Priority.KILL)
    with pytest.raises(RateLimited):
        await a.acquire("POST", OCO_CANCEL, 1, Priority.KILL)
    # The window passes: both may send again.
    now[0] += 481.0
    await b.acquire("POST", OCO_CANCEL, 1, Priority.KILL)


async def test_accounts_behind_other_ips_keep_counts_of_their_own() -> None:
    now = [1000.0]
    a = _charges("mm-1", now, f"review38-bingx-ip-{next(_SCOPES)}")
    b = _charges("mm-2", now, f"review38-bingx-ip-{next(_SCOPES)}")
    await _errors(a, 19, now)
    await _errors(b, 18, now)  # none of a's count here
    with pytest.raises(RateLimited):
        await a.acquire("POST", OCO_CANCEL, 1, Priority.KILL)
