"""Streamed responses: what every long response needs, and the followed blob log.

aiohttp does not cancel a handler whose client left (``handler_cancellation`` is off, so a
disconnect never interrupts an etcd write half-way): a stream looks at its connection itself
(:func:`gone`). A followed stream never finishes by itself, so shutdown must not wait for it as
for a request in flight (for ``api.shutdown_timeout``): it leaves the in-flight count while it
follows (:func:`not_drained`) and ends when the app shuts down (``State.closing``).

:func:`send_log` serves a log from the blob store, a droplet's staging output or a build's
output: what is there, and with ``follow`` what is appended, until its object is finished.

Every followed log takes one of ``api.max_log_follows`` slots (:mod:`lastbackend.api.limits`)
for as long as it follows: :func:`send_log` while its object is unfinished, :func:`follow_slot`
around a handler (the service logs proxy).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web

from lastbackend.api.errors import bad_query
from lastbackend.api.middlewares import INFLIGHT
from lastbackend.api.state import STATE
from lastbackend.store.etcd import StoreError
from lastbackend.store.objects import NotFound

Finished = Callable[[], Awaitable[bool]]
"""Whether a log's object is finished, so its log grows no more; raises ``NotFound`` once the
object is gone."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

POLL = 0.2
"""Seconds between looks at a followed log and at its object."""
TEXT = "text/plain; charset=utf-8"
FLAGS = {"true": True, "1": True, "false": False, "0": False}


def follow_query(request: web.Request) -> bool:
    """The ``follow`` query parameter (default false); 400 naming it for anything else."""
    raw = request.query.get("follow", "false")
    value = FLAGS.get(raw)  # as the schema spells them: one spelling each
    if value is None:
        raise bad_query("follow", f"must be true or false, got {raw!r}")
    return value


def gone(request: web.Request) -> bool:
    """The client closed its connection."""
    transport = request.transport
    return transport is None or transport.is_closing()


@contextlib.contextmanager
def not_drained(request: web.Request, follow: bool = True) -> Iterator[None]:
    """Out of the in-flight count while ``follow``: shutdown ends the stream instead of waiting."""
    if not follow:
        yield
        return
    inflight = request.app[INFLIGHT]
    inflight.leave()
    try:
        yield
    finally:
        inflight.enter()  # the middleware leaves once more


async def send_log(
    request: web.Request, kind: str, name: str, finished: Finished, *, follow: bool
) -> web.StreamResponse:
    """The ``kind`` log ``name`` as text; with ``follow``, open until ``finished()`` says so, the
    client leaves or the server shuts down.

    ``finished`` is called once before any byte is sent, so an object that does not exist is a
    404 with the usual error body.
    """
    last = await finished() or not follow
    slot = contextlib.nullcontext() if last else request.app[STATE].log_follows.hold()
    with slot:  # 429 beyond api.max_log_follows, before any byte is sent
        response = web.StreamResponse(headers={"Content-Type": TEXT})
        await response.prepare(request)
        with not_drained(request, not last), contextlib.suppress(ConnectionError):
            await _copy(request, response, kind, name, finished, last)
            await response.write_eof()
    return response


def follow_slot(handler: Handler) -> Handler:
    """``handler`` holding one of ``api.max_log_follows`` slots while it serves ``?follow=true``
    (a 429 when none is free); without ``follow`` it runs as it is."""

    @functools.wraps(handler)
    async def limited(request: web.Request) -> web.StreamResponse:
        if not follow_query(request):
            return await handler(request)
        with request.app[STATE].log_follows.hold():
            return await handler(request)

    return limited


async def _copy(
    request: web.Request,
    response: web.StreamResponse,
    kind: str,
    name: str,
    finished: Finished,
    last: bool,
) -> None:
    """Send the log from the start; unless ``last``, keep sending what is appended, asking
    ``finished`` every :data:`POLL` seconds.

    ``finished`` is asked *before* the log is read each round, so output written before the
    object finished is always sent before the stream ends.
    """
    state = request.app[STATE]
    offset = 0
    while True:
        while True:
            chunk, offset = await asyncio.to_thread(state.blobs.read_log, name, offset, kind=kind)
            if not chunk:
                break
            await response.write(chunk)
        if last or state.closing.is_set() or gone(request):
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.closing.wait(), POLL)
        try:
            last = await finished()
        except NotFound:
            last = True
        except StoreError:
            return
