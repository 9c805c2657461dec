"""``GET /api/lifecycle``: the lifecycle descriptor this process loaded, and its labels (doc 002).

The view comes from the callable ``make_app`` was given, not from :mod:`lastbackend.lifecycle`:
``api`` sits above ``lifecycle`` in the package layers and imports nothing below it.
"""

from __future__ import annotations

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
