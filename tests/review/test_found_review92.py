"""Review 92 (an operator using the replicated fire), F4: the NOT REPLICATED reason named the
broker's error class twice ("KafkaConnectionError: KafkaConnectionError: Unable to bootstrap"),
as aiokafka's errors open their message with their class's name already."""

from __future__ import annotations

from aiokafka.errors import KafkaConnectionError

from killswitch.kafka.client import broker_error


def test_a_broker_error_is_named_once() -> None:
    said = broker_error(KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 9)]"))
    assert said.count("KafkaConnectionError") == 1
    assert said.startswith("KafkaConnectionError: Unable to bootstrap")


def test_an_error_that_does_not_name_itself_is_named() -> None:
    assert broker_error(TimeoutError()) == "TimeoutError"
    assert broker_error(OSError("connection refused")) == "OSError: connection refused"
