"""Logging: JSON lines off a terminal, readable lines on one, secrets redacted everywhere."""

from __future__ import annotations

import argparse
import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from killswitch.cli import configure_logging
from killswitch.logs import REDACTED, RedactSecrets, setup_logging
from killswitch.settings import Settings

SECRET = "hunter2-very-secret-api-value"

log = logging.getLogger("killswitch.test")


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    yield stream
    # Leave a quiet handler behind so later tests do not write to a closed stream.
    setup_logging("WARNING", "json", stream=io.StringIO())


def reject_key(key: str) -> None:
    raise ValueError(f"bad key {key}")


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_off_a_terminal_each_record_is_one_json_object_per_line(out: io.StringIO) -> None:
    setup_logging("INFO", "auto", stream=out)

    log.info("kill started trigger=%s\nsecond line", "t-1", extra={"trigger_id": "t-1"})

    [line] = lines(out)
    record = orjson.loads(line)
    assert record == {
        "level": "INFO",
        "logger": "killswitch.test",
        "msg": "kill started trigger=t-1\nsecond line",
        "trigger_id": "t-1",
    }


def test_on_a_terminal_records_are_readable_text(out: io.StringIO) -> None:
    tty = FakeTty()
    setup_logging("INFO", "auto", stream=tty)

    log.warning("flat account=%s", "binance/mm-1")

    [line] = tty.getvalue().splitlines()
    assert line.endswith("WARNING killswitch.test: flat account=binance/mm-1")


def test_the_level_filters_records(out: io.StringIO) -> None:
    setup_logging("WARNING", "json", stream=out)

    log.info("hidden")
    log.warning("shown")

    assert [orjson.loads(x)["msg"] for x in lines(out)] == ["shown"]


def test_a_secret_in_message_arguments_and_traceback_is_redacted(out: io.StringIO) -> None:
    setup_logging("DEBUG", "json", secrets=[SECRET], stream=out)

    log.info("signing with %s", SECRET)
    log.info("params %r", {"secret": SECRET, "multi": SECRET + "\nline"})
    try:
        reject_key(SECRET)
    except ValueError:
        log.exception("request failed key=%s", SECRET)
    log.info("extra field", extra={"header": f"X-KEY: {SECRET}"})
    log.info("stack", stack_info=True)

    text = out.getvalue()
    assert SECRET not in text
    assert text.count(REDACTED) >= 6
    records = [orjson.loads(x) for x in lines(out)]
    assert "ValueError: bad key [redacted]" in records[2]["exc"]


def test_a_secret_inside_a_non_string_extra_field_is_redacted(out: io.StringIO) -> None:
    setup_logging("INFO", "json", secrets=[SECRET], stream=out)

    log.info("request", extra={"params": {"signature": SECRET, "n": 1}})

    record = orjson.loads(lines(out)[0])
    assert record["params"] == {"signature": REDACTED, "n": 1}
    assert SECRET not in out.getvalue()


def test_a_multiline_secret_printed_through_repr_is_redacted() -> None:
    pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIabc\n-----END PRIVATE KEY-----"
    redactor = RedactSecrets([pem])

    assert redactor.redact(repr((pem,))) == f"('{REDACTED}',)"
    assert redactor.redact(f"key={pem}") == f"key={REDACTED}"


def test_a_secret_containing_another_is_redacted_whole() -> None:
    redactor = RedactSecrets(["abc", "xxabcxx"])

    assert redactor.redact("1 xxabcxx 2 abc") == f"1 {REDACTED} 2 {REDACTED}"


def test_the_daemons_logging_redacts_every_configured_secret(out: io.StringIO) -> None:
    settings = Settings(
        accounts=[{"venue": "binance", "name": "a", "api_key": "key-aaaa-1", "api_secret": SECRET}],
        kafka={"alert_hmac_key": "hmac-bbbb-2"},
    )
    configure_logging(argparse.Namespace(log_level="DEBUG"), settings)
    handler = logging.getLogger().handlers[-1]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(out)

    log.debug("leak %s %s %s", SECRET, "key-aaaa-1", "hmac-bbbb-2")

    assert orjson.loads(lines(out)[0])["msg"] == f"leak {REDACTED} {REDACTED} {REDACTED}"


def test_setup_twice_keeps_a_single_handler(out: io.StringIO) -> None:
    before = len(logging.getLogger().handlers)
    setup_logging("INFO", "json", stream=out)
    setup_logging("INFO", "json", stream=out)

    log.info("once")

    assert len(lines(out)) == 1
    assert len(logging.getLogger().handlers) <= before + 1
