"""The operator's control socket: a local unix socket (mode 0660) speaking JSON lines.

The socket is owned by the daemon's user and group: the service user and members of its
group (`killswitch`, systemd/killswitch.sysusers) may connect; nobody else.

One request object per line, one answer object per line::

    {"op": "fire", "venues": [], "accounts": [], "symbols": [], "prefix": null,
     "reason": "...", "cancel_only": false, "id": null, "wait": null, "timeout_s": 60}
    {"op": "status"}
    {"op": "reset", "reason": "...", "trigger_ids": null}
    {"op": "wait", "trigger_id": "...", "until": "done" | "confirmed", "timeout_s": 60}

A fire with `"drill": true` is a drill's kill (`killswitch drill --live`): its trigger's source
is `drill`, so the audit log and the events record it as one; a reset with `"drill": true` is
recorded with origin `drill`. A reset naming `trigger_ids` releases exactly those latches (a
drill releases its own, never an operator's).

Each request is validated as strictly as a Kafka alert (one pydantic model per op, unknown
fields refused, no type coercion) before anything changes.

Answers are `{"ok": true, ...}` or `{"ok": false, "error": "..."}`; a request refused for its
content (nothing changed) also says `"refused": true`. A fire or wait answer carries `outcome`,
the kill's state when the answer was written (`running`, `flat`, `confirmed`, `failed`,
`aborted`; `unknown` when the daemon no longer holds the kill), and `timed_out` when a wait
ended first. `ok` on a fire that waited (and on a wait) is true only when the kill is flat or
confirmed and the wait did not time out.

With the latch shared between replicas (`kafka.share_latch`), a kill fire's answer also says
whether its latch is on the latch topic: `"replicated": true` once the broker acknowledged its
record (acks=all), else, after the replicator's bound, `"replicated": false` and
`"not_replicated"` saying why. Until then only this host holds the kill: an "accepted" must not
let an operator believe another replica would carry it on if this one died (review 88). The
kill itself starts at once; only the answer waits. Without a shared latch, for `cancel_only`
(which latches nothing), and for a fire whose trigger holds no latch here (a duplicate of an id
a reset released, or one released before the answer was written: no latch is held anywhere)
the answer carries neither field (review 89).

The actor of a fire or reset is the peer's user as the kernel reports it (SO_PEERCRED), never
what the client claims; a claimed name is recorded next to it. A fire whose scope names a venue
or account that selects no configured account is refused: an operator's typo must not become a
kill of nothing (or of less than was asked) that reports success.
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
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from killswitch.handlers.alerts import AlertScope
from killswitch.kill.engine import Engine
from killswitch.kill.record import Kill, KillState, SubmitResult
from killswitch.model import Mode, Scope, Trigger, canonical_symbol, json_object, unmatched

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024
DEFAULT_WAIT_S = 120.0
MAX_WAIT_S = 24 * 3600.0
SOCKET_MODE = 0o660
PROBE_TIMEOUT_S = 2.0  # whether a daemon listens on an existing socket file

_REQUEST = ConfigDict(frozen=True, extra="forbid", strict=True, str_strip_whitespace=True)


class ControlError(Exception):
    """A request the control socket refuses; the message goes back to the client."""


class LatchShare(Protocol):
    """The latch shared with other replicas (`kafka.replicas.LatchReplicator`), as a fire and
    a status ask it."""

    @property
    def publish_timeout_s(self) -> float: ...

    async def latch_published(self, trigger_id: str, timeout_s: float) -> str | None: ...

    def latch_status(self) -> dict[str, object]: ...


class FireRequest(AlertScope):
    """`fire`: cancel in scope now, and latch it unless `cancel_only`."""

    model_config = _REQUEST

    op: Literal["fire"]
    client_order_id_prefix: str | None = Field(
        default=None,
        min_length=1,
        max_length=36,
        validation_alias=AliasChoices("prefix", "client_order_id_prefix"),
    )
    reason: str = Field(min_length=1, max_length=2000)
    cancel_only: bool = False
    id: str | None = Field(default=None, min_length=1, max_length=200)
    actor: str | None = Field(default=None, max_length=200)
    wait: Literal["done", "confirmed"] | None = None
    timeout_s: float = Field(default=DEFAULT_WAIT_S, gt=0, le=MAX_WAIT_S)
    drill: bool = False


class StatusRequest(BaseModel):
    """`status`: latch, streams, open orders, last kill."""

    model_config = _REQUEST

    op: Literal["status"]


class ResetRequest(BaseModel):
    """`reset`: release the latch (audited with who and why)."""

    model_config = _REQUEST

    op: Literal["reset"]
    reason: str = Field(min_length=1, max_length=2000)
    actor: str | None = Field(default=None, max_length=200)
    trigger_ids: list[str] | None = Field(default=None, min_length=1, max_length=1000)
    drill: bool = False


class WaitRequest(BaseModel):
    """`wait`: until a trigger's kill is done (flat or failed) or confirmed."""

    model_config = _REQUEST

    op: Literal["wait"]
    trigger_id: str = Field(min_length=1, max_length=200)
    until: Literal["done", "confirmed"] = "done"
    timeout_s: float = Field(default=DEFAULT_WAIT_S, gt=0, le=MAX_WAIT_S)


