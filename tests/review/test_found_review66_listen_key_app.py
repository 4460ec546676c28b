"""Review 66: the daemon gives each MEXC account a listenKey file in its state directory, so
that the next process life reuses the key instead of making one (60 per UID); commands that
build connectors without a state directory (preflight, drill) keep none."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from killswitch.app import connector
from killswitch.exchanges.mexc import MexcExchange
from killswitch.settings import AccountSettings


def mexc_account() -> AccountSettings:
    return AccountSettings(
        venue="mexc",
        name="mm-1",
        rest_url="http://127.0.0.1:9",
        ws_url="ws://127.0.0.1:9/ws",
        api_key=SecretStr("k"),
        api_secret=SecretStr("s"),
    )


async def test_the_daemon_keeps_each_mexc_accounts_listen_key_in_its_state_dir(
    tmp_path: Path,
) -> None:
    exchange = connector(mexc_account(), state_dir=tmp_path)
    try:
        assert isinstance(exchange, MexcExchange)
        assert exchange._key_file is not None
        assert exchange._key_file.path == tmp_path / "listen-key-mexc-mm-1.json"
    finally:
        await exchange.close()


async def test_a_connector_built_without_a_state_dir_keeps_no_listen_key_file() -> None:
    exchange = connector(mexc_account())
    try:
        assert isinstance(exchange, MexcExchange)
        assert exchange._key_file is None
    finally:
        await exchange.close()
