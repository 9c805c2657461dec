"""``/api/projects/{project}/services``: the five actions, and the service's parts as sub-resources.

A service's ETag is its revision (the newest ``mod_revision`` of its part keys), the same on the
service and on each sub-resource, so an ``If-Match`` taken from any of them guards all of them.

The ``image`` key holds the image that runs. Setting ``config.image`` points it there too; builds
and droplets write it directly later, and an explicit ``image`` in a request wins.

``config.env`` values are stored encrypted and shown as :mod:`lastbackend.api.envview` says:
in clear to admin tokens, ``***`` to read-only ones (revisions' ``spec.env`` too).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from aiohttp import web

from lastbackend import codec
from lastbackend.api.envview import EnvView, env_view
from lastbackend.api.errors import ApiError
from lastbackend.api.http import (
    body,
    decode,
    doc,
    if_match,
    json_response,
    page_body,
    paging,
    read_object,
)
from lastbackend.api.state import STATE
from lastbackend.config import Settings
from lastbackend.model import hosts
from lastbackend.model.common import now
from lastbackend.model.platform import (
    Container,
    Domains,
    ImageBody,
    Meta,
    RollbackBody,
    ServiceConfig,
    ServiceCreate,
    ServiceSource,
)
from lastbackend.model.pods import Revision, ServiceStatus
from lastbackend.store import keys
from lastbackend.store import routers as router_store
from lastbackend.store.objects import Objects, Record

routes = web.RouteTableDef()

BASE = "/api/projects/{project}/services"
ONE = BASE + "/{service}"


def urls(settings: Settings, project: str, record: Record) -> list[str]:
    """Every URL the routers serve the service at (see ``model.hosts.urls``)."""
    config: ServiceConfig = record.values.get("config", ServiceConfig())
    return hosts.urls(
        record.name,
        project,
        config.ports,
        record.values.get("domains", {}),
        domain=settings.router_domain,
        http=settings.router_http_address[1],
        https=settings.router_https_address[1],
    )


def check_domains(settings: Settings, domains: Mapping[str, bool]) -> None:
    """Hosts under the platform domain are the services' own names: nobody claims one."""
    for host in domains:
        if hosts.under(host, settings.router_domain):
            raise ApiError(
                422,
                f"domains: {host!r} is under the platform domain {settings.router_domain!r}, "
                "whose hosts are <service>.<project> names the router gives every service",
            )


def _config(config: ServiceConfig, env: EnvView) -> dict[str, Any]:
    """A config as the caller may see it (``env`` values in clear or ``***``)."""
    return {**codec.unstructure(config), "env": env.show(config.env)}


def view(project: Record, record: Record, settings: Settings, env: EnvView) -> dict[str, Any]:
    pid = project.id
    values = record.values
    href = f"/api/projects/{pid}/services/{record.id}"
    return {
        "id": record.id,
        "project": pid,
        **codec.unstructure(values["meta"]),
        "config": _config(values.get("config", ServiceConfig()), env),
        "source": codec.unstructure(values.get("source")),
        "domains": values.get("domains", {}),
        "urls": urls(settings, project.name, record),
        "image": values.get("image"),
        "status": codec.unstructure(values.get("status", ServiceStatus())),
        "links": {
            "self": {"href": href},
            "project": {"href": f"/api/projects/{pid}"},
            "containers": {"href": f"{href}/containers"},
            "builds": {"href": f"{href}/builds"},
        },
    }


def _spec(record: Record) -> dict[str, Any]:
    """The user-settable parts of a service, as plain JSON (what a PATCH merges onto)."""
    values = record.values
    meta: Meta = values["meta"]
    return {
        "name": meta.name,
        "description": meta.description,
        "config": codec.unstructure(values.get("config", ServiceConfig())),
        "source": codec.unstructure(values.get("source")),
        "domains": values.get("domains", {}),
        "image": values.get("image"),
    }


