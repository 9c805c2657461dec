"""Builds of services and images: start one, cancel it, read its output.

The same five routes on both targets::

    POST /api/projects/{project}/services/{service}/builds      start (201, the queued build)
    GET  .../builds, GET .../builds/{n}                           (services: in api/services.py)
    POST .../builds/{n}/cancel                                    a queued or running build
    GET  .../builds/{n}/logs?follow=true                          its output, as text
    POST /api/images/{image}/builds  ... and the same under /api/images/{image}

A build is ``{"number": n, ...the build object}``. ``POST .../builds`` takes no fields (an empty
body, or ``{}``): it builds the target's source branch as it is now. A target without a source is
a 422 and nothing is written. Cancelling is a ``POST`` to ``.../cancel``, not a ``DELETE``: the
build is not removed, it stays listed as ``canceled``; a finished build is a 409.

``.../logs`` is the build controller's output from the blob store (empty while queued); with
``?follow=true`` it stays open, sending output as it is appended, until the build ends (or the
server shuts down).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import web

from lastbackend import codec
from lastbackend.api.errors import ApiError, bad_query
from lastbackend.api.http import doc, json_response, page_body, paging, read_json
from lastbackend.api.middlewares import INFLIGHT
from lastbackend.api.services import ONE as SERVICE
from lastbackend.api.services import resolve
from lastbackend.api.state import STATE
from lastbackend.model.common import is_uuid
from lastbackend.model.platform import Build
from lastbackend.store import keys
from lastbackend.store.builds import FINAL, NoSource, StoredBuild, Target
from lastbackend.store.etcd import StoreError
from lastbackend.store.objects import NotFound

routes = web.RouteTableDef()

SERVICE_BUILDS = SERVICE + "/builds"
IMAGE_BUILDS = "/api/images/{image}/builds"
LOG_KIND = "build-logs"
POLL = 0.2
"""Seconds between looks at a followed log and its build's status."""
TEXT = "text/plain; charset=utf-8"


def view(number: int, build: Build) -> dict[str, Any]:
    return {"number": number, **codec.unstructure(build)}


async def _service(request: web.Request) -> Target:
    pid, record = await resolve(request)
    return Target("service", record.id, pid)


async def _image(request: web.Request) -> Target:
    """The image ``{image}`` names (by id): 404 unless its ``meta`` key exists."""
    iid = request.match_info["image"]
    if not is_uuid(iid) or await request.app[STATE].etcd.get(keys.image_part(iid, "meta")) is None:
        raise ApiError(404, f"image {iid!r} not found")
    return Target("image", iid)


def _number(request: web.Request) -> int:
    raw = request.match_info["build"]
    if not raw.isdigit() or raw != str(int(raw)):
        raise ApiError(404, f"build {raw!r} not found: builds are numbered 1, 2, ...")
    return int(raw)


def _href(target: Target, number: int) -> str:
    if target.kind == "service":
        return f"/api/projects/{target.project}/services/{target.id}/builds/{number}"
    return f"/api/images/{target.id}/builds/{number}"


# start --------------------------------------------------------------------------------------------


async def _no_fields(request: web.Request) -> None:
    """The body is optional; if sent it must be ``{}``: builds take no fields (yet)."""
    if not request.body_exists or not (await request.read()).strip():
        return
    data = await read_json(request)
    if not isinstance(data, dict):
        raise ApiError(422, "body: must be a JSON object (or nothing)")
    if data:
        names = ", ".join(sorted(map(repr, data)))
        raise ApiError(422, f"{sorted(data)[0]}: unknown field; a build takes no fields ({names})")


async def _start(request: web.Request, target: Target) -> web.Response:
    try:
        stored = await request.app[STATE].builds.add(target)
    except NoSource as exc:
        raise ApiError(422, f"source: {exc}") from None
    return json_response(
        view(stored.number, stored.build),
        status=201,
        revision=stored.kv.mod_revision,
        headers={"Location": _href(target, stored.number)},
    )


@routes.post(SERVICE_BUILDS)
@doc("Build a service from its source (the build is queued)", response="Build", status=201)
async def start_service_build(request: web.Request) -> web.Response:
    await _no_fields(request)
    return await _start(request, await _service(request))


@routes.post(IMAGE_BUILDS)
@doc("Build an image from its source (the build is queued)", response="Build", status=201)
async def start_image_build(request: web.Request) -> web.Response:
    await _no_fields(request)
    return await _start(request, await _image(request))


