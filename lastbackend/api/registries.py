"""``/api/registries``: registry accounts (seed 001), the credentials node agents pull with.

An account is named by its host (``registry.local:5000``), which is also its key. Its password
is write-only: every response shows ``"***"`` (DESIGN.md section 7), so the clear password never
leaves the request that sent it. A PATCH without ``password`` keeps the stored one; PUT replaces
everything and so needs it. A new ``host`` in a PUT or PATCH moves the account (409 if that host
has one already). ETags and ``If-Match`` work as for projects.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

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
from lastbackend.model.common import MASK
from lastbackend.model.registries import RegistryAccount, RegistryCreate, RegistryPatch
from lastbackend.store.registries import Registries, Stored

routes = web.RouteTableDef()

BASE = "/api/registries"
ONE = BASE + "/{host}"


def href(host: str) -> str:
    return f"{BASE}/{quote(host, safe=':')}"


def view(stored: Stored) -> dict[str, Any]:
    account = stored.account
    return {
        **codec.unstructure(account),
        "password": MASK,
        "links": {"self": {"href": href(account.host)}},
    }


def _fields(account: RegistryAccount) -> dict[str, Any]:
    """What a PATCH merges over: the stored fields but the password, which it cannot read."""
    return {"host": account.host, "username": account.username, "email": account.email}


def _repo(request: web.Request) -> Registries:
    return request.app[STATE].registries


@routes.post(BASE)
@doc(
    "Create a registry account (the password is stored encrypted)",
    body=RegistryCreate,
    response="Registry",
    status=201,
)
async def create(request: web.Request) -> web.Response:
    spec = await body(request, RegistryCreate)
    stored = await _repo(request).create(spec)
    return json_response(
        view(stored),
        status=201,
        revision=stored.revision,
        headers={"Location": href(stored.account.host)},
    )


@routes.get(BASE)
@doc("List registry accounts in host order", response="Registry", paginated=True, order=("host",))
async def index(request: web.Request) -> web.Response:
    pg = paging(request, ("host",))
    listing = await _repo(request).list(
        page=pg.page, per_page=pg.per_page, descending=pg.descending
    )
    return json_response(
        page_body(request, pg, listing.total, [view(s) for s in listing.accounts]),
        headers={"X-Etcd-Revision": str(listing.revision)},
    )


@routes.get(ONE)
@doc("Get a registry account by host (the password shows as ***)", response="Registry")
async def show(request: web.Request) -> web.Response:
    stored = await _repo(request).get(request.match_info["host"])
    return json_response(view(stored), revision=stored.revision)


@routes.put(ONE)
@doc("Replace a registry account (password included)", body=RegistryCreate, response="Registry")
async def replace(request: web.Request) -> web.Response:
    spec = await body(request, RegistryCreate)
    stored = await _repo(request).update(
        request.match_info["host"], lambda _: spec, if_match=if_match(request)
    )
    return json_response(view(stored), revision=stored.revision)


@routes.patch(ONE)
@doc(
    "Change some fields of a registry account (no password: keep the stored one)",
    body="RegistryPatch",
    response="Registry",
)
async def patch(request: web.Request) -> web.Response:
    changes = await read_object(request)
    stored = await _repo(request).update(
        request.match_info["host"],
        lambda cur: decode({**_fields(cur), **changes}, RegistryPatch),
        if_match=if_match(request),
    )
    return json_response(view(stored), revision=stored.revision)


@routes.delete(ONE)
@doc("Delete a registry account", status=204)
async def delete(request: web.Request) -> web.Response:
    await _repo(request).delete(request.match_info["host"], if_match=if_match(request))
    return web.Response(status=204)
