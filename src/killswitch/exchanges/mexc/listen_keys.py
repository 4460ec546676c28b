"""MEXC's listenKeys beyond one process: the key a connector made, kept in a small file so
the next life reuses it instead of making one more (a UID holds at most 60, each valid 60 min;
review 66: a crash loop made one per life until the UID could make none), and kept out of
websockets' debug lines (MEXC takes it in the URL's query).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("killswitch.exchanges.mexc.connector")  # as before the move


class _HideListenKey(logging.Filter):
    """Keep the listenKey, a credential-like secret, out of websockets' debug lines: it logs
    the request line, and MEXC takes the key in the URL's query."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "listenKey=" in text:
            record.msg, record.args = _KEY_IN_URL.sub("listenKey=<hidden>", text), None
        return True


_KEY_IN_URL = re.compile(r"listenKey=[^&\s]*")
WS_LOG = logging.getLogger("websockets.client.mexc")  # configured as websockets' own logs
WS_LOG.addFilter(_HideListenKey())


@dataclass(frozen=True, slots=True)
class RememberedKey:
    """A listenKey this account's connector holds. `ours`: made by our create, so ours to
    delete; a key taken up after a lost answer may be another client's (`_taken_up`)."""

    key: str = field(repr=False)  # a credential-like secret: never in logs or messages
    ours: bool


class ListenKeyFile:
    """Where an account's listenKey outlives the process (review 66): a small JSON file, mode
    0600, replaced atomically. A missing file is no key; an unreadable one is said (WARNING)
    and read as no key; a failed write is said and costs only the reuse."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self, account: str) -> RememberedKey | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            log.warning(
                "listenKey file unreadable account=%s path=%s error=%s: starting fresh",
                account,
                self.path,
                type(exc).__name__,
            )
            return None
        remembered = _parse_remembered(text)
        if remembered is None:
            log.warning(
                "listenKey file corrupt account=%s path=%s: starting fresh", account, self.path
            )
        return remembered

    def save(self, remembered: RememberedKey, account: str) -> None:
        body = json.dumps({"listen_key": remembered.key, "ours": remembered.ours})
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _write_private(tmp, body.encode())
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning(
                "listenKey file not saved account=%s path=%s error=%s: a crash now leaks the key",
                account,
                self.path,
                type(exc).__name__,
            )
            with contextlib.suppress(OSError):
                tmp.unlink()

    def forget(self, account: str) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning(
                "listenKey file not removed account=%s path=%s error=%s",
                account,
                self.path,
                type(exc).__name__,
            )


def _parse_remembered(text: str) -> RememberedKey | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    key, ours = data.get("listen_key"), data.get("ours")
    # MEXC's keys are hex: anything else in the file would go into a URL as it is.
    if not isinstance(key, str) or not key.isascii() or not key.isalnum() or len(key) > 256:
        return None
    if not isinstance(ours, bool):
        return None
    return RememberedKey(key, ours=ours)


def _write_private(path: Path, body: bytes) -> None:
    """Write `body` to `path`, readable by us alone, and flush it to the disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as file:
        os.fchmod(fd, 0o600)  # a temp file left by a crash keeps its mode otherwise
        file.write(body)
        file.flush()
        os.fsync(fd)
