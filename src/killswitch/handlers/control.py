"""The operator's control socket: a local unix socket (mode 0600) speaking JSON lines.

One request object per line, one answer object per line::

    {"op": "fire", "venues": [], "accounts": [], "symbols": [], "prefix": null,
     "reason": "...", "cancel_only": false, "id": null, "wait": null, "timeout_s": 60}
    {"op": "status"}
    {"op": "reset", "reason": "..."}
    {"op": "wait", "trigger_id": "...", "until": "done" | "confirmed", "timeout_s": 60}

Answers are `{"ok": true, ...}` or `{"ok": false, "error": "..."}`. The actor of a fire or reset
is the peer's user as the kernel reports it (SO_PEERCRED), never what the client claims; a
claimed name is recorded next to it. A fire whose scope names no configured account is refused:
an operator's typo must not become a kill of nothing that reports success.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import socket
import stat
import struct
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from killswitch.engine import Engine, Kill, KillState
from killswitch.model import VENUES, Mode, Scope, Trigger

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024
DEFAULT_WAIT_S = 120.0


class ControlError(Exception):
    """A request the control socket refuses; the message goes back to the client."""


class ControlServer:
    """Serve the control socket at `path` for `engine` (a daemon `Service`)."""

    name = "control"

    def __init__(self, engine: Engine, path: Path) -> None:
        self.engine = engine
        self.path = path
        self._server: asyncio.Server | None = None
        self._stopped = asyncio.Event()
        self._clients: set[asyncio.Task[Any]] = set()
        self.requests = 0

    # -- service ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind the socket with mode 0600 (a stale socket file from a crash is replaced)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if not stat.S_ISSOCK(self.path.lstat().st_mode):
                raise ControlError(f"{self.path} exists and is not a socket")
            self.path.unlink()
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._client, path=str(self.path), limit=MAX_LINE
            )
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        log.info("control socket listening path=%s", self.path)

    async def run(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        self._stopped.set()
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.wait(self._clients, timeout=2.0)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def healthy(self) -> bool:
        return self._server is not None and self._server.is_serving()

    def status(self) -> str:
        return "listening" if self.healthy() else "closed"

    # -- protocol -------------------------------------------------------------------------------
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        peer = _peer_user(writer)
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:
                    await _answer(writer, {"ok": False, "error": "request line too long"})
                    return
                if not line:
                    return
                answer = await self.handle_line(line, peer)
                await _answer(writer, answer)
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            if task is not None:
                self._clients.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def handle_line(self, line: bytes, peer: str) -> dict[str, object]:
        """Answer one request line from `peer`."""
        self.requests += 1
        try:
            request = orjson.loads(line)
            if not isinstance(request, dict):
                return {"ok": False, "error": "a request is a JSON object"}
            return await self._dispatch(request, peer)
        except orjson.JSONDecodeError:
            return {"ok": False, "error": "not JSON"}
        except ControlError as exc:
            return {"ok": False, "error": str(exc)}
        except (TypeError, ValueError) as exc:
            return {"ok": False, "error": f"bad request: {exc}"}

    async def _dispatch(self, request: dict[str, Any], peer: str) -> dict[str, object]:
        op = request.get("op")
        if op == "status":
            return {"ok": True, "status": self.engine.status()}
        if op == "fire":
            return await self._fire(request, peer)
        if op == "reset":
            reason = _text(request, "reason")
            actor = _actor(peer, request)
            released = await self.engine.reset(actor=actor, reason=reason, origin="control")
            return {"ok": True, "was_latched": released, "actor": actor}
        if op == "wait":
            kill = self.engine.kill_for(_text(request, "trigger_id"))
            if kill is None:
                raise ControlError("no such trigger")
            return await _wait(kill, request)
        raise ControlError(f"unknown op {op!r}; have fire, status, reset, wait")

    async def _fire(self, request: dict[str, Any], peer: str) -> dict[str, object]:
        reason = _text(request, "reason")
        venues = _strings(request, "venues")
        unknown = sorted({v.lower() for v in venues} - set(VENUES))
        if unknown:
            raise ControlError(f"unknown venue(s) {unknown}; known: {list(VENUES)}")
        scope = Scope.of(
            venues,
            _strings(request, "accounts"),
            _strings(request, "symbols"),
            request.get("prefix") or None,
        )
        if not any(scope.covers_account(ref) for ref in self.engine.accounts):
            configured = sorted(str(ref) for ref in self.engine.accounts)
            raise ControlError(f"the scope covers no configured account; configured: {configured}")
        now_ms = int(time.time() * 1000)
        trigger = Trigger(
            id=str(request.get("id") or f"ctl-{uuid.uuid4().hex[:16]}"),
            source="control",
            mode=Mode.CANCEL if request.get("cancel_only") else Mode.KILL,
            reason=reason,
            scope=scope,
            created_ms=now_ms,
            received_ms=now_ms,
            actor=_actor(peer, request),
        )
        result = await self.engine.submit(trigger)
        answer: dict[str, object] = {
            "ok": True,
            "trigger_id": trigger.id,
            "result": result.value,
            "mode": trigger.mode.value,
            "scope": scope.to_json(),
            "actor": trigger.actor,
        }
        if request.get("wait"):
            kill = self.engine.kill_for(trigger.id)
            if kill is not None:
                answer.update(await _wait(kill, {**request, "until": request["wait"]}))
        return answer


async def _wait(kill: Kill, request: dict[str, Any]) -> dict[str, object]:
    until = str(request.get("until") or "done")
    if until not in ("done", "confirmed"):
        raise ControlError("until is done or confirmed")
    timeout_s = float(request.get("timeout_s") or DEFAULT_WAIT_S)
    event = kill.done if until == "done" else kill.finished
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return {"ok": True, "timed_out": True, "kill": kill.summary()}
    return {
        "ok": kill.state in (KillState.FLAT, KillState.CONFIRMED),
        "timed_out": False,
        "kill": kill.summary(),
    }


async def _answer(writer: asyncio.StreamWriter, answer: dict[str, object]) -> None:
    writer.write(orjson.dumps(answer, default=str) + b"\n")
    await writer.drain()


def _text(request: dict[str, Any], key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ControlError(f"{key} is required")
    return value.strip()


def _strings(request: dict[str, Any], key: str) -> list[str]:
    value = request.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ControlError(f"{key} is a list of strings")
    return [v for v in value if v]


def _actor(peer: str, request: dict[str, Any]) -> str:
    claimed = request.get("actor")
    if isinstance(claimed, str) and claimed and claimed != peer:
        return f"{peer} (as {claimed})"
    return peer


def _peer_user(writer: asyncio.StreamWriter) -> str:
    """The connecting process's user, from the kernel (SO_PEERCRED)."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return "unknown"
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return "unknown"
    pid, uid, _gid = struct.unpack("3i", creds)
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid{uid}"
    log.info("control client connected user=%s uid=%d pid=%d", name, uid, pid)
    return name
