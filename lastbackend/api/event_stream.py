"""``GET /api/events``: the key tree's changes as server-sent events, for dashboards.

Each stream is one etcd watch (``prev_kv``) under ``/lastbackend/<prefix>``, turned into typed
events. The store's watch resumes a broken gRPC stream by itself, so an etcd restart costs the
client a pause, not a reconnect.

Event ids and resuming. Several keys written by one transaction share a revision, and a client
may be cut off half-way through them, so an id names a position *inside* a revision: the last
event of revision ``R`` carries ``id: R`` (everything up to ``R`` delivered) and the ones before
it ``id: R.n`` (the first ``n`` events of ``R`` delivered). ``Last-Event-ID: R`` resumes with
``R + 1``; ``Last-Event-ID: R.n`` watches from ``R`` again and skips the ``n`` events already
sent. Events within a revision come in the transaction's order, which history never changes,
so a resumed stream loses and repeats nothing. An id is a position in one prefix's stream:
resume with the same ``prefix`` (EventSource reconnects to the same URL anyway).

Keys under ``system/`` (leader election) are left out unless the prefix asks for them: they
tell a dashboard nothing. Values are shown as the API shows them: secret fields (named in any
case) as ``***``, any other Fernet token (ciphertext at rest) as ``***`` wherever it appears,
and environment maps (:data:`ENV_FIELDS`) in clear to an admin token, ``***`` for every value to a
read-only one (:mod:`lastbackend.api.envview`).

A stream is not a request in flight for the shutdown drain (it never ends by itself); shutdown
(``State.closing``) and a client that leaves end it within :data:`POLL` seconds, and with it the
etcd watch. Each holds one of ``api.max_streams`` slots (:mod:`lastbackend.api.limits`) until
then: one stream more is a 429.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs
import structlog
from aiohttp import web

from lastbackend.api.envview import EnvView, env_view
from lastbackend.api.errors import ApiError, bad_query
from lastbackend.api.http import doc
from lastbackend.api.state import STATE, State
from lastbackend.api.streams import gone, not_drained
from lastbackend.logsetup import log
from lastbackend.model.common import MASK, mask_secrets
from lastbackend.secrets import TOKEN_PREFIX
from lastbackend.sources import git
from lastbackend.store import keys
from lastbackend.store.etcd import Compacted, Etcd, StoreError, WatchEvent

routes = web.RouteTableDef()

HEARTBEAT = 15.0
"""Seconds between ``: heartbeat`` comments (``?heartbeat=`` overrides it per stream)."""
HEARTBEAT_MIN, HEARTBEAT_MAX = 1, 300
POLL = 0.5
"""Seconds between checks that the client is still there and the app is not shutting down."""
SYSTEM = "system"
PREFIX_MAX = 1024
_PREFIX = re.compile(r"(?:[A-Za-z0-9._~:+@-]+/)*[A-Za-z0-9._~:+@-]*")
"""Segments of the characters keys are made of (ids, names, repo ids), ``/``-separated."""
_EVENT_ID = re.compile(r"([0-9]{1,18})(?:\.([0-9]{1,9}))?")
_FERNET = re.compile(re.escape(TOKEN_PREFIX) + r"[A-Za-z0-9_-]{80,}={0,2}")
CONTENT_TYPE = "text/event-stream"
HEARTBEAT_FRAME = b": heartbeat\n\n"


@attrs.frozen
class Position:
    """Where a stream starts: after the first ``seen`` events of ``revision`` (all of them when
    ``seen`` is None)."""

    revision: int
    seen: int | None = None

    @property
    def start(self) -> int:
        """The revision the watch starts from."""
        return self.revision + 1 if self.seen is None else self.revision

    def __str__(self) -> str:
        return str(self.revision) if self.seen is None else f"{self.revision}.{self.seen}"


# request -----------------------------------------------------------------------------------------


def parse_prefix(raw: str) -> str:
    """A path under ``/lastbackend/``: ``ValueError`` for one that is not a plausible key prefix."""
    if len(raw) > PREFIX_MAX:
        raise ValueError(f"must be at most {PREFIX_MAX} characters, got {len(raw)}")
    if raw.startswith("/"):
        raise ValueError(f"is relative to {keys.ROOT} (e.g. projects/<id>/), got {raw!r}")
    if not _PREFIX.fullmatch(raw):
        raise ValueError(
            f"{raw!r} is not a key prefix: '/'-separated segments of A-Z a-z 0-9 . _ ~ : + @ -"
        )
    if any(segment in (".", "..") for segment in raw.split("/")):
        raise ValueError(f"{raw!r} steps out of its place: '.' and '..' are not key segments")
    return raw


def parse_position(raw: str) -> Position:
    """``R`` or ``R.n``, as sent in ``id:`` lines."""
    match = _EVENT_ID.fullmatch(raw.strip())
    if match is None:
        raise ValueError(f"must be an event id (a revision R, or R.n), got {raw!r}")
    seen = match.group(2)
    return Position(int(match.group(1)), None if seen is None else int(seen))


def _prefix(request: web.Request) -> str:
    try:
        return parse_prefix(request.query.get("prefix", ""))
    except ValueError as exc:
        raise bad_query("prefix", str(exc)) from None


def _heartbeat(request: web.Request) -> float:
    raw = request.query.get("heartbeat")
    if raw is None:
        return HEARTBEAT
    valid = raw.isascii() and raw.isdigit() and len(raw) <= 3
    if not (valid and HEARTBEAT_MIN <= int(raw) <= HEARTBEAT_MAX):
        raise bad_query(
            "heartbeat", f"must be whole seconds from {HEARTBEAT_MIN} to {HEARTBEAT_MAX}"
        )
    return float(raw)


def _resume(request: web.Request) -> Position | None:
    """The header wins over ``?since=``: EventSource reconnects to the URL it was opened with
    (``since`` and all) and sends the id it got last in the header."""
    header = request.headers.get("Last-Event-ID", "").strip()
    if header:
        try:
            return parse_position(header)
        except ValueError as exc:
            raise ApiError(
                400, f"header Last-Event-ID: {exc}", title="CF-InvalidRequest", code=10004
            ) from None
    since = request.query.get("since")
    if since is None:
        return None
    try:
        return parse_position(since)
    except ValueError as exc:
        raise bad_query("since", str(exc)) from None


# events ------------------------------------------------------------------------------------------


def _hide_tokens(value: Any) -> Any:
    """Encrypted values as ``***``, and the userinfo of any URL (a git package stored before
    credentials were split out of it)."""
    if isinstance(value, str):
        return MASK if _FERNET.fullmatch(value) else git.mask_url(value)
    if isinstance(value, dict):
        return {k: _hide_tokens(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_hide_tokens(v) for v in value]
    return value


def env_fields(key: str) -> tuple[str, ...] | None:
    """Where the environment map is in the value of ``key``: a JSON path, or ``None``."""
    if keys.droplet_of(key) is not None:
        return ("environment_variables",)
    if keys.revision_of(key) is not None or keys.pod_spec_of(key) is not None:
        return ("spec", "env")
    ref = keys.service_of(key)
    if ref is not None and key == keys.service_part(ref.project, ref.service, "config"):
        return ("env",)
    return None


EnvShow = Callable[[Mapping[str, str]], Mapping[str, str]]
"""A stored environment map -> as this stream's caller sees it."""


