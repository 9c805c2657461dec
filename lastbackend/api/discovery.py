"""Cloud Foundry's discovery documents: ``GET /`` (the root, as ``cf api URL`` reads it) and
``GET /v3`` (a link per resource of the ``/v3`` family this API serves).

Both are public, as on Cloud Foundry: they name endpoints, never data. Links this platform has no
counterpart for (UAA, log cache, v2...) are ``null``, as a CF root shows a component it lacks.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from lastbackend.api.http import doc, json_response

routes = web.RouteTableDef()

V3_RESOURCES = ("apps", "packages", "droplets")
"""The ``/v3`` collections served (docs/api/apps.md)."""
ABSENT = (
    "cloud_controller_v2",
    "network_policy_v0",
    "network_policy_v1",
    "login",
    "uaa",
    "credhub",
    "routing",
    "logging",
    "log_cache",
    "log_stream",
    "app_ssh",
)
V3_VERSION = "3.0.0"


def _base(request: web.Request) -> str:
    return str(request.url.origin())


@routes.get("/")
@doc("The Cloud Foundry root document: links to the v3 API and this platform's own")
async def root(request: web.Request) -> web.Response:
    base = _base(request)
    links: dict[str, Any] = {
        "self": {"href": base},
        "cloud_controller_v3": {"href": f"{base}/v3", "meta": {"version": V3_VERSION}},
        "lastbackend": {"href": f"{base}/api"},
        "openapi": {"href": f"{base}/openapi.json"},
    }
    links.update(dict.fromkeys(ABSENT))
    return json_response({"links": links})


@routes.get("/v3")
@doc("The Cloud Foundry v3 root: a link per /v3 resource")
async def v3_root(request: web.Request) -> web.Response:
    base = f"{_base(request)}/v3"
    links = {"self": {"href": base}} | {r: {"href": f"{base}/{r}"} for r in V3_RESOURCES}
    return json_response({"links": links})
