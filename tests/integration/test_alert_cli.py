"""`killswitch alert` against the real broker (Tansu, or KILLSWITCH_TEST_KAFKA), and a daemon."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from killswitch.drill.demo import daemon_env, killswitch_command
from killswitch.handlers.alerts import parse_alert
from tests.conftest import eventually, free_port
from tests.fixtures.kafka import KafkaBroker, kafka_broker, read_topic
from tests.fixtures.kafka_daemon import KafkaDrill, kafka_drill

__all__ = ["kafka_broker"]

pytestmark = [pytest.mark.kafka]

KEY = "risk-engine-signing-key-4c1d"


async def alert_cli(d: KafkaDrill, config: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *killswitch_command(),
        "alert",
        "--config",
        str(config),
        *args,
        env=daemon_env(CREDENTIALS_DIRECTORY=str(d.credentials)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.slow
async def test_a_signed_kill_alert_is_published_once_and_the_daemon_acts_on_its_scope(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    async with kafka_drill(tmp_path, kafka_broker.bootstrap) as d:
        config = d.config("a", kafka={"alert_hmac_key": KEY})
        before = d.open_orders()
        async with d.daemon("a", config) as daemon:
            await daemon.ready()
            await d.wait_live(daemon)
            code, out, err = await alert_cli(
                d, config, "--action", "kill", "--venue", "binance", "--reason", "drawdown 5.2%",
                "--id", "cli-kill-1", "--json",
            )  # fmt: skip
            assert code == 0, out + err
            printed = orjson.loads(out)
            await eventually(lambda: d.flat(["binance/mm-1"]), timeout_s=60)
            journal = daemon.journal_records()
        [record] = await read_topic(kafka_broker.bootstrap, d.topics["alerts_topic"], count=1)
    # exactly what was printed is what the broker holds, signed with the configured key
    assert (record.partition, record.offset) == (printed["partition"], printed["offset"])
    assert orjson.loads(record.value) == printed["value"]
    alert = parse_alert(record.value, record.headers, hmac_key=KEY.encode())
    assert (alert.id, alert.action.value, alert.reason) == ("cli-kill-1", "kill", "drawdown 5.2%")
    assert printed["trigger"]["scope"]["venues"] == ["binance"]
    assert [r["trigger"]["id"] for r in journal if r["kind"] == "trigger"] == ["cli-kill-1"]
    # the scope was respected: the other venues kept their orders
    after = d.open_orders()
    assert after["mexc/mm-1"] == before["mexc/mm-1"] > 0
    assert after["bingx/mm-1"] == before["bingx/mm-1"] > 0
    assert KEY not in out + err


async def test_an_alert_the_daemon_would_refuse_is_refused_and_nothing_is_published(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    async with kafka_drill(tmp_path, kafka_broker.bootstrap) as d:
        config = d.config("a", kafka={"alert_hmac_key": KEY})
        code, _, err = await alert_cli(
            d, config, "--action", "kill", "--account", "mm-typo", "--reason", "x"
        )
        assert code == 2
        assert "covers no configured account" in err
        assert "nothing was published" in err
        code, _, err = await alert_cli(d, config, "--action", "reset", "--reason", "all clear")
        assert code == 2
        assert "allow_reset" in err
        code, _, err = await alert_cli(d, config, "--action", "kill")
        assert code == 2
        assert "--reason is required" in err
        # the first record on the topic is the next valid one: nothing went before it
        code, out, err = await alert_cli(
            d, config, "--action", "heartbeat", "--source", "pnl-monitor"
        )
        assert code == 0, out + err
        assert f"to {d.topics['alerts_topic']} partition 0 offset 0" in out
        assert "signed: yes" in out
        assert KEY not in out + err
        [record] = await read_topic(kafka_broker.bootstrap, d.topics["alerts_topic"], count=1)
    heartbeat = parse_alert(record.value, record.headers, hmac_key=KEY.encode())
    assert (heartbeat.action.value, heartbeat.source) == ("heartbeat", "pnl-monitor")


async def test_without_a_broker_the_alert_is_not_published_and_says_so(
    tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    async with kafka_drill(tmp_path, kafka_broker.bootstrap) as d:
        config = d.config("a", kafka={"bootstrap_servers": f"127.0.0.1:{free_port()}"})
        code, out, err = await alert_cli(
            d, config, "--action", "kill", "--reason", "x", "--timeout", "5"
        )
    assert code == 1
    assert "NOT published" in err
    assert out == ""