def _masked_all(env: Mapping[str, str]) -> Mapping[str, str]:
    return {name: MASK for name in env}


def _take_env(decoded: Any, path: tuple[str, ...]) -> tuple[Any, Any]:
    """``decoded`` without the map at ``path``, and that map (``None`` if it is not there)."""
    if not path or not isinstance(decoded, dict) or path[0] not in decoded:
        return decoded, None
    if len(path) == 1:
        rest = dict(decoded)
        return rest, rest.pop(path[0])
    inner, found = _take_env(decoded[path[0]], path[1:])
    return {**decoded, path[0]: inner}, found


def _put_env(decoded: dict[str, Any], path: tuple[str, ...], env: Any) -> dict[str, Any]:
    if len(path) == 1:
        return {**decoded, path[0]: env}
    return {**decoded, path[0]: _put_env(decoded[path[0]], path[1:], env)}


def shown(value: bytes, key: str = "", env: EnvShow = _masked_all) -> Any:
    """A stored value as a client may see it: decoded JSON with secrets masked, or the bare
    text of a value that is not JSON (a service's ``image``, the helper indexes). The
    environment map of a config, droplet, revision or pod goes through ``env`` instead (its
    values are not judged by their names: they are all hidden, or all shown to an admin)."""
    text = value.decode(errors="replace")
    try:
        decoded = json.loads(text)
    except ValueError:
        decoded = text
    path = env_fields(key)
    found = None
    if path is not None:
        decoded, found = _take_env(decoded, path)
    masked = _hide_tokens(mask_secrets(decoded))
    if path is None or found is None:
        return masked
    if isinstance(found, dict) and all(isinstance(v, str) for v in found.values()):
        return _put_env(masked, path, dict(env(found)))
    return _put_env(masked, path, _hide_tokens(mask_secrets(found)))  # not a map: as any value


