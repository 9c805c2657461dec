"""``/v3/droplets``: stagings of packages (seed 000), their lists and their staging output.

``POST /v3/packages/:guid/droplets`` stores a ``PENDING`` droplet; the staging controller does
the rest. The droplet's lifecycle is the request's if it sends one, else the app's ``lifecycle``
key, else buildpack with auto-detection. A package is staged by the lifecycle made for it (bits
and git by buildpack, docker by docker): any other pair is a 422 naming ``lifecycle.type``, and
nothing is written. The package must be ``READY``.

The view is the document's (``guid``, ``state``, ``error``, ``lifecycle``,
``environment_variables``, ``staging_response``) plus ``image`` (the runnable image, once
staged; CF v3 has it for docker droplets too), ``created_at``/``updated_at`` and ``links``.
:func:`view` renders one for any module that shows droplets. ``environment_variables`` values are
stored encrypted and shown in clear to admin tokens, ``***`` to read-only ones
(:mod:`lastbackend.api.envview`).

``GET /v3/droplets/:guid/logs`` is the staging output as text, from the blob store (empty while
``PENDING``); with ``?follow=true`` it stays open, sending output as it is appended, until the
droplet is ``STAGED`` or ``FAILED`` (or deleted, or the server shuts down).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web

from lastbackend import codec
from lastbackend.api.envview import EnvView, env_view
from lastbackend.api.errors import ApiError
from lastbackend.api.http import body, doc, if_match, json_response, list_filter
from lastbackend.api.packages import ORDER, listing
from lastbackend.api.state import STATE
from lastbackend.api.streams import follow_query, send_log
from lastbackend.model.apps import (
    LIFECYCLE_OF_PACKAGE,
    BuildpackLifecycle,
    Droplet,
    DropletCreate,
    DropletState,
)
from lastbackend.model.common import Id, now
from lastbackend.store import keys
from lastbackend.store.droplets import StoredDroplet
from lastbackend.store.etcd import Cmp
from lastbackend.store.objects import Contention, retries
from lastbackend.store.owned import app_project

routes = web.RouteTableDef()

BASE = "/v3/droplets"
ONE = BASE + "/{guid}"
OF_PACKAGE = "/v3/packages/{guid}/droplets"
OF_APP = "/v3/apps/{guid}/droplets"
FINAL = frozenset({"STAGED", "FAILED", "EXPIRED"})
"""States after which a droplet's log grows no more."""


def href(guid: str) -> str:
    return f"{BASE}/{guid}"


def view(guid: str, app: str, droplet: Droplet, env: EnvView) -> dict[str, Any]:
    """Seed 000's droplet, with ``image``, timestamps and links; ``app`` is the app's guid."""
    response = droplet.staging_response
    return {
        "guid": guid,
        "state": droplet.state,
        "error": droplet.error,
        "lifecycle": codec.unstructure(droplet.lifecycle),
        "environment_variables": env.show(droplet.environment_variables),
        "staging_response": codec.unstructure(response) if response is not None else None,
        "image": droplet.image,
        "created_at": codec.format_time(droplet.created),
        "updated_at": codec.format_time(droplet.updated),
        "links": {
            "self": {"href": href(guid)},
            "package": {"href": f"/v3/packages/{droplet.package}"},
            "app": {"href": f"/v3/apps/{app}"},
            "logs": {"href": f"{href(guid)}/logs"},
            "assign_current_droplet": {
                "href": f"/v3/apps/{app}/relationships/current_droplet",
                "method": "PATCH",
            },
        },
    }


def _viewer(request: web.Request) -> Callable[[StoredDroplet], dict[str, Any]]:
    env = env_view(request)
    return lambda stored: view(stored.guid, stored.app, stored.droplet, env)


def _stamps(stored: StoredDroplet) -> tuple[Any, Any]:
    return stored.droplet.created, stored.droplet.updated


# create ------------------------------------------------------------------------------------------


