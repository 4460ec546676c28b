"""Configure logging: JSON lines for journald, readable lines on a terminal, secrets redacted.

No timestamps in JSON: journald stamps every line. The redaction filter sits on the handler and
rewrites the record itself (message, arguments, traceback, stack), so no formatter can print a
configured secret.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from typing import IO

import orjson

REDACTED = "[redacted]"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Attributes every LogRecord has; anything else came from `extra=` and is emitted as a field.
_RECORD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


class RedactSecrets(logging.Filter):
    """Replace every configured secret value in a record with `[redacted]`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets: list[str] = []
        self.set_secrets(secrets)

    def set_secrets(self, secrets: Iterable[str]) -> None:
        variants = set()
        for secret in secrets:
            if not secret:
                continue
            variants.add(secret)
            # A secret printed through repr() (in a tuple, a dict, an error) or inside a JSON
            # string is escaped: redact those spellings too.
            variants.add(repr(secret)[1:-1])
            variants.add(orjson.dumps(secret).decode()[1:-1])
        # Longest first, so a secret containing another is replaced whole.
        self._secrets = sorted(variants, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        record.msg = self.redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key not in _RECORD_ATTRS and isinstance(value, str):
                setattr(record, key, self.redact(value))
        return True


class _Redacting(logging.Formatter):
    """Redact the formatted line too: extras that are not strings bypass the filter."""

    def __init__(self, inner: logging.Formatter, redactor: RedactSecrets) -> None:
        super().__init__()
        self.inner = inner
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self.redactor.redact(self.inner.format(record))


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            data["exc"] = record.exc_text
        if record.stack_info:
            data["stack"] = record.stack_info
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and key not in data:
                data[key] = value
        return orjson.dumps(data, default=str).decode()


class TextFormatter(logging.Formatter):
    """Format a record for a person at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime(datefmt or "%H:%M:%S", time.localtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}"


_redactor = RedactSecrets()
_handler: logging.Handler | None = None


def setup_logging(
    level: str = "INFO",
    fmt: str = "auto",
    secrets: Iterable[str] = (),
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Install the single root handler (or reconfigure it) and return it."""
    global _handler
    out = sys.stdout if stream is None else stream
    if fmt == "auto":
        fmt = "text" if _isatty(out) else "json"
    _redactor.set_secrets(secrets)
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    handler = logging.StreamHandler(out)
    inner = TextFormatter() if fmt == "text" else JsonFormatter()
    handler.setFormatter(_Redacting(inner, _redactor))
    handler.addFilter(_redactor)
    root.addHandler(handler)
    root.setLevel(level.upper())
    _handler = handler
    return handler


def redact(text: str) -> str:
    """Return `text` with every known secret replaced, for output that bypasses logging."""
    return _redactor.redact(text)


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
