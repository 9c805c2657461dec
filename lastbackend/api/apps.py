"""``/v3/apps``: apps of seed 000, a second view of services (DESIGN.md section 1).

An app's guid is its service's id, its space the project (``relationships.space.guid``), its
``environment_variables`` the service's ``config.env``. A service made through ``/api`` is an app
here too: without an ``app`` key it shows ``desired_state: STARTED`` (it runs), without a
``lifecycle`` key the default buildpack lifecycle (auto-detection, default stack).

The lifecycle is changed through the root resource (``PATCH /v3/apps/:guid``, the first of the
document's two choices): the sent lifecycle replaces the stored one, and its ``type`` cannot
change. ``environment_variables`` in a PATCH replaces the whole map; its values are stored
encrypted and shown in clear to admin tokens, ``***`` to read-only ones
(:mod:`lastbackend.api.envview`). Every write takes ``If-Match`` with the app's ETag (its
revision, the same as its service's).

Running what was staged: ``PATCH .../relationships/current_droplet`` picks a ``STAGED`` droplet of
the app, ``POST .../actions/start`` points the service's image at it (see
:mod:`lastbackend.store.apps`), and the services controller runs it; ``stop`` keeps everything
but the pods.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs
from aiohttp import web

from lastbackend import codec
from lastbackend.api import droplets, services
from lastbackend.api.envview import EnvView, env_view
from lastbackend.api.errors import ApiError, bad_query
from lastbackend.api.http import (
    decode,
    doc,
    if_match,
    json_response,
    list_filter,
    page_body,
    paging,
    read_json,
    read_object,
)
from lastbackend.api.state import STATE
from lastbackend.model.apps import AppCreate, AppUpdate, CurrentDropletBody
from lastbackend.model.common import Id, Name
from lastbackend.model.platform import Meta
from lastbackend.store import apps as store
from lastbackend.store import keys
from lastbackend.store.apps import Apps, Refused
from lastbackend.store.objects import Conflict, Contention, NotFound, Record

routes = web.RouteTableDef()

BASE = "/v3/apps"
ONE = BASE + "/{guid}"
LIST_QUERY = ("page", "per_page", "order_by", "names", "space_guids")


def href(guid: str) -> str:
    return f"{BASE}/{guid}"


def _time(value: datetime) -> str:
    return codec.format_time(value)


def view(pid: str, record: Record, urls: list[str], env: EnvView) -> dict[str, Any]:
    meta: Meta = record.values["meta"]
    meta_kv = record.kvs["meta"]
    updated = meta.updated != meta.created or (meta_kv is not None and meta_kv.version > 1)
    link = href(record.id)
    return {
        "guid": record.id,
        "name": meta.name,
        "desired_state": store.app_state(record).desired_state,
        "lifecycle": codec.unstructure(store.lifecycle(record)),
        "environment_variables": env.show(store.config(record).env),
        "health_check": codec.unstructure(store.config(record).health_check),
        "relationships": {"space": {"guid": pid}},
        "urls": urls,
        "created_at": _time(meta.created),
        "updated_at": _time(meta.updated) if updated else None,
        "links": {
            "self": {"href": link},
            "space": {"href": f"/api/projects/{pid}"},
            "packages": {"href": f"{link}/packages"},
            "droplets": {"href": f"{link}/droplets"},
            "current_droplet": {"href": f"{link}/droplets/current"},
            "start": {"href": f"{link}/actions/start", "method": "POST"},
            "stop": {"href": f"{link}/actions/stop", "method": "POST"},
        },
    }


def _apps(request: web.Request) -> Apps:
    return request.app[STATE].apps


def _refused(exc: Refused) -> ApiError:
    return ApiError(422, str(exc))


async def _urls(request: web.Request, apps: list[tuple[str, Record]]) -> list[list[str]]:
    """Each app's ``urls``, from its project's name (read once per project, in one round trip)."""
    state = request.app[STATE]
    pids = sorted({pid for pid, _ in apps})
    found = await state.etcd.read_many([keys.project_meta(pid) for pid in pids])
    names = {
        pid: codec.loads(kv.value, Meta).name
        for pid in pids
        if (kv := found.get(keys.project_meta(pid))) is not None
    }
    return [
        services.urls(state.settings, names[pid], record) if pid in names else []
        for pid, record in apps
    ]


async def _app_response(
    request: web.Request, pid: str, record: Record, status: int = 200
) -> web.Response:
    [urls] = await _urls(request, [(pid, record)])
    body = view(pid, record, urls, env_view(request))
    return json_response(body, status=status, revision=record.revision)


# the app itself ---------------------------------------------------------------------------------


@routes.post(BASE)
@doc(
    "Create an app (a service) in a space (a project)", body="AppCreate", response="App", status=201
)
async def create(request: web.Request) -> web.Response:
    spec = decode(await read_json(request), AppCreate)
    space = spec.relationships.space.guid
    sealed = env_view(request).seal(spec.environment_variables)
    spec = attrs.evolve(spec, environment_variables=sealed)
    try:
        pid, record = await _apps(request).create(spec)
    except NotFound:
        raise ApiError(
            422, f"relationships.space.guid: space {space} does not exist (it is a project id)"
        ) from None
    except Conflict:
        raise ApiError(
            409, f"name: an app named {spec.name!r} already exists in space {space}"
        ) from None
    response = await _app_response(request, pid, record, 201)
    response.headers["Location"] = href(record.id)
    return response


@routes.get(BASE)
@doc(
    "List apps across spaces; filter by names and space_guids (comma lists)",
    response="App",
    paginated=True,
    order=store.ORDERS,
    query={"names": Name, "space_guids": Id},
)
async def index(request: web.Request) -> web.Response:
    unknown = sorted(set(request.query) - set(LIST_QUERY))
    if unknown:
        raise bad_query(unknown[0], f"unknown parameter; known: {', '.join(LIST_QUERY)}")
    pg = paging(request, store.ORDERS)
    order = request.query.get("order_by", store.ORDERS[0]).lstrip("-")
    names = list_filter(request, "names", Name)
    spaces = list_filter(request, "space_guids", Id)
    page, pids = await _apps(request).list(
        page=pg.page,
        per_page=pg.per_page,
        order=order,
        descending=pg.descending,
        names=names,
        spaces=spaces,
    )
    apps = list(zip(pids, page.records, strict=True))
    env = env_view(request)
    resources = [
        view(pid, r, urls, env)
        for (pid, r), urls in zip(apps, await _urls(request, apps), strict=True)
    ]
    return json_response(
        page_body(request, pg, page.total, resources),
        headers={"X-Etcd-Revision": str(page.revision)},
    )


@routes.get(ONE)
@doc("Get an app", response="App")
async def show(request: web.Request) -> web.Response:
    pid, record = await _apps(request).get(request.match_info["guid"])
    return await _app_response(request, pid, record)


def _no_nulls(changes: dict[str, Any]) -> None:
    """``null`` is not "leave as is": say so rather than ignore it."""
    found = [
        f"{k}: must not be null" for k in attrs.fields_dict(AppUpdate) if changes.get(k, 1) is None
    ]
    if found:
        raise ApiError(422, *found)


def _patched(record: Record, update: AppUpdate, env: EnvView) -> dict[str, Any]:
    """The parts a PATCH writes; raises (so nothing is written) on a lifecycle type change."""
    meta: Meta = record.values["meta"]
    wanted: dict[str, Any] = {"meta": attrs.evolve(meta, name=update.name or meta.name)}
    if update.lifecycle is not None:
        old = store.lifecycle(record).type
        if update.lifecycle.type != old:
            raise ApiError(
                422, f"lifecycle.type: cannot change from {old} to {update.lifecycle.type}"
            )
        wanted["lifecycle"] = update.lifecycle
    config = store.config(record)
    if update.environment_variables is not None:
        config = attrs.evolve(config, env=env.seal(update.environment_variables, config.env))
    if update.health_check is not None:
        config = attrs.evolve(config, health_check=update.health_check)
    if config != store.config(record):
        wanted["config"] = config
    return wanted


@routes.patch(ONE)
@doc(
    "Change an app's name, lifecycle data (not its type) or environment variables (replaced)",
    body="AppUpdate",
    response="App",
)
async def patch(request: web.Request) -> web.Response:
    changes = await read_object(request)
    update = decode(changes, AppUpdate)
    _no_nulls(changes)
    guid = request.match_info["guid"]
    apps = _apps(request)
    pid = await apps.owner(guid)
    env = env_view(request)
    try:
        record = await apps.services(pid).update(
            guid, lambda cur: _patched(cur, update, env), if_match=if_match(request)
        )
    except NotFound:
        raise NotFound(f"app {guid!r} not found") from None
    except Contention:
        raise
    except Conflict:
        raise ApiError(
            409, f"name: an app named {update.name!r} already exists in space {pid}"
        ) from None
    return await _app_response(request, pid, record)


@routes.delete(ONE)
@doc("Delete an app: its service, packages and droplets", status=204)
async def delete(request: web.Request) -> web.Response:
    guid = request.match_info["guid"]
    apps = _apps(request)
    pid = await apps.owner(guid)
    try:
        await apps.services(pid).delete(guid, if_match=if_match(request))
    except NotFound:
        raise NotFound(f"app {guid!r} not found") from None
    return web.Response(status=204)


# running a droplet ------------------------------------------------------------------------------


def _relationship(guid: str, droplet: str) -> dict[str, Any]:
    return {
        "data": {"guid": droplet},
        "links": {
            "self": {"href": f"{href(guid)}/relationships/current_droplet"},
            "related": {"href": f"{href(guid)}/droplets/current"},
        },
    }


def _current(guid: str, record: Record) -> str:
    droplet = store.app_state(record).current_droplet
    if droplet is None:
        raise ApiError(404, f"app {guid} has no current droplet")
    return droplet


@routes.get(ONE + "/relationships/current_droplet")
@doc("Get the guid of the droplet an app runs (404 if none)", response="CurrentDroplet")
async def get_current_droplet(request: web.Request) -> web.Response:
    guid = request.match_info["guid"]
    _, record = await _apps(request).get(guid)
    return json_response(_relationship(guid, _current(guid, record)), revision=record.revision)


@routes.patch(ONE + "/relationships/current_droplet")
@doc(
    "Set the droplet an app runs (a STAGED droplet of the app); a started app deploys it",
    body="CurrentDropletBody",
    response="CurrentDroplet",
)
async def set_current_droplet(request: web.Request) -> web.Response:
    spec = decode(await read_json(request), CurrentDropletBody)
    guid = request.match_info["guid"]
    try:
        _, record = await _apps(request).assign(guid, spec.data.guid, if_match=if_match(request))
    except Refused as exc:
        raise _refused(exc) from None
    return json_response(_relationship(guid, spec.data.guid), revision=record.revision)


@routes.get(ONE + "/droplets/current")
@doc("Get the droplet an app runs (404 if none)", response="Droplet")
async def current_droplet(request: web.Request) -> web.Response:
    guid = request.match_info["guid"]
    apps = _apps(request)
    pid, record = await apps.get(guid)
    droplet_guid = _current(guid, record)
    found = await apps.droplet(pid, guid, droplet_guid)
    if found is None:
        raise ApiError(404, f"app {guid}'s current droplet {droplet_guid} no longer exists")
    droplet, kv = found
    body = droplets.view(droplet_guid, guid, droplet, env_view(request))
    return json_response(body, revision=kv.mod_revision)


@routes.post(ONE + "/actions/start")
@doc("Start an app: run its current droplet", response="App")
async def start(request: web.Request) -> web.Response:
    try:
        pid, record = await _apps(request).start(
            request.match_info["guid"], if_match=if_match(request)
        )
    except Refused as exc:
        raise _refused(exc) from None
    return await _app_response(request, pid, record)


@routes.post(ONE + "/actions/stop")
@doc("Stop an app: no containers; its image and config are kept", response="App")
async def stop(request: web.Request) -> web.Response:
    pid, record = await _apps(request).stop(request.match_info["guid"], if_match=if_match(request))
    return await _app_response(request, pid, record)
