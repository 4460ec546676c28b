"""sd_notify: datagrams on a real AF_UNIX socket, abstract namespace, no-op outside systemd."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from killswitch.notify import Notifier


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        yield sock, path


def test_ready_sends_ready_and_a_status_line(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})

    assert notifier.ready("running; 3 inputs")

    assert sock.recv(4096) == b"READY=1\nSTATUS=running; 3 inputs"


def test_each_message_kind_has_its_systemd_key(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})

    notifier.watchdog()
    notifier.status("sweeping")
    notifier.stopping("stopping")

    assert [sock.recv(4096) for _ in range(3)] == [
        b"WATCHDOG=1",
        b"STATUS=sweeping",
        b"STOPPING=1\nSTATUS=stopping",
    ]


def test_an_at_sign_address_reaches_the_abstract_namespace() -> None:
    name = f"killswitch-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)

        assert Notifier({"NOTIFY_SOCKET": "@" + name}).watchdog()

        assert sock.recv(4096) == b"WATCHDOG=1"


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier({})

    assert not notifier.enabled
    assert notifier.ready("x") is False


def test_a_vanished_socket_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})

    assert notifier.watchdog() is False
    assert "sd_notify failed" in caplog.text


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}, 0.1),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_the_watchdog_period_is_half_of_watchdog_usec_for_this_process(
    env: dict[str, str], expected: float | None
) -> None:
    assert Notifier(env).watchdog_interval_s == expected