def _parts(record: Record, spec: ServiceCreate, *, image_given: bool) -> dict[str, Any]:
    old_meta: Meta = record.values["meta"]
    old_config: ServiceConfig = record.values.get("config", ServiceConfig())
    image = spec.image
    if not image_given and spec.config.image != old_config.image:
        image = spec.config.image
    return {
        "meta": Meta(spec.name, old_meta.created, old_meta.updated, spec.description),
        "config": spec.config,
        "source": spec.source,
        "domains": spec.domains,
        "image": image,
    }


def _merge(record: Record, changes: dict[str, Any]) -> ServiceCreate:
    merged = {**_spec(record), **changes}
    if isinstance(changes.get("config"), dict):
        merged["config"] = {**_spec(record)["config"], **changes["config"]}
    return decode(merged, ServiceCreate)


async def _services(request: web.Request) -> tuple[Record, Objects]:
    state = request.app[STATE]
    project = await state.projects.get(request.match_info["project"])
    return project, state.services(project.id)


async def resolve(request: web.Request) -> tuple[str, Record]:
    """The project id and the service that ``{project}`` and ``{service}`` name (id or name)."""
    project, services = await _services(request)
    return project.id, await services.get(request.match_info["service"])


def _sealed(config: ServiceConfig, stored: ServiceConfig | None, env: EnvView) -> ServiceConfig:
    """``config`` as stored: its env values encrypted (unchanged ones keep their tokens)."""
    sealed = env.seal(config.env, stored.env if stored else None, field="config.env")
    return attrs.evolve(config, env=sealed)


async def _update(
    request: web.Request, change: Any, *, image_given: bool = False
) -> tuple[Record, Record]:
    project, services = await _services(request)
    settings = request.app[STATE].settings
    env = env_view(request)

    def parts(current: Record) -> dict[str, Any]:
        wanted = _parts(current, change(current), image_given=image_given)
        check_domains(settings, wanted["domains"])
        wanted["config"] = _sealed(wanted["config"], current.values.get("config"), env)
        return wanted

    record = await services.update(request.match_info["service"], parts, if_match=if_match(request))
    return project, record


# the service itself -----------------------------------------------------------------------------


@routes.post(BASE)
@doc("Create a service in a project", body=ServiceCreate, response="Service", status=201)
async def create(request: web.Request) -> web.Response:
    spec = await body(request, ServiceCreate)
    settings = request.app[STATE].settings
    check_domains(settings, spec.domains)
    project, services = await _services(request)
    pid = project.id
    t = now()
    record = await services.create(
        spec.name,
        {
            "meta": Meta(spec.name, t, t, spec.description),
            "config": _sealed(spec.config, None, env_view(request)),
            "source": spec.source,
            "domains": spec.domains,
            "image": spec.image or spec.config.image,
        },
    )
    return json_response(
        view(project, record, settings, env_view(request)),
        status=201,
        revision=record.revision,
        headers={"Location": f"/api/projects/{pid}/services/{record.id}"},
    )


@routes.get(BASE)
@doc("List a project's services in name order", response="Service", paginated=True)
async def index(request: web.Request) -> web.Response:
    pg = paging(request)
    project, services = await _services(request)
    settings = request.app[STATE].settings
    page = await services.list(page=pg.page, per_page=pg.per_page, descending=pg.descending)
    return json_response(
        page_body(
            request,
            pg,
            page.total,
            [view(project, r, settings, env_view(request)) for r in page.records],
        ),
        headers={"X-Etcd-Revision": str(page.revision)},
    )


@routes.get(ONE)
@doc("Get a service by id or name", response="Service")
async def show(request: web.Request) -> web.Response:
    project, services = await _services(request)
    record = await services.get(request.match_info["service"])
    settings = request.app[STATE].settings
    return json_response(
        view(project, record, settings, env_view(request)), revision=record.revision
    )


@routes.patch(ONE)
@doc(
    "Change some fields of a service; config is merged key by key, a new name renames it",
    body="ServicePatch",
    response="Service",
)
async def patch(request: web.Request) -> web.Response:
    changes = await read_object(request)
    project, record = await _update(
        request, lambda cur: _merge(cur, changes), image_given="image" in changes
    )
    settings = request.app[STATE].settings
    return json_response(
        view(project, record, settings, env_view(request)), revision=record.revision
    )


