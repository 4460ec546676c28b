"""A planned `CancelRequest` as the `Exchange` call it is, and what its answer acknowledged."""

from __future__ import annotations

from killswitch.exchanges.base import AlreadyGone, CancelAck, Exchange, Fatal, VenueError
from killswitch.kill.planner import CancelRequest, RequestKind


class BatchPartial(Exception):
    """A batch cancel where some ids failed: count what went (`ack`), retry `rest`."""

    def __init__(self, ack: CancelAck, rest: CancelRequest, error: VenueError) -> None:
        super().__init__(str(error))
        self.ack = ack
        self.rest = rest
        self.error = error


async def send_request(exchange: Exchange, request: CancelRequest) -> CancelAck:
    """Send `request` as its call; a batch whose ids failed only as already gone is a
    success, one with other failures raises `BatchPartial` (the worst error, Fatal first)."""
    kind = request.kind
    if kind is RequestKind.CANCEL_ALL:
        return await exchange.cancel_all(list(request.symbols))
    if kind is RequestKind.CANCEL_ALL_ACCOUNT:
        return await exchange.cancel_all(None)
    if kind is RequestKind.CANCEL_LIST:
        assert request.list_id is not None
        return await exchange.cancel_order_list(request.symbols[0], request.list_id)
    if kind is RequestKind.CANCEL_ORDER:
        return await exchange.cancel_order(request.symbols[0], request.order_ids[0])
    symbol = request.symbols[0]
    batch = await exchange.cancel_orders(symbol, list(request.order_ids))
    ack = CancelAck(cancelled=tuple((symbol, i) for i in batch.cancelled + batch.gone))
    if not batch.failed:
        return ack
    failed_ids = tuple(i for i, _ in batch.failed)
    errors = [e for _, e in batch.failed]
    worst = next((e for e in errors if isinstance(e, Fatal)), None) or errors[0]
    if all(isinstance(e, AlreadyGone) for e in errors):
        return CancelAck(cancelled=ack.cancelled + tuple((symbol, i) for i in failed_ids))
    rest = CancelRequest(
        RequestKind.CANCEL_ORDERS if len(failed_ids) > 1 else RequestKind.CANCEL_ORDER,
        request.symbols,
        failed_ids,
    )
    raise BatchPartial(ack, rest, worst)
