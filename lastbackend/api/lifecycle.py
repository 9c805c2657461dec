"""``GET /api/lifecycle`` and ``GET /api/buildpacks``: what staging supports (doc 002).

The view comes from the callable ``make_app`` was given, not from :mod:`lastbackend.lifecycle`:
``api`` sits above ``lifecycle`` in the package layers and imports nothing below it.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from lastbackend.api.errors import ApiError
from lastbackend.api.http import doc, json_response
from lastbackend.api.state import STATE

routes = web.RouteTableDef()


@routes.get("/api/lifecycle")
@doc(
    "The lifecycle descriptor: supported and deprecated buildpack and platform APIs (as written "
    "and expanded), the lifecycle version and the labels builder images carry (503 when this "
    "process loaded no descriptor)"
)
async def get_lifecycle(request: web.Request) -> web.Response:
    source = request.app[STATE].lifecycle
    if source is None:
        raise ApiError(
            503,
            "no lifecycle descriptor is loaded in this process; it is loaded by `lastbackend "
            "daemon` and `lastbackend api` from lifecycle.descriptor (LB_LIFECYCLE_DESCRIPTOR)",
        )
    return json_response(dict(source()))


@routes.get("/api/buildpacks")
@doc(
    "The buildpacks staging detects with, in detection order, each with its id, version, "
    "buildpack API, whether the descriptor supports it and what its detection looks for; and "
    "the buildpacks refused (with the file and the reason)",
    response="Buildpacks",
)
async def get_buildpacks(request: web.Request) -> web.Response:
    source = request.app[STATE].buildpacks
    if source is None:
        raise ApiError(
            503,
            "this process has no buildpack catalog; it is loaded by `lastbackend daemon` and "
            "`lastbackend api` from the built-in buildpacks and staging.buildpacks_dir",
        )
    return json_response(dict(await asyncio.to_thread(source)))