@routes.delete(ONE)
@doc("Delete a service with its containers and builds", status=204)
async def delete(request: web.Request) -> web.Response:
    _, services = await _services(request)
    await services.delete(request.match_info["service"], if_match=if_match(request))
    return web.Response(status=204)


# parts as sub-resources -------------------------------------------------------------------------


def _shown(request: web.Request, record: Record, part: str) -> Any:
    if part == "config":
        return _config(record.values.get("config", ServiceConfig()), env_view(request))
    return _spec(record)[part]


async def _part(request: web.Request, part: str) -> web.Response:
    _, record = await resolve(request)
    return json_response(_shown(request, record, part), revision=record.revision)


async def _set_part(request: web.Request, part: str, value: Any) -> web.Response:
    """Merge ``{part: value}`` into the service (a config merges key by key); answer the part."""
    _, record = await _update(request, lambda cur: _merge(cur, {part: value}))
    return json_response(_shown(request, record, part), revision=record.revision)


@routes.get(ONE + "/config")
@doc("Get a service's config", response="ServiceConfig")
async def get_config(request: web.Request) -> web.Response:
    return await _part(request, "config")


@routes.put(ONE + "/config")
@doc("Replace a service's config", body=ServiceConfig, response="ServiceConfig")
async def put_config(request: web.Request) -> web.Response:
    config = await body(request, ServiceConfig)
    return await _set_part(request, "config", codec.unstructure(config))


@routes.patch(ONE + "/config")
@doc(
    "Change some fields of a service's config", body="ServiceConfigPatch", response="ServiceConfig"
)
async def patch_config(request: web.Request) -> web.Response:
    return await _set_part(request, "config", await read_object(request))


@routes.get(ONE + "/source")
@doc("Get a service's source (null when it has none)", response="ServiceSourceOrNull")
async def get_source(request: web.Request) -> web.Response:
    return await _part(request, "source")


@routes.put(ONE + "/source")
@doc("Set a service's source repository", body=ServiceSource, response="ServiceSource")
async def put_source(request: web.Request) -> web.Response:
    source = await body(request, ServiceSource)
    return await _set_part(request, "source", codec.unstructure(source))


@routes.delete(ONE + "/source")
@doc("Remove a service's source", status=204)
async def delete_source(request: web.Request) -> web.Response:
    await _update(request, lambda cur: _merge(cur, {"source": None}))
    return web.Response(status=204)


@routes.get(ONE + "/domains")
@doc("Get a service's domains (host name -> active)", response="Domains")
async def get_domains(request: web.Request) -> web.Response:
    return await _part(request, "domains")


@routes.put(ONE + "/domains")
@doc("Replace a service's domains", body=Domains, response="Domains")
async def put_domains(request: web.Request) -> web.Response:
    return await _set_part(request, "domains", await body(request, Domains))


@routes.get(ONE + "/image")
@doc("Get the image the service runs", response="ServiceImage")
async def get_image(request: web.Request) -> web.Response:
    _, record = await resolve(request)
    return json_response({"image": record.values.get("image")}, revision=record.revision)


@routes.put(ONE + "/image")
@doc("Set the image the service runs", body=ImageBody, response="ServiceImage")
async def put_image(request: web.Request) -> web.Response:
    image = (await body(request, ImageBody)).image
    _, record = await _update(request, lambda cur: _merge(cur, {"image": image}), image_given=True)
    return json_response({"image": record.values.get("image")}, revision=record.revision)


# revisions and rollback ---------------------------------------------------------------------------


@routes.get(ONE + "/revisions")
@doc(
    "List the pod templates the service was deployed with, newest first",
    response="Revision",
    paginated=True,
    order=("revision",),
)
async def revisions(request: web.Request) -> web.Response:
    pg = paging(request, ("revision",))
    kvs, revision = await _children(request, keys.revisions)
    items = sorted(
        (codec.loads(kv.value, Revision) for kv in kvs),
        key=lambda r: r.revision,
        reverse=not pg.descending,  # newest first unless order_by=-revision asks otherwise
    )
    env = env_view(request)
    chosen = [
        {**codec.unstructure(r), "spec": {**codec.unstructure(r.spec), "env": env.show(r.spec.env)}}
        for r in pg.of(items)
    ]
    return json_response(
        page_body(request, pg, len(items), chosen), headers={"X-Etcd-Revision": str(revision)}
    )