def stream_env(view: EnvView) -> EnvShow:
    """An event stream cannot fail half-way: a value another key encrypted shows as ``***``."""
    return lambda env: view.show(env, strict=False)


def frame(event: str, data: Any, event_id: str | None = None) -> bytes:
    """One SSE message; compact JSON never holds a newline, so ``data`` is one line."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"{head}event: {event}\ndata: {body}\n\n".encode()


def kind_of(event: WatchEvent) -> str:
    if event.kind == "delete":
        return "deleted"
    first = event.prev is None or event.kv.create_revision == event.kv.mod_revision
    return "created" if first else "updated"


@attrs.define
class Encoder:
    """Watch batches -> SSE bytes, numbering the events of each revision (see the module doc)."""

    system: bool
    """Whether keys under ``system/`` are sent."""
    resume: Position | None = None
    env: EnvShow = _masked_all
    """How environment maps are shown to this stream's caller."""
    _revision: int = 0
    _count: int = 0
    _skip: int = 0

    def __attrs_post_init__(self) -> None:
        if self.resume is not None and self.resume.seen is not None:
            self._revision, self._skip = self.resume.revision, self.resume.seen

    def wanted(self, key: str) -> bool:
        return self.system or not key.startswith(keys.ROOT + SYSTEM + "/")

    def encode(self, events: list[WatchEvent]) -> bytes:
        sent = [e for e in events if self.wanted(e.kv.key)]
        return b"".join(self._frames(sent))

    def _frames(self, events: list[WatchEvent]) -> Iterator[bytes]:
        for i, event in enumerate(events):
            revision = event.kv.mod_revision
            if revision != self._revision:
                self._revision, self._count = revision, 0
            self._count += 1
            if self._skip:
                self._skip -= 1  # sent before the client reconnected
                continue
            last = i + 1 == len(events) or events[i + 1].kv.mod_revision != revision
            kind = kind_of(event)
            source = event.prev if kind == "deleted" else event.kv
            data = {
                "kind": kind,
                "key": event.kv.key,
                "object": None if source is None else shown(source.value, source.key, self.env),
                "revision": revision,
            }
            yield frame(kind, data, str(revision) if last else f"{revision}.{self._count}")


# the route ---------------------------------------------------------------------------------------


