"""``/api/projects``: create, list, get, update (rename included) and delete, by id or name."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from lastbackend import codec
from lastbackend.api.http import (
    body,
    decode,
    doc,
    encode,
    if_match,
    json_response,
    page_json,
    paging,
    read_object,
)
from lastbackend.api.state import STATE
from lastbackend.model.common import now
from lastbackend.model.platform import Meta, ProjectCreate
from lastbackend.store.objects import Record

routes = web.RouteTableDef()


def view(record: Record) -> dict[str, Any]:
    meta: Meta = record.values["meta"]
    href = f"/api/projects/{record.id}"
    return {
        "id": record.id,
        **codec.unstructure(meta),
        "links": {"self": {"href": href}, "services": {"href": f"{href}/services"}},
    }


def shown(request: web.Request, record: Record) -> bytes:
    """:func:`view` encoded, made once per version of the project (``State.views``)."""
    views = request.app[STATE].views
    token = ("project", record.id, record.revision)
    made = views.get(token)
    if made is None:
        made = encode(view(record))
        views.put(token, made)
    return made  # type: ignore[no-any-return]


def _spec(record: Record) -> dict[str, Any]:
    meta: Meta = record.values["meta"]
    return {"name": meta.name, "description": meta.description}


def _meta(record: Record, spec: ProjectCreate) -> dict[str, Any]:
    old: Meta = record.values["meta"]
    return {"meta": Meta(spec.name, old.created, old.updated, spec.description)}


@routes.post("/api/projects")
@doc("Create a project", body=ProjectCreate, response="Project", status=201)
async def create(request: web.Request) -> web.Response:
    spec = await body(request, ProjectCreate)
    t = now()
    record = await request.app[STATE].projects.create(
        spec.name, {"meta": Meta(spec.name, t, t, spec.description)}
    )
    return json_response(
        view(record),
        status=201,
        revision=record.revision,
        headers={"Location": f"/api/projects/{record.id}"},
    )


@routes.get("/api/projects")
@doc("List projects in name order", response="Project", paginated=True)
async def index(request: web.Request) -> web.Response:
    pg = paging(request)
    page = await request.app[STATE].projects.list(
        page=pg.page, per_page=pg.per_page, descending=pg.descending
    )
    return json_response(
        None,
        encoded=page_json(request, pg, page.total, [shown(request, r) for r in page.records]),
        headers={"X-Etcd-Revision": str(page.revision)},
    )


@routes.get("/api/projects/{project}")
@doc("Get a project by id or name", response="Project")
async def show(request: web.Request) -> web.Response:
    record = await request.app[STATE].projects.get(request.match_info["project"])
    return json_response(None, encoded=shown(request, record), revision=record.revision)


@routes.patch("/api/projects/{project}")
@doc(
    "Change some fields of a project (a new name renames it)",
    body="ProjectPatch",
    response="Project",
)
async def patch(request: web.Request) -> web.Response:
    changes = await read_object(request)
    record = await request.app[STATE].projects.update(
        request.match_info["project"],
        lambda cur: _meta(cur, decode({**_spec(cur), **changes}, ProjectCreate)),
        if_match=if_match(request),
    )
    return json_response(view(record), revision=record.revision)


@routes.put("/api/projects/{project}")
@doc("Replace a project's fields", body=ProjectCreate, response="Project")
async def replace(request: web.Request) -> web.Response:
    spec = await body(request, ProjectCreate)
    record = await request.app[STATE].projects.update(
        request.match_info["project"], lambda cur: _meta(cur, spec), if_match=if_match(request)
    )
    return json_response(view(record), revision=record.revision)


@routes.delete("/api/projects/{project}")
@doc("Delete a project with its services and everything under them", status=204)
async def delete(request: web.Request) -> web.Response:
    await request.app[STATE].projects.delete(
        request.match_info["project"], if_match=if_match(request)
    )
    return web.Response(status=204)