@routes.post(ONE + "/rollback")
@doc(
    "Roll the service back to a deployed revision (default: the one before the current one), "
    "with the same readiness-gated rollout as any change",
    body="RollbackBody",
    response="Service",
)
async def rollback(request: web.Request) -> web.Response:
    raw = await read_object(request) if request.can_read_body else {}
    wanted = decode(raw, RollbackBody).revision
    project, services = await _services(request)
    record = await services.get(request.match_info["service"])
    found = await request.app[STATE].etcd.range(keys.revisions(project.id, record.id))
    kvs = found.kvs
    stored = {r.revision: r for r in (codec.loads(kv.value, Revision) for kv in kvs)}
    if wanted is None:
        current = record.values.get("status", ServiceStatus()).rollout
        older = sorted(n for n in stored if current is None or n < current.revision)
        if not older:
            raise ApiError(422, "revision: there is no earlier revision to roll back to")
        wanted = older[-1]
    target = stored.get(wanted)
    if target is None:
        known = ", ".join(map(str, sorted(stored))) or "none"
        raise ApiError(422, f"revision: no revision {wanted} (kept: {known})")
    spec = target.spec
    env = env_view(request)

    def back(current: Record) -> dict[str, Any]:
        config: ServiceConfig = current.values.get("config", ServiceConfig())
        restored = spec.onto(config)  # the revision's own tokens are kept, clear ones sealed
        sealed = env.seal(restored.env, spec.env, field="config.env")
        return {"config": attrs.evolve(restored, env=sealed), "image": spec.image}

    record = await services.update(record.id, back, if_match=if_match(request))
    settings = request.app[STATE].settings
    return json_response(
        view(project, record, settings, env_view(request)), revision=record.revision
    )


@routes.get(ONE + "/routing")
@doc(
    "Whether every live router serves the service as it is now (what `lastbackend push` waits for)",
    response="Routing",
)
async def routing(request: web.Request) -> web.Response:
    pid, record = await resolve(request)
    found = await router_store.routing(request.app[STATE].etcd, pid, record.id)
    behind = {r.name for r in found.behind()}
    return json_response(
        {
            "revision": found.revision,
            "routed": not behind,
            "routers": [
                {**codec.unstructure(r), "current": r.name not in behind} for r in found.routers
            ],
        }
    )


# containers: written by node agents, read here --------------------------------------------------


async def _children(request: web.Request, prefix_of: Any) -> tuple[list[Any], int]:
    pid, record = await resolve(request)
    found = await request.app[STATE].etcd.range(prefix_of(pid, record.id))
    return found.kvs, found.revision


@routes.get(ONE + "/containers")
@doc("List a service's containers", response="Container", paginated=True, order=("id",))
async def containers(request: web.Request) -> web.Response:
    pg = paging(request, ("id",))
    kvs, revision = await _children(request, keys.containers)
    items = [codec.unstructure(codec.loads(kv.value, Container)) for kv in kvs]
    items.sort(key=lambda c: c["id"], reverse=pg.descending)
    chosen = pg.of(items)
    return json_response(
        page_body(request, pg, len(items), chosen), headers={"X-Etcd-Revision": str(revision)}
    )


@routes.get(ONE + "/containers/{container}")
@doc("Get one of a service's containers", response="Container")
async def container(request: web.Request) -> web.Response:
    pid, record = await resolve(request)
    cid = request.match_info["container"]
    kv = (
        await request.app[STATE].etcd.get(keys.container(pid, record.id, cid))
        if "/" not in cid
        else None
    )
    if kv is None:
        raise ApiError(404, f"container {cid!r} not found")
    return json_response(
        codec.unstructure(codec.loads(kv.value, Container)), revision=kv.mod_revision
    )
