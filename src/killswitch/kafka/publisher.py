"""`killswitch alert`: publish one risk alert to the configured alerts topic, as a producer would.

For a risk-engine team testing its integration, and for an operator firing through Kafka from a
shell. The alert is built and validated with the daemon's own model, refused when the daemon
would refuse it (a kill or cancel whose scope covers no configured account; a reset while
`kafka.allow_reset` is off), signed with `kafka.alert_hmac_key` when one is configured (header
`x-signature`: hex HMAC-SHA256 of the value bytes), published with acks=all, and printed as the
daemon will see it: topic, partition, offset, headers, value, and the trigger it becomes.
The key itself is never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import socket
import time
import uuid
from typing import Any

import orjson
from pydantic import ValidationError

from killswitch.handlers.alerts import (
    SIGNATURE_HEADER,
    Alert,
    AlertRejected,
    check_policy,
    describe_errors,
    parse_alert,
    signature,
)
from killswitch.model import AccountRef
from killswitch.settings import Settings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

EXIT_CODES_HELP = """\
exit codes:
  0  published: the broker acknowledged the record (acks=all)
  1  not published: the broker could not be reached or did not acknowledge in time
  2  refused: bad arguments or config, Kafka disabled, or an alert the daemon would refuse
     (a scope covering no configured account, a reset while kafka.allow_reset is off);
     nothing was published
"""


class AlertRefused(Exception):
    """An alert that must not be published: the daemon would refuse it, or it is malformed."""


class PublishFailed(Exception):
    """The broker did not acknowledge the record."""


def build_alert(args: argparse.Namespace, settings: Settings) -> Alert:
    """The alert the arguments describe, validated and checked as the daemon would."""
    kafka = settings.kafka
    if not kafka.enabled:
        raise AlertRefused("kafka.enabled is false in this config: the daemon reads no alerts")
    if args.action != "heartbeat" and not args.reason:
        raise AlertRefused(f"--reason is required for a {args.action} alert")
    now_ms = int(time.time() * 1000)
    data: dict[str, Any] = {
        "id": args.id
        or f"cli-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}",
        "ts": now_ms,
        "source": args.source or f"killswitch-cli/{getpass.getuser()}@{socket.gethostname()}",
        "action": args.action,
        "severity": args.severity,
        "reason": args.reason or "",
        "scope": {
            "venues": args.venue,
            "accounts": args.account,
            "symbols": args.symbol,
            "client_order_id_prefix": args.prefix,
        },
    }
    if args.ttl_ms is not None:
        data["ttl_ms"] = args.ttl_ms
    try:
        alert = Alert.model_validate(data)
    except ValidationError as exc:
        raise AlertRefused(f"bad alert: {describe_errors(exc)}") from None
    refs = [AccountRef(a.venue, a.name) for a in settings.accounts]
    try:
        check_policy(
            alert, now_ms=now_ms, ttl_ms=None, allow_reset=kafka.allow_reset, accounts=refs
        )
    except AlertRejected as exc:
        configured = ", ".join(str(r) for r in refs)
        raise AlertRefused(
            f"the daemon would refuse it: {exc.msg} (configured: {configured})"
        ) from None
    return alert


def encode(alert: Alert, settings: Settings) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The record's value bytes and headers (the signature when a key is configured)."""
    value = orjson.dumps(alert.model_dump(mode="json", exclude_none=True))
    key = settings.kafka.alert_hmac_key
    headers: list[tuple[str, bytes]] = []
    if key is not None:
        headers.append(
            (SIGNATURE_HEADER, signature(key.get_secret_value().encode(), value).encode())
        )
    return value, headers


async def publish(
    settings: Settings,
    value: bytes,
    headers: list[tuple[str, bytes]],
    *,
    key: str,
    timeout_s: float,
) -> dict[str, object]:
    """Send one record with acks=all; return where it landed."""
    from killswitch.kafka.client import new_producer

    kafka = settings.kafka
    producer = new_producer(kafka, client_id="killswitch-alert-cli")
    try:
        async with asyncio.timeout(timeout_s):
            await producer.start()
            meta = await producer.send_and_wait(
                kafka.alerts_topic, value, key=key.encode(), headers=headers
            )
    except TimeoutError:
        raise PublishFailed(
            f"no acknowledgement from {kafka.bootstrap_servers} within {timeout_s:.0f} s"
        ) from None
    except Exception as exc:  # noqa: BLE001 - aiokafka's errors are many; the operator gets one line
        raise PublishFailed(f"{kafka.bootstrap_servers}: {type(exc).__name__}: {exc}") from None
    finally:
        try:
            async with asyncio.timeout(5.0):
                await producer.stop()
        except Exception:  # noqa: BLE001, S110 - the outcome is already known
            pass
    return {"topic": meta.topic, "partition": meta.partition, "offset": meta.offset}


def as_seen(
    settings: Settings, value: bytes, headers: list[tuple[str, bytes]], meta: dict[str, object]
) -> dict[str, object]:
    """The record as the daemon will read it, through the daemon's own parser."""
    key = settings.kafka.alert_hmac_key
    alert = parse_alert(
        value, headers, hmac_key=key.get_secret_value().encode() if key is not None else None
    )
    record: dict[str, object] = {
        **meta,
        "headers": {k: v.decode() for k, v in headers},
        "signed": bool(headers),
        "value": orjson.loads(value),
    }
    if alert.action.value in ("kill", "cancel"):
        trigger = alert.to_trigger(received_ms=alert.ts).to_json()
        trigger.pop("received_ms", None)
        record["trigger"] = trigger
    return record


def render(record: dict[str, object]) -> str:
    value = record["value"]
    assert isinstance(value, dict)
    lines = [
        f"published {value['action']} alert {value['id']} to {record['topic']} "
        f"partition {record['partition']} offset {record['offset']}",
        "signed: " + ("yes (x-signature, HMAC-SHA256 of the value)" if record["signed"] else "no "
                      "(no kafka.alert_hmac_key configured)"),
    ]  # fmt: skip
    for name, text in dict(record["headers"]).items():  # type: ignore[call-overload]
        lines.append(f"header {name}: {text}")
    lines.append("value: " + orjson.dumps(value).decode())
    trigger = record.get("trigger")
    if isinstance(trigger, dict):
        lines.append(
            f"the daemon will see: a {trigger['mode']} from {trigger['source']} "
            f"(actor {trigger['actor']}), trigger id {trigger['id']}, scope "
            + orjson.dumps(trigger["scope"]).decode()
        )
    else:
        lines.append(f"the daemon will see: a {value['action']} from {value['source']}")
    return "\n".join(lines) + "\n"
