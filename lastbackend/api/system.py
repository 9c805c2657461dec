"""Liveness, readiness, Prometheus metrics, the OpenAPI document and ``/api/whoami``.

``/readyz`` needs no token (probes send none), so with auth on it tells an unauthenticated caller
only its ``status``: leader identities (host names and pids), node and router details and etcd's
errors (endpoints, TLS problems) are for callers with a token, admin or read-only.
"""

from __future__ import annotations

import attrs
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from lastbackend.api import middlewares, openapi
from lastbackend.api.errors import ApiError
from lastbackend.api.http import doc, json_response
from lastbackend.api.roles import role
from lastbackend.api.state import STATE, State
from lastbackend.store.etcd import StoreUnavailable

routes = web.RouteTableDef()
REGISTRY = web.AppKey("registry", CollectorRegistry)


@routes.get("/healthz")
@doc("Liveness: the process serves requests")
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/readyz")
@doc(
    "Readiness: etcd answers, in-process controllers have synced, the router serves (503 otherwise)"
)
async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    response = await _readiness(state)
    if role(state.settings, request.headers.get("Authorization", "")) is None:
        return json_response({"status": response.body["status"]}, status=response.status)
    return json_response(response.body, status=response.status)


@routes.get("/api/whoami")
@doc(
    "Whether a token is needed and the role of the one sent (none: role null); a token that "
    "is not valid is a 401",
    response="WhoAmI",
)
async def whoami(request: web.Request) -> web.Response:
    """For a dashboard's first call: show a sign-in form or not, and which controls to render.

    Answered without a token (``role: null``), so a page can ask before it has one; a token
    sent must be valid, so signing in with a wrong one gets the same 401 as any other call.
    """
    settings = request.app[STATE].settings
    sent = request.headers.get("Authorization", "")
    found = role(settings, sent)
    if sent and found is None:
        raise ApiError(401, "the bearer token is not valid", headers=middlewares.CHALLENGE)
    return json_response({"auth": settings.auth_enabled, "role": found})


@attrs.frozen
class _Ready:
    body: dict[str, object]
    status: int = 200


async def _readiness(state: State) -> _Ready:
    router = state.router() if state.router is not None else None
    try:
        revision = await state.etcd.status()
    except StoreUnavailable as exc:
        body: dict[str, object] = {"status": "unavailable", "etcd": str(exc)}
        if router is not None:
            body["router"] = router  # it keeps serving the last config it loaded: say so
        return _Ready(body, 503)
    body = {"status": "ok", "etcd": {"revision": revision}}
    if router is not None:
        body["router"] = router
        if not router.get("ready"):
            body["status"] = "starting"
            return _Ready(body, 503)
    if state.controllers is not None:
        controllers = state.controllers()
        body["controllers"] = controllers
        if not all(c.get("ready") for c in controllers.values()):
            body["status"] = "syncing"
            return _Ready(body, 503)
    return _Ready(body)


@routes.get("/metrics")
@doc("Prometheus metrics: request counts and latency histograms by route")
async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@routes.get("/openapi.json")
@doc("This API's OpenAPI 3 description")
async def spec(request: web.Request) -> web.Response:
    return json_response(openapi.build(request.app))
