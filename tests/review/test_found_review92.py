"""Review 92 (an operator using the replicated fire), F4: the NOT REPLICATED reason named the
broker's error class twice ("KafkaConnectionError: KafkaConnectionError: Unable to bootstrap"),
as aiokafka's errors open their message with their class's name already."""

from __future__ import annotations

from aiokafka.errors import KafkaConnectionError

from killswitch.control_client import format_status
from killswitch.kafka.client import broker_error


def test_a_broker_error_is_named_once() -> None:
    said = broker_error(KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 9)]"))
    assert said.count("KafkaConnectionError") == 1
    assert said.startswith("KafkaConnectionError: Unable to bootstrap")


def test_an_error_that_does_not_name_itself_is_named() -> None:
    assert broker_error(TimeoutError()) == "TimeoutError"
    assert broker_error(OSError("connection refused")) == "OSError: connection refused"


def test_status_says_in_its_first_lines_that_latches_are_not_replicated() -> None:
    # F5: the NOT REPLICATED block came last, after any list of unresolved kills.
    status = {
        "latched": True,
        "latches": [{"trigger_id": "t1", "scope": {}}, {"trigger_id": "t2", "scope": {}}],
        "latch_topic": {"connected": False, "synced": True, "not_on_topic": ["t2"]},
        "accounts": [],
    }
    first = format_status(status).splitlines()[0]
    assert first.startswith("LATCHED: 2 latch(es), 1 NOT REPLICATED")
    del status["latch_topic"]
    assert "NOT REPLICATED" not in format_status(status)