Request = FireRequest | StatusRequest | ResetRequest | WaitRequest
REQUESTS: dict[str, type[Request]] = {
    "fire": FireRequest,
    "status": StatusRequest,
    "reset": ResetRequest,
    "wait": WaitRequest,
}


def parse_request(line: bytes) -> Request:
    """Decode and validate one request line; raise `ControlError` saying what is wrong."""
    data = json_object(line, ControlError)
    op = data.get("op")
    model = REQUESTS.get(op) if isinstance(op, str) else None
    if model is None:
        raise ControlError(f"unknown op {op!r}; have {', '.join(REQUESTS)}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ControlError(f"bad {op} request: {describe_request_errors(exc)}") from None


def describe_request_errors(exc: ValidationError) -> str:
    """Summarise a validation error by field, never echoing the input."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "request"
        if err["type"] == "missing":
            parts.append(f"{where} is required")
        elif err["type"] == "string_too_short" and err.get("ctx", {}).get("min_length") == 1:
            parts.append(f"{where} must not be empty")
        elif err["type"] == "extra_forbidden":
            parts.append(f"{where}: unknown field")
        else:
            parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


@dataclass(eq=False)
class ControlServer:
    """Serve the control socket at `path` for `engine` (a daemon `Service`).

    `latch_share` is the replicator when the daemon shares its latch (`kafka.share_latch`),
    given by whoever builds the daemon (`app.build_parts`); None: fires and status say nothing
    of replication.
    """

    engine: Engine
    path: Path
    _: KW_ONLY
    readiness: Callable[[], dict[str, dict[str, object]]] | None = None
    latch_share: LatchShare | None = None
    name: str = field(default="control", init=False)
    requests: int = field(default=0, init=False)
    _server: asyncio.Server | None = field(default=None, init=False, repr=False)
    _stopped: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)
    _clients: set[asyncio.Task[Any]] = field(default_factory=set, init=False, repr=False)
    # (device, inode) of the socket we bound
    _bound: tuple[int, int] | None = field(default=None, init=False, repr=False)

    # -- service ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind the socket with mode 0660 (a stale socket file from a crash is replaced; one
        another daemon listens on is not: the start fails).

        The socket's group is the daemon's group (under systemd, `Group=killswitch`): its
        members may connect. The umask is set so the socket is never wider, not even between
        bind and chmod.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if not stat.S_ISSOCK(self.path.lstat().st_mode):
                raise ControlError(f"{self.path} exists and is not a socket")
            # Review 79: a second daemon unlinked a running one's socket and bound its own,
            # leaving the first unreachable by fire, status and reset.
            await _refuse_if_listening(self.path)
            self.path.unlink()
        old_umask = os.umask(0o777 & ~SOCKET_MODE)
        try:
            self._server = await asyncio.start_unix_server(
                self._client, path=str(self.path), limit=MAX_LINE
            )
        finally:
            os.umask(old_umask)
        os.chmod(self.path, SOCKET_MODE)
        self._bound = _identity(self.path)
        log.info("control socket listening path=%s mode=%o", self.path, SOCKET_MODE)

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
        # Only the socket this server bound: never one another process bound there since.
        with contextlib.suppress(FileNotFoundError):
            if _identity(self.path) == self._bound:
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
                    await _answer(writer, _refusal("request line too long"))
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
            request = parse_request(line)
            return await self._dispatch(request, peer)
        except ControlError as exc:
            return _refusal(str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the operator gets an answer, the log the traceback
            log.exception("control request failed")
            return {"ok": False, "error": f"failed: {type(exc).__name__}: {exc}"[:500]}

    async def _dispatch(self, request: Request, peer: str) -> dict[str, object]:
        if isinstance(request, StatusRequest):
            status = self.engine.status()
            if self.readiness is not None:
                status["readiness"] = self.readiness()
            share = self.latch_share
            if share is not None:
                status["latch_topic"] = share.latch_status()
            return {"ok": True, "status": status}
        if isinstance(request, FireRequest):
            return await self._fire(request, peer)
        if isinstance(request, ResetRequest):
            actor = _actor(peer, request.actor)
            held = self.engine.latches()
            unknown = [t for t in request.trigger_ids or () if t not in held]
            if request.trigger_ids and len(unknown) == len(request.trigger_ids):
                # A mistyped id releases nothing: say so, and what is held, never "done".
                raise ControlError(
                    f"no latch is held by {', '.join(unknown)}; "
                    f"held: {', '.join(held) if held else 'none'}"
                )
            released = await self.engine.reset(
                actor=actor,
                reason=request.reason,
                origin="drill" if request.drill else "control",
                only=request.trigger_ids,
            )
            answer: dict[str, object] = {"ok": True, "was_latched": released, "actor": actor}
            if unknown:
                answer["not_latched"] = unknown
            return answer
        kill = self.engine.kill_for(request.trigger_id)
        if kill is None:
            raise ControlError("no such trigger")
        return await _wait(kill, request.until, request.timeout_s, self._follow(request.trigger_id))

    async def _fire(self, request: FireRequest, peer: str) -> dict[str, object]:
        scope = request.to_scope()
        configured = sorted(self.engine.accounts, key=str)
        missing = unmatched(scope, configured)
        if missing:
            if any(scope.covers_account(ref) for ref in configured):
                what = "the scope names what no configured account matches"
            else:
                what = "the scope covers no configured account"
            detail = "; ".join(f"{m.field}: {m.message}" for m in missing)
            raise ControlError(
                f"{what} ({detail}); nothing was fired; "
                f"configured: {', '.join(str(r) for r in configured)}"
            )
        now_ms = int(time.time() * 1000)
        trigger = Trigger(
            id=request.id or f"ctl-{uuid.uuid4().hex[:16]}",
            source="drill" if request.drill else "control",
            mode=Mode.CANCEL if request.cancel_only else Mode.KILL,
            reason=request.reason,
            scope=scope,
            created_ms=now_ms,
            received_ms=now_ms,
            actor=_actor(peer, request.actor),
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
        kill = self.engine.kill_for(trigger.id)
        if result is SubmitResult.DUPLICATE:
            # An id already used: a retry of the same fire may report that kill's outcome; any
            # other scope or mode was never acted on, and must not borrow its "flat".
            earlier = self.engine.trigger(trigger.id)
            if earlier is None or (earlier.scope, earlier.mode) != (trigger.scope, trigger.mode):
                raise ControlError(
                    f"id {trigger.id} was already used for another fire "
                    f"({'a different scope or mode' if earlier else 'no longer known'}); "
                    "nothing was fired: use a new id"
                )
        # Only a latch held here has a record to replicate: a duplicate of an id a reset
        # released holds none anywhere (review 89: it answered "only this replica holds it").
        held = trigger.mode is Mode.KILL and trigger.id in self.engine.latches()
        share = self.latch_share if held else None
        # The kill runs already; its latch record is published alongside the wait for it.
        replicating = (
            asyncio.ensure_future(share.latch_published(trigger.id, share.publish_timeout_s))
            if share is not None
            else None
        )
        try:
            if kill is None:
                # Nothing to wait on (the daemon no longer holds the kill this id started).
                answer.update(ok=request.wait is None, outcome="unknown", timed_out=False)
            elif request.wait is not None:
                answer.update(
                    await _wait(kill, request.wait, request.timeout_s, self._follow(trigger.id))
                )
                warning = self._nothing_of(scope, kill)
                if warning:
                    answer["warning"] = warning
            if share is not None and replicating is not None:
                not_replicated = await replicating
                # A kill's wait that outlasted the bound: published since, maybe (a look only).
                if (
                    not_replicated is not None
                    and request.wait is not None
                    and await share.latch_published(trigger.id, 0.0) is None
                ):
                    not_replicated = None
                # A latch released while the answer waited has nothing left to replicate.
                if trigger.id in self.engine.latches():
                    _say_replicated(answer, trigger.id, not_replicated)
                if kill is not None and request.wait is not None and answer.get("timed_out"):
                    # The kill's wait ended before the wait for its record: say its state as
                    # the answer is written (review 92: "running" and exit 5 for a kill that
                    # had failed meanwhile). A look only: it waits for nothing more.
                    answer.update(await _wait(kill, request.wait, 0.0, self._follow(trigger.id)))
                    warning = self._nothing_of(scope, kill)  # (review 93: not the first look's)
                    if warning:
                        answer["warning"] = warning
        finally:
            if replicating is not None and not replicating.done():
                replicating.cancel()
        if kill is not None and request.wait is None:
            answer.update(outcome=kill.state.value, timed_out=False)
        return answer

    def _follow(self, trigger_id: str) -> Callable[[], Kill | None]:
        """The kill acting on `trigger_id` now (a reset of a trigger it had joined ends a
        kill and relaunches the rest at their own scopes)."""
        return lambda: self.engine.kill_for(trigger_id)

    def _nothing_of(self, scope: Scope, kill: Kill) -> str:
        """A word for the operator when a kill by symbol found nothing of symbols no account in
        scope is configured with: flat is true, but a mistyped symbol is flat too (review 39)."""
        if not scope.symbols or not kill.done.is_set() or not kill.accounts:
            return ""
        if any(r.orders_before or r.lists_before for r in kill.accounts.values()):
            return ""
        known = {
            canonical_symbol(symbol)
            for ref, account in self.engine.accounts.items()
            if scope.covers_account(ref)
            for symbol in account.symbols
        }
        unknown = sorted(scope.symbols - known)
        if not unknown:
            return ""
        return (
            f"nothing was open on {', '.join(unknown)} on any account in scope, and no account "
            "in scope is configured with it: is the symbol right?"
        )


def _say_replicated(answer: dict[str, object], trigger_id: str, not_replicated: str | None) -> None:
    """Say in a fire's answer whether its latch is on the latch topic, and log it when not."""
    answer["replicated"] = not_replicated is None
    if not_replicated is None:
        return
    answer["not_replicated"] = not_replicated
    log.error(
        "kill accepted here but its latch is NOT on the latch topic: only this replica holds it "
        "trigger_id=%s why=%s",
        trigger_id,
        not_replicated,
    )


async def _wait(
    kill: Kill, until: str, timeout_s: float, now: Callable[[], Kill | None]
) -> dict[str, object]:
    """Wait for the trigger's kill to be done (or confirmed); `ok` only when it is flat or
    confirmed. A kill ended because a reset released another trigger it had joined is
    followed to the kill `now` says acts on the trigger (review 55: it answered "aborted")."""
    timed_out = False
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                await (kill.done if until == "done" else kill.finished).wait()
                successor = now() if kill.narrowed else None
                if successor is None or successor is kill:
                    break
                kill = successor
    except TimeoutError:
        timed_out = True
    return {
        "ok": not timed_out and kill.state in (KillState.FLAT, KillState.CONFIRMED),
        "outcome": kill.state.value,
        "timed_out": timed_out,
        "kill": kill.summary(),
    }


async def _refuse_if_listening(path: Path) -> None:
    """Raise `ControlError` unless the socket file at `path` is stale (nothing accepts a
    connection on it: connection refused, as after a crash) or gone."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            _, writer = await asyncio.open_unix_connection(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return
    except TimeoutError:
        pass  # it is there, too busy to accept at once
    except OSError as exc:
        raise ControlError(
            f"{path}: cannot tell whether another daemon listens there ({exc.strerror or exc}); "
            "not replacing it"
        ) from None
    else:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    raise ControlError(
        f"{path}: another daemon is listening there; not taking its control socket "
        "(stop that daemon, or give this one a control.socket_path of its own)"
    )


def _identity(path: Path) -> tuple[int, int]:
    st = path.lstat()
    return st.st_dev, st.st_ino


def _refusal(error: str) -> dict[str, object]:
    return {"ok": False, "refused": True, "error": error}


async def _answer(writer: asyncio.StreamWriter, answer: dict[str, object]) -> None:
    writer.write(orjson.dumps(answer, default=str) + b"\n")
    await writer.drain()


def _actor(peer: str, claimed: str | None) -> str:
    if claimed and claimed != peer:
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