# read (images; a service's are in api/services.py) ------------------------------------------------


@routes.get(IMAGE_BUILDS)
@doc("List an image's builds by number", response="Build", paginated=True)
async def image_builds(request: web.Request) -> web.Response:
    pg = paging(request, ("number",))
    target = await _image(request)
    items, revision = await request.app[STATE].builds.list(target)
    items.sort(key=lambda b: b.number, reverse=pg.descending)
    chosen = [view(b.number, b.build) for b in items[(pg.page - 1) * pg.per_page :][: pg.per_page]]
    return json_response(
        page_body(request, pg, len(items), chosen), headers={"X-Etcd-Revision": str(revision)}
    )


@routes.get(IMAGE_BUILDS + "/{build}")
@doc("Get one of an image's builds by number", response="Build")
async def image_build(request: web.Request) -> web.Response:
    target = await _image(request)
    stored = await request.app[STATE].builds.get(target, _number(request))
    return json_response(view(stored.number, stored.build), revision=stored.kv.mod_revision)


# cancel -------------------------------------------------------------------------------------------


async def _cancel(request: web.Request, target: Target) -> web.Response:
    stored = await request.app[STATE].builds.cancel(target, _number(request))
    return json_response(view(stored.number, stored.build), revision=stored.kv.mod_revision)


@routes.post(SERVICE_BUILDS + "/{build}/cancel")
@doc("Cancel a queued or running build of a service (409 once it finished)", response="Build")
async def cancel_service_build(request: web.Request) -> web.Response:
    return await _cancel(request, await _service(request))


@routes.post(IMAGE_BUILDS + "/{build}/cancel")
@doc("Cancel a queued or running build of an image (409 once it finished)", response="Build")
async def cancel_image_build(request: web.Request) -> web.Response:
    return await _cancel(request, await _image(request))


# output -------------------------------------------------------------------------------------------


def _follow(request: web.Request) -> bool:
    raw = request.query.get("follow", "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise bad_query("follow", f"must be true or false, got {raw!r}")
    return raw in ("true", "1")


async def _logs(request: web.Request, target: Target) -> web.StreamResponse:
    follow = _follow(request)
    number = _number(request)
    stored = await request.app[STATE].builds.get(target, number)  # 404 before any byte is sent
    response = web.StreamResponse(headers={"Content-Type": TEXT})
    await response.prepare(request)
    inflight = request.app[INFLIGHT]
    if follow:  # a followed log may outlive any drain timeout: shutdown ends it instead
        inflight.leave()
    try:
        with contextlib.suppress(ConnectionError):
            await _copy_log(request, response, target, stored if follow else None)
            await response.write_eof()
    finally:
        if follow:
            inflight.enter()  # the middleware leaves once more
    return response


async def _copy_log(
    request: web.Request,
    response: web.StreamResponse,
    target: Target,
    stored: StoredBuild | None,
) -> None:
    """Send the log from the start; while the build (None: don't follow) has not finished, keep
    sending what is appended, looking at its status every :data:`POLL` seconds.

    The status is read *before* the log each round, so output written before the build ended is
    always sent before the stream ends.
    """
    state = request.app[STATE]
    name = target.log_name(stored.number if stored else _number(request))
    offset = 0
    last = stored is None or stored.build.status in FINAL
    while True:
        while True:
            chunk, offset = await asyncio.to_thread(
                state.blobs.read_log, name, offset, kind=LOG_KIND
            )
            if not chunk:
                break
            await response.write(chunk)
        if last or state.closing.is_set() or _gone(request):
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.closing.wait(), POLL)
        try:
            last = (await state.builds.get(target, stored.number)).build.status in FINAL
        except NotFound:
            last = True
        except StoreError:
            return


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


@routes.get(SERVICE_BUILDS + "/{build}/logs")
@doc("A service build's output as text (follow=true: stream it until it ends)", query=("follow",))
async def service_build_logs(request: web.Request) -> web.StreamResponse:
    return await _logs(request, await _service(request))


@routes.get(IMAGE_BUILDS + "/{build}/logs")
@doc("An image build's output as text (follow=true: stream it until it ends)", query=("follow",))
async def image_build_logs(request: web.Request) -> web.StreamResponse:
    return await _logs(request, await _image(request))
