"""Container logs: read on the node that runs each container, merged by the API.

``GET /api/projects/{p}/services/{s}/logs`` reads the service's container objects (each names its
``node``), finds each node's ``address`` in ``nodes/<name>`` and proxies
``GET <address>/node/containers/<id>/logs`` from all of them at once, prefixing every line with
its container's short id. Logs stay where the engine keeps them, an API process needs no Docker
access, and one host or many work alike (the daemon simply proxies to itself).

Whoever can write ``nodes/<name>`` chooses where these requests go, so each carries the node
token (``auth.node_token``) and nothing else: never the caller's token nor any user token, which
the node would refuse anyway. An address that is not exactly ``http(s)://host[:port]``
(``config.node_address_problem``) gets no request, nor does any node while this API has no node
token; redirects are not followed. Each such container gets a line saying why instead.

``/node/containers/{id}/logs`` is routed in every process but answers only where a node agent
runs (503 elsewhere), through the ``logs`` source ``make_app`` was given (``api`` imports nothing
from ``node``); the agent refuses containers not labelled as its own.

Only a stream without ``follow`` ends by itself. aiohttp does not cancel a handler whose client
left (``handler_cancellation`` is off, so a disconnect never interrupts an etcd write half-way),
so streams watch their connection: a client leaving the API cancels the upstream requests, each
node sees its request go and closes the engine's stream. Shutdown ends them as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Coroutine
from typing import Any
from urllib.parse import quote

import aiohttp
import attrs
import structlog
from aiohttp import web

from lastbackend import codec
from lastbackend.api.errors import ApiError, bad_query
from lastbackend.api.http import doc
from lastbackend.api.services import resolve
from lastbackend.api.state import CONNECT_TIMEOUT, STATE, State
from lastbackend.api.streams import follow_query, follow_slot, gone, not_drained
from lastbackend.config import node_address_problem
from lastbackend.logsetup import log
from lastbackend.model.platform import Container
from lastbackend.model.pods import Node
from lastbackend.store import keys

routes = web.RouteTableDef()
"""The platform family's route, served where the API runs."""
node_routes = web.RouteTableDef()
"""The node's route, in every process; it answers where a node agent runs."""

TAIL_DEFAULT = 100
TAIL_MAX = 10_000
OPEN_TIMEOUT = 10.0
"""Seconds for a node to answer with headers: connecting, then its inspect and label check."""
READ_TIMEOUT = 30.0
"""Seconds a node may go silent while it sends a log that is not followed."""
POLL = 0.5
"""Seconds between checks that a streaming client is still connected."""
LINE_MAX = 64 * 1024
"""Output without a newline is passed on in pieces about this long, so no buffer grows unbounded."""
QUEUE = 1024
"""Lines held between the nodes and a slow client; past it the reads from nodes wait."""
SHORT_ID = 12
TEXT = "text/plain; charset=utf-8"


# query parameters --------------------------------------------------------------------------------


def _tail(request: web.Request, default: int | None) -> int | None:
    raw = request.query.get("tail")
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 6 and int(raw) <= TAIL_MAX):
        raise bad_query("tail", f"must be an integer from 0 to {TAIL_MAX}, got {raw!r}")
    return int(raw)


# streaming ---------------------------------------------------------------------------------------


