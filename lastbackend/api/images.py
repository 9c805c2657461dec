"""``/api/images``: images built from git and pushed to a docker repository (seed 001).

An image is addressed by its id, or by its name percent-encoded into one path segment
(``/api/images/registry.local:5000%2Facme%2Fweb``): a name is a docker repository and holds
``/``. The view is the image info object's fields with the id, the ``source`` object and, for
one image, its ``builds`` by number (the list leaves builds out: one more read per image).
ETags and ``If-Match`` work as for projects; they cover ``meta`` and ``source``, not builds.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from lastbackend import codec
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
from lastbackend.model.common import now
from lastbackend.model.images import ImageCreate, ImageMeta
from lastbackend.store.builds import Builds, Target
from lastbackend.store.objects import Objects, Record

routes = web.RouteTableDef()

BASE = "/api/images"
ONE = BASE + "/{image}"


def view(record: Record) -> dict[str, Any]:
    href = f"{BASE}/{record.id}"
    return {
        "id": record.id,
        **codec.unstructure(record.values["meta"]),
        "source": codec.unstructure(record.values.get("source")),
        "links": {"self": {"href": href}, "builds": {"href": f"{href}/builds"}},
    }


async def _full(request: web.Request, record: Record) -> dict[str, Any]:
    """The view of one image, with its builds."""
    builds, _ = await Builds(request.app[STATE].etcd).list(Target("image", record.id))
    return {
        **view(record),
        "builds": [{"number": b.number, **codec.unstructure(b.build)} for b in builds],
    }


def _spec(record: Record) -> dict[str, Any]:
    """The user-settable fields, as plain JSON (what a PATCH merges onto)."""
    meta: ImageMeta = record.values["meta"]
    return {
        "name": meta.name,
        "description": meta.description,
        "source": codec.unstructure(record.values.get("source")),
    }


def _parts(record: Record, spec: ImageCreate) -> dict[str, Any]:
    old: ImageMeta = record.values["meta"]
    meta = ImageMeta(
        name=spec.name, description=spec.description, created=old.created, updated=old.updated
    )
    return {"meta": meta, "source": spec.source}


def _merge(record: Record, changes: dict[str, Any]) -> ImageCreate:
    merged = {**_spec(record), **changes}
    if isinstance(changes.get("source"), dict) and isinstance(merged.get("source"), dict):
        merged["source"] = {**(_spec(record)["source"] or {}), **changes["source"]}
    return decode(merged, ImageCreate)


def _repo(request: web.Request) -> Objects:
    return request.app[STATE].images


@routes.post(BASE)
@doc(
    "Create an image: the repository it is pushed to and the source it is built from",
    body=ImageCreate,
    response="Image",
    status=201,
)
async def create(request: web.Request) -> web.Response:
    spec = await body(request, ImageCreate)
    t = now()
    meta = ImageMeta(name=spec.name, description=spec.description, created=t, updated=t)
    record = await _repo(request).create(spec.name, {"meta": meta, "source": spec.source})
    return json_response(
        {**view(record), "builds": []},
        status=201,
        revision=record.revision,
        headers={"Location": f"{BASE}/{record.id}"},
    )


@routes.get(BASE)
@doc("List images in name order (without their builds)", response="Image", paginated=True)
async def index(request: web.Request) -> web.Response:
    pg = paging(request)
    page = await _repo(request).list(page=pg.page, per_page=pg.per_page, descending=pg.descending)
    return json_response(
        page_body(request, pg, page.total, [view(r) for r in page.records]),
        headers={"X-Etcd-Revision": str(page.revision)},
    )


@routes.get(ONE)
@doc("Get an image by id or (percent-encoded) name, with its builds", response="Image")
async def show(request: web.Request) -> web.Response:
    record = await _repo(request).get(request.match_info["image"])
    return json_response(await _full(request, record), revision=record.revision)


@routes.put(ONE)
@doc("Replace an image's fields (a new name renames it)", body=ImageCreate, response="Image")
async def replace(request: web.Request) -> web.Response:
    spec = await body(request, ImageCreate)
    record = await _repo(request).update(
        request.match_info["image"], lambda cur: _parts(cur, spec), if_match=if_match(request)
    )
    return json_response(await _full(request, record), revision=record.revision)


@routes.patch(ONE)
@doc(
    "Change some fields of an image; source is merged key by key, a new name renames it",
    body="ImagePatch",
    response="Image",
)
async def patch(request: web.Request) -> web.Response:
    changes = await read_object(request)
    record = await _repo(request).update(
        request.match_info["image"],
        lambda cur: _parts(cur, _merge(cur, changes)),
        if_match=if_match(request),
    )
    return json_response(await _full(request, record), revision=record.revision)


@routes.delete(ONE)
@doc("Delete an image with its builds", status=204)
async def delete(request: web.Request) -> web.Response:
    await _repo(request).delete(request.match_info["image"], if_match=if_match(request))
    return web.Response(status=204)
