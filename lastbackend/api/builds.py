"""Builds of services and images: start one, cancel it, read its output.

The same five routes on both targets::

    POST /api/projects/{project}/services/{service}/builds      start (201, the queued build)
    GET  .../builds, GET .../builds/{n}                           by number
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

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from lastbackend import codec
from lastbackend.api.errors import ApiError
from lastbackend.api.http import (
    ascii_int,
    doc,
    json_response,
    page_body,
    paging,
    read_json,
    shown,
)
from lastbackend.api.services import ONE as SERVICE
from lastbackend.api.services import resolve
from lastbackend.api.state import STATE
from lastbackend.api.streams import follow_query, send_log
from lastbackend.model.common import is_uuid
from lastbackend.model.platform import Build
from lastbackend.sources.blobs import BUILD_LOGS
from lastbackend.store import keys
from lastbackend.store.builds import FINAL, NoSource, Target

routes = web.RouteTableDef()

SERVICE_BUILDS = SERVICE + "/builds"
IMAGE_BUILDS = "/api/images/{image}/builds"
MAX_BUILD = (1 << 63) - 1
"""No build is numbered past int64 (etcd's own counters): a longer number is not found."""


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
    """The ``{build}`` segment: a 404 for anything but a build number as this API spells it."""
    raw = request.match_info["build"]
    number = ascii_int(raw, 1, MAX_BUILD)
    if number is None or raw != str(number):
        raise ApiError(404, f"build {shown(raw)} not found: builds are numbered 1, 2, ...")
    return number


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


# read ---------------------------------------------------------------------------------------------


async def _list(
    request: web.Request, target_of: Callable[[web.Request], Awaitable[Target]]
) -> web.Response:
    """A page of the target's builds; the query is checked before the target is looked up."""
    pg = paging(request, ("number",))
    items, revision = await request.app[STATE].builds.list(await target_of(request))
    items.sort(key=lambda b: b.number, reverse=pg.descending)
    chosen = [view(b.number, b.build) for b in pg.of(items)]
    return json_response(
        page_body(request, pg, len(items), chosen), headers={"X-Etcd-Revision": str(revision)}
    )


async def _one(request: web.Request, target: Target) -> web.Response:
    stored = await request.app[STATE].builds.get(target, _number(request))
    return json_response(view(stored.number, stored.build), revision=stored.kv.mod_revision)


@routes.get(SERVICE_BUILDS)
@doc("List a service's builds by number", response="Build", paginated=True, order=("number",))
async def service_builds(request: web.Request) -> web.Response:
    return await _list(request, _service)


@routes.get(SERVICE_BUILDS + "/{build}")
@doc("Get one of a service's builds by number", response="Build")
async def service_build(request: web.Request) -> web.Response:
    return await _one(request, await _service(request))


@routes.get(IMAGE_BUILDS)
@doc("List an image's builds by number", response="Build", paginated=True, order=("number",))
async def image_builds(request: web.Request) -> web.Response:
    return await _list(request, _image)


@routes.get(IMAGE_BUILDS + "/{build}")
@doc("Get one of an image's builds by number", response="Build")
async def image_build(request: web.Request) -> web.Response:
    return await _one(request, await _image(request))


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


async def _logs(request: web.Request, target: Target) -> web.StreamResponse:
    follow = follow_query(request)
    number = _number(request)
    builds = request.app[STATE].builds

    async def ended() -> bool:
        return (await builds.get(target, number)).build.status in FINAL

    return await send_log(request, BUILD_LOGS, target.log_name(number), ended, follow=follow)


@routes.get(SERVICE_BUILDS + "/{build}/logs")
@doc("A service build's output as text (follow=true: stream it until it ends)", query=("follow",))
async def service_build_logs(request: web.Request) -> web.StreamResponse:
    return await _logs(request, await _service(request))


@routes.get(IMAGE_BUILDS + "/{build}/logs")
@doc("An image build's output as text (follow=true: stream it until it ends)", query=("follow",))
async def image_build_logs(request: web.Request) -> web.StreamResponse:
    return await _logs(request, await _image(request))