async def _stream(request: web.Request, work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` (writing a prepared response) until it ends, the client leaves or the app
    shuts down. The headers are sent by then, so a failure can only end the stream: logged."""
    closing = request.app[STATE].closing
    task = asyncio.ensure_future(work)
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=POLL)
            if not task.done() and (gone(request) or closing.is_set()):
                task.cancel()
    finally:
        if not task.done():  # this handler itself was cancelled
            task.cancel()
        await asyncio.wait({task})
    if not task.cancelled() and task.exception() is not None:
        error = task.exception()
        if not isinstance(error, ConnectionError):  # the client went while being written to
            log.error("log stream failed", path=request.path, error=repr(error))


def _response(content_type: str) -> web.StreamResponse:
    """The request id goes out with the headers: the middleware adds it only after the body."""
    rid = structlog.contextvars.get_contextvars().get("request_id", "")
    return web.StreamResponse(headers={"Content-Type": content_type, "X-Request-ID": rid})


async def _finish(response: web.StreamResponse) -> None:
    with contextlib.suppress(ConnectionError):
        await response.write_eof()


# the node's side ---------------------------------------------------------------------------------


@node_routes.get("/node/containers/{container}/logs")
@doc(
    "A container's raw output from the node agent that runs it (tail: all unless given; "
    "503 in a process without a node agent)",
    query=("follow", "tail"),
)
async def node_logs(request: web.Request) -> web.StreamResponse:
    follow, tail = follow_query(request), _tail(request, None)
    source = request.app[STATE].logs
    if source is None:
        raise ApiError(
            503, "no node agent runs in this process; ask the node that runs the container"
        )
    try:
        chunks = await source(request.match_info["container"], follow, tail)
    except LookupError as exc:
        raise ApiError(404, str(exc)) from None
    except ConnectionError as exc:
        raise ApiError(503, str(exc)) from None
    response = _response("application/octet-stream")
    try:
        await response.prepare(request)
        with not_drained(request, follow):
            await _stream(request, _copy(chunks, response))
        await _finish(response)
    finally:
        await _aclose(chunks)
    return response


async def _copy(chunks: AsyncIterator[bytes], response: web.StreamResponse) -> None:
    async for chunk in chunks:
        await response.write(chunk)


async def _aclose(chunks: AsyncIterator[bytes]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()


# the API's side ----------------------------------------------------------------------------------


@routes.get("/api/projects/{project}/services/{service}/logs")
@doc(
    "Stream the output of a service's containers as text, each line prefixed with its "
    "container's short id (tail: lines per container, default 100)",
    query=("tail", "follow", "container"),
)
@follow_slot
async def service_logs(request: web.Request) -> web.StreamResponse:
    follow, tail = follow_query(request), _tail(request, TAIL_DEFAULT)
    state = request.app[STATE]
    containers = await _containers(request, state)
    addresses = await _addresses(state) if containers else {}
    opened = await asyncio.gather(
        *(_open(state, c, addresses.get(c.node), follow, tail) for c in containers)
    )
    live = [u for u in opened if u.response is not None]
    try:
        if opened and not live:
            status = 404 if all(u.status == 404 for u in opened) else 503
            raise ApiError(status, *(f"container {u.short}: {u.error}" for u in opened))
        response = _response(TEXT)
        await response.prepare(request)
        failed = [u.line(f"-- logs unavailable: {u.error}".encode()) for u in opened if u.error]
        if failed:
            await response.write(b"".join(failed))
        with not_drained(request, follow):
            await _stream(request, _merge(live, response))
        await _finish(response)
        return response
    finally:
        for upstream in live:
            upstream.close()


async def _containers(request: web.Request, state: State) -> list[Container]:
    """The service's containers, or the one ``?container=`` names by id or a unique prefix."""
    pid, service = await resolve(request)
    found = await state.etcd.range(keys.containers(pid, service.id))
    containers = [codec.loads(kv.value, Container) for kv in found.kvs]
    wanted = request.query.get("container")
    if wanted is None:
        return containers
    chosen = [c for c in containers if wanted and c.id.startswith(wanted)]
    if not chosen:
        raise ApiError(404, f"container {wanted!r} not found in this service")
    if len(chosen) > 1:
        raise bad_query("container", f"{wanted!r} starts {len(chosen)} containers' ids")
    return chosen


async def _addresses(state: State) -> dict[str, str]:
    """Node name -> advertised URL, for every registered node (one read; nodes are few)."""
    found = await state.etcd.range(keys.NODES)
    return {keys.leaf(kv.key): codec.loads(kv.value, Node).address for kv in found.kvs}


@attrs.define
class _Upstream:
    """One container's log request to its node: a response to read, or why there is none."""

    container: Container
    response: aiohttp.ClientResponse | None = None
    status: int = 200
    """Failed: 404 when the node no longer has the container, else 503."""
    error: str = ""

    @property
    def short(self) -> str:
        return self.container.id[:SHORT_ID]

    def line(self, text: bytes) -> bytes:
        return b"[%s] %s\n" % (
            self.short.encode(),
            text.rstrip(b"\r").decode(errors="replace").encode(),
        )

    def close(self) -> None:
        if self.response is not None:
            self.response.close()


async def _open(
    state: State, container: Container, address: str | None, follow: bool, tail: int | None
) -> _Upstream:
    node = container.node or "?"
    if not address:
        why = "advertises no address" if address == "" else "is not registered (agent down?)"
        return _Upstream(container, status=503, error=f"node {node} {why}")
    problem = node_address_problem(address)
    if problem is not None:
        return _Upstream(
            container, status=503, error=f"node {node} advertises an invalid address: {problem}"
        )
    token = state.settings.node_token
    if not token:
        return _Upstream(
            container,
            status=503,
            error=f"node {node}: no node token configured on this API (auth.node_token, "
            "LB_NODE_TOKEN); nodes are sent that token and no other",
        )
    params = {"follow": "true" if follow else "false"}
    if tail is not None:
        params["tail"] = str(tail)
    url = f"{address.rstrip('/')}/node/containers/{quote(container.id, safe='')}/logs"
    headers = {"Authorization": f"Bearer {token}"}
    try:
        request = state.http.get(
            url,
            params=params,
            headers=headers,
            allow_redirects=False,
            timeout=_read_deadline(follow),
        )
        response = await asyncio.wait_for(request, OPEN_TIMEOUT)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        return _Upstream(container, status=503, error=f"node {node} at {address}: {reason}")
    if response.status != 200:
        detail = await _detail(response)
        response.close()
        status = 404 if response.status == 404 else 503
        return _Upstream(container, status=status, error=f"node {node} answered {detail}")
    return _Upstream(container, response)


def _read_deadline(follow: bool) -> aiohttp.ClientTimeout:
    """A log that is not followed must keep coming: a node silent for :data:`READ_TIMEOUT` is
    given up on (the stream says so). A followed one may idle for hours, so it has none; it
    ends when its client leaves or the app shuts down."""
    return aiohttp.ClientTimeout(
        total=None,
        connect=CONNECT_TIMEOUT,
        sock_connect=CONNECT_TIMEOUT,
        sock_read=None if follow else READ_TIMEOUT,
    )


async def _detail(response: aiohttp.ClientResponse) -> str:
    """A node's error, as its first error detail when it sent the usual JSON shape."""
    try:
        text = await response.text()
        detail = json.loads(text)["errors"][0]["detail"]
    except Exception:
        detail = ""
    return f"{response.status}: {detail}" if detail else str(response.status)


async def _merge(upstreams: list[_Upstream], response: web.StreamResponse) -> None:
    """Write lines as they arrive from any node (per container in order) until all have ended."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE)
    readers = [asyncio.create_task(_read(u, queue)) for u in upstreams]
    try:
        left = len(readers)
        while left:
            batch = [await queue.get()]
            while not queue.empty() and len(batch) < 256:  # one write for what is waiting
                batch.append(queue.get_nowait())
            left -= batch.count(None)
            data = b"".join(item for item in batch if item is not None)
            if data:
                await response.write(data)
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)


async def _read(upstream: _Upstream, queue: asyncio.Queue[bytes | None]) -> None:
    """Split one node's bytes into prefixed lines; a broken stream ends with a line saying so."""
    assert upstream.response is not None
    pending = b""
    try:
        async for chunk in upstream.response.content.iter_any():
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if len(pending) >= LINE_MAX:
                lines.append(pending)
                pending = b""
            for line in lines:
                await queue.put(upstream.line(line))
        if pending:
            await queue.put(upstream.line(pending))
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        if pending:
            await queue.put(upstream.line(pending))
        reason = str(exc) or type(exc).__name__
        await queue.put(upstream.line(f"-- logs interrupted: {reason}".encode()))
    finally:
        upstream.close()
    await queue.put(None)