@routes.get("/api/events")
@doc(
    "Server-sent events (text/event-stream) of the key tree's changes under /lastbackend/"
    "<prefix>: created, updated, deleted {kind, key, object (secrets ***; env values in clear "
    "to admin tokens, *** to read-only ones), revision}; "
    "'hello' {revision} first on a fresh stream; 'relist' {revision, reason} when the resume "
    "point is compacted; ': heartbeat' comments. Resume with the Last-Event-ID header (or "
    "?since=) set to the last id received.",
    response="Event",
    query=("prefix", "since", "heartbeat"),
)
async def events(request: web.Request) -> web.StreamResponse:
    """A dashboard lists first, then streams from the list's revision: ``GET /api/projects``
    answers ``X-Etcd-Revision: R`` (``GET /api/data`` has ``revision``), then
    ``GET /api/events?prefix=projects/&since=R`` sends every change after the list, and an
    EventSource that reconnects sends ``Last-Event-ID`` itself. Without either the stream starts
    now: ``hello`` says at which revision, so a client can list at it or after it.

    On ``relist`` the history the client needs is gone: it closes the stream (EventSource would
    reconnect to the same place), lists again and opens a new one with ``since`` = the list's
    revision. The stream also ends on shutdown; reconnecting with the last id loses nothing.
    """
    prefix, beat, resume = _prefix(request), _heartbeat(request), _resume(request)
    state = request.app[STATE]
    with state.streams.hold():  # 429 beyond api.max_streams; given back when the stream ends
        current = await state.etcd.status()  # 503 before the stream starts if etcd is away
        rid = structlog.contextvars.get_contextvars().get("request_id", "")
        response = web.StreamResponse(
            headers={
                "Content-Type": CONTENT_TYPE,
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # a proxy must pass each event on as it comes
                "X-Request-ID": rid,
            }
        )
        await response.prepare(request)
        # the stream never ends by itself: shutdown ends it
        with not_drained(request), contextlib.suppress(ConnectionError):
            await _stream(request, response, state, prefix, beat, resume, current)
            await response.write_eof()
    return response


async def _stream(
    request: web.Request,
    response: web.StreamResponse,
    state: State,
    prefix: str,
    beat: float,
    resume: Position | None,
    current: int,
) -> None:
    if resume is None:
        resume = Position(current)
        await response.write(frame("hello", {"revision": current}, str(resume)))
    elif resume.revision > current:
        await response.write(_relist(current, f"revision {resume.revision} is ahead of the store"))
        return
    encoder = Encoder(
        system=prefix.startswith(SYSTEM), resume=resume, env=stream_env(env_view(request))
    )
    watcher = asyncio.create_task(
        _pipe(state.etcd, keys.ROOT + prefix, resume, encoder, response, request.path)
    )
    loop = asyncio.get_running_loop()
    next_beat = loop.time() + beat
    try:
        while not watcher.done():
            if gone(request) or state.closing.is_set():
                return
            if loop.time() >= next_beat:
                await response.write(HEARTBEAT_FRAME)
                next_beat = loop.time() + beat
            await asyncio.wait({watcher}, timeout=max(0.0, min(POLL, next_beat - loop.time())))
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


async def _pipe(
    etcd: Etcd,
    key: str,
    resume: Position,
    encoder: Encoder,
    response: web.StreamResponse,
    path: str,
) -> None:
    """Watch, encode and write in one task: on a busy loop every hand-over between tasks costs
    a turn of it, and an event's latency is what this path adds to the write's.

    Heartbeats are written from the handler's task; each write is one whole message, put on the
    transport before any ``await``, so the two never interleave inside a message.
    """
    try:
        async for batch in etcd.watch_batches(key, start_revision=resume.start, prev_kv=True):
            data = encoder.encode(batch.events)
            if data:
                await response.write(data)
    except Compacted as exc:
        with contextlib.suppress(StoreError, ConnectionError):
            await response.write(_relist(await etcd.status(), _compacted(exc)))
    except StoreError as exc:
        log.warning("event stream ended", path=path, error=repr(exc))
    except ConnectionError:
        pass  # the client left; the handler notices too


def _compacted(error: Compacted) -> str:
    reason = f"revision {error.revision} is compacted"
    if error.compact_revision:
        reason += f" (the oldest kept is {error.compact_revision})"
    return reason + "; list again and resume from its revision"


def _relist(current: int, reason: str) -> bytes:
    return frame("relist", {"revision": current, "reason": reason})
