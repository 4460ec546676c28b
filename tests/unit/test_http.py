"""The REST transport's failures: what each means for the request, and never a signed URL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from killswitch.exchanges.base import OutcomeUnknown
from killswitch.exchanges.http import RestTransport


@pytest.fixture
async def garbled_server() -> AsyncIterator[str]:
    """A server that answers every request with a status line no HTTP client can parse."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 two-hundred OK\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def test_a_garbled_answer_is_outcome_unknown_and_never_carries_the_signed_url(
    garbled_server: str,
) -> None:
    transport = RestTransport(garbled_server, venue="mexc", account="acct0", timeout_s=2.0)
    await transport.start()
    try:
        with pytest.raises(OutcomeUnknown) as info:
            await transport.request(
                "DELETE", "/api/v3/openOrders", query="symbol=BTCUSDT&signature=deadbeefcafe"
            )
    finally:
        await transport.close()
    error = info.value
    assert error.endpoint == "DELETE /api/v3/openOrders"
    chain: list[BaseException] = []
    seen: BaseException | None = error
    while seen is not None:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    assert not any("deadbeefcafe" in str(e) or "signature" in str(e) for e in chain)
