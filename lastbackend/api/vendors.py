"""``/api/vendors``: connect, read and disconnect github, bitbucket, gitlab and slack (seed 001).

``GET /api/vendors`` is the document's vendor map, every vendor present: ``{}`` when not
connected. A vendor is connected with a PUT (201 the first time, 200 when replacing); its
``token`` and ``webhook_secret`` are write-only: every response shows ``"***"`` (or ``""`` for
a webhook secret never set), so the clear values never leave the request that sent them.
ETags and ``If-Match`` work as for projects.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from lastbackend import codec
from lastbackend.api.http import body, doc, if_match, json_response
from lastbackend.api.state import STATE
from lastbackend.model.common import MASK
from lastbackend.model.vendors import GIT_VENDORS, VENDORS, VendorConnect
from lastbackend.store.vendors import Stored, Vendors, check_known

routes = web.RouteTableDef()

BASE = "/api/vendors"
ONE = BASE + "/{vendor}"


def view(stored: Stored) -> dict[str, Any]:
    vendor = stored.vendor
    links = {"self": {"href": f"{BASE}/{vendor.vendor}"}}
    if vendor.vendor in GIT_VENDORS:
        links["hook"] = {"href": f"/api/hooks/{vendor.vendor}"}
    return {
        **codec.unstructure(vendor),
        "token": MASK,
        "webhook_secret": MASK if vendor.webhook_secret else "",
        "links": links,
    }


def _repo(request: web.Request) -> Vendors:
    return request.app[STATE].vendors


@routes.get(BASE)
@doc("The vendor map: every vendor, {} when not connected", response="VendorMap")
async def index(request: web.Request) -> web.Response:
    connected, revision = await _repo(request).all()
    return json_response(
        {name: view(connected[name]) if name in connected else {} for name in VENDORS},
        headers={"X-Etcd-Revision": str(revision)},
    )


@routes.get(ONE)
@doc("Get a connected vendor (the token shows as ***)", response="Vendor")
async def show(request: web.Request) -> web.Response:
    stored = await _repo(request).get(request.match_info["vendor"])
    return json_response(view(stored), revision=stored.revision)


@routes.put(ONE)
@doc(
    "Connect a vendor, or replace its fields (no token or webhook_secret: keep the stored one)",
    body=VendorConnect,
    response="Vendor",
    upsert=True,
)
async def connect(request: web.Request) -> web.Response:
    name = request.match_info["vendor"]
    check_known(name)  # an unknown vendor is a 404 whatever the body
    spec = await body(request, VendorConnect)
    stored, created = await _repo(request).connect(name, spec, if_match=if_match(request))
    return json_response(view(stored), status=201 if created else 200, revision=stored.revision)


@routes.delete(ONE)
@doc("Disconnect a vendor (its token and webhook secret are deleted)", status=204)
async def disconnect(request: web.Request) -> web.Response:
    await _repo(request).disconnect(request.match_info["vendor"], if_match=if_match(request))
    return web.Response(status=204)
