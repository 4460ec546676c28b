"""Review 66 (suspicion, confirmed here): a connector whose start failed was never started
again, though `VenueService.start` said "its connector retries on first use". A Binance account
whose first time read failed (a 503, a 429 at a restart) ran for good without its ws-api
session and its clock keeper: every kill went over REST on an unmeasured clock.

Now the start is retried in the background, with backoff, until it succeeds or the daemon stops.
"""

from __future__ import annotations

from killswitch.app import VenueService
from killswitch.backoff import Backoff
from killswitch.sim.faults import Fault, FaultKind
from tests.conftest import eventually
from tests.fixtures.binance import binance_venue


async def test_a_venue_that_failed_to_start_is_started_again() -> None:
    async with binance_venue() as venue:
        venue.sim.faults.add(
            Fault(FaultKind.ERROR_BEFORE, endpoint="/api/v3/time", http_status=503, count=1)
        )
        exchange = venue.exchange()
        service = VenueService(retry_backoff=lambda: Backoff(initial_s=0.01, max_s=0.05))
        service.exchanges.append(exchange)
        await service.start()
        assert service.failed_starts == {"binance/acct0": "OutcomeUnknown"}
        try:
            await eventually(lambda: not service.failed_starts, timeout_s=20.0)
            # Started for real: its ws-api session opens and the kill path uses it.
            await eventually(lambda: exchange.session is not None, timeout_s=20.0)
            await exchange.server_time_ms()
        finally:
            await service.stop()