@routes.post(OF_PACKAGE)
@doc(
    "Stage a READY package: a PENDING droplet (lifecycle: the request's, else the app's)",
    body="DropletCreate",
    response="Droplet",
    status=201,
)
async def create(request: web.Request) -> web.Response:
    spec = await body(request, DropletCreate) if request.body_exists else DropletCreate()
    state = request.app[STATE]
    guid = request.match_info["guid"]
    async for _ in retries():
        package = await state.packages.get(guid)
        kind = package.package.type
        if package.package.state != "READY":
            hint = " (upload its bits first)" if package.package.state == "AWAITING_UPLOAD" else ""
            raise ApiError(
                422,
                f"package: is {package.package.state}; only a READY package can be staged{hint}",
            )
        lifecycle, lifecycle_kv = await state.droplets.app_lifecycle(package.project, package.app)
        guard = []
        if spec.lifecycle is not None:
            lifecycle = spec.lifecycle
        else:
            key = keys.service_part(package.project, package.app, "lifecycle")
            guard.append(Cmp.unchanged(lifecycle_kv, key))
        lifecycle = lifecycle or BuildpackLifecycle()
        needed = LIFECYCLE_OF_PACKAGE[kind]
        if lifecycle.type != needed:
            whose = "" if spec.lifecycle else " (the app's lifecycle; send one to override it)"
            raise ApiError(
                422,
                f"lifecycle.type: a {kind} package is staged by the {needed} lifecycle, "
                f"not {lifecycle.type}{whose}",
            )
        t = now()
        droplet = Droplet(
            created=t,
            updated=t,
            package=guid,
            lifecycle=lifecycle,
            environment_variables=env_view(request).seal(spec.environment_variables),
        )
        stored = await state.droplets.create(package, droplet, guard=guard)
        if stored is not None:
            return json_response(
                _viewer(request)(stored),
                status=201,
                revision=stored.revision,
                headers={"Location": href(stored.guid)},
            )
    raise Contention(f"package {guid!r} is changing too fast; try again")


# reads -------------------------------------------------------------------------------------------


@routes.get(BASE)
@doc(
    "List droplets, oldest first (filters: app_guids, package_guids, states; comma-separated)",
    response="Droplet",
    paginated=True,
    order=ORDER,
    query={"app_guids": Id, "package_guids": Id, "states": DropletState},
)
async def index(request: web.Request) -> web.Response:
    items, revision = await request.app[STATE].droplets.list(
        apps=list_filter(request, "app_guids", Id),
        packages=list_filter(request, "package_guids", Id),
        states=list_filter(request, "states", DropletState),
    )
    return listing(request, items, revision, _viewer(request), _stamps)


@routes.get(OF_PACKAGE)
@doc(
    "List the droplets staged from a package (filter: states)",
    response="Droplet",
    paginated=True,
    order=ORDER,
    query={"states": DropletState},
)
async def index_of_package(request: web.Request) -> web.Response:
    state = request.app[STATE]
    package = await state.packages.get(request.match_info["guid"])
    items, revision = await state.droplets.list(
        apps=[package.app],
        packages=[package.guid],
        states=list_filter(request, "states", DropletState),
    )
    return listing(request, items, revision, _viewer(request), _stamps)


@routes.get(OF_APP)
@doc(
    "List an app's droplets (filters: states, package_guids)",
    response="Droplet",
    paginated=True,
    order=ORDER,
    query={"states": DropletState, "package_guids": Id},
)
async def index_of_app(request: web.Request) -> web.Response:
    state = request.app[STATE]
    app = request.match_info["guid"]
    await app_project(state.etcd, app)  # 404 for an unknown app
    items, revision = await state.droplets.list(
        apps=[app],
        packages=list_filter(request, "package_guids", Id),
        states=list_filter(request, "states", DropletState),
    )
    return listing(request, items, revision, _viewer(request), _stamps)


@routes.get(ONE)
@doc("Get a droplet", response="Droplet")
async def show(request: web.Request) -> web.Response:
    stored = await request.app[STATE].droplets.get(request.match_info["guid"])
    return json_response(_viewer(request)(stored), revision=stored.revision)


@routes.delete(ONE)
@doc("Delete a droplet and its staging log (a staging in progress is stopped)", status=204)
async def delete(request: web.Request) -> web.Response:
    state = request.app[STATE]
    guid = request.match_info["guid"]
    await state.droplets.delete(guid, if_match=if_match(request))
    await asyncio.to_thread(state.blobs.delete, "droplets", guid)
    return web.Response(status=204)


# staging output ----------------------------------------------------------------------------------


@routes.get(ONE + "/logs")
@doc(
    "A droplet's staging output as text (follow=true: stream it until STAGED or FAILED)",
    query=("follow",),
)
async def logs(request: web.Request) -> web.StreamResponse:
    follow = follow_query(request)
    droplets = request.app[STATE].droplets
    guid = request.match_info["guid"]

    async def staged() -> bool:
        return (await droplets.get(guid)).droplet.state in FINAL

    return await send_log(request, "droplets", guid, staged, follow=follow)
