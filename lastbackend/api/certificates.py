"""``/api/certificates``: a user's TLS certificate per host; ``/api/router/ca.pem``: the root.

A certificate is named by the host it serves (``app.example.com``, ``*.example.com``), which is
also its key; the host is converted as a service's ``domains`` are (lowercase, IDNA), so
``Bücher.Example`` and ``xn--bcher-kva.example`` name one certificate. PUT creates (201) or
replaces (200); everything about the pair is checked first (``model.certificates``), so a bad
one is a 422 naming the field and nothing is written. The key is write-only: every response
shows ``"***"`` (DESIGN.md section 7). ETags and ``If-Match`` work as for registries.

``ca.pem`` is the root of the routers' internal CA, which signs the certificates of every routed
host without one of its own; clients that trust it can use HTTPS offline and on ``*.localhost``.
It is made on first use, by this route or the first router, whichever comes first.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from aiohttp import web

from lastbackend import codec
from lastbackend.api.http import body, doc, if_match, json_response, page_body, paging
from lastbackend.api.state import STATE
from lastbackend.model.certificates import CertificateBody
from lastbackend.model.common import MASK
from lastbackend.store.certificates import Certificates, Stored, ca_certificate, ensure_ca

routes = web.RouteTableDef()

BASE = "/api/certificates"
ONE = BASE + "/{host}"
CA_PEM = "/api/router/ca.pem"
PEM_TYPE = "application/x-pem-file"


def href(host: str) -> str:
    return f"{BASE}/{quote(host, safe='*')}"


def view(stored: Stored) -> dict[str, Any]:
    cert = stored.certificate
    return {
        **codec.unstructure(cert),
        "private_key": MASK,
        "links": {"self": {"href": href(cert.host)}},
    }


def _repo(request: web.Request) -> Certificates:
    state = request.app[STATE]
    return Certificates(state.etcd, state.secrets)


@routes.put(ONE)
@doc(
    "Store the certificate chain and key for a host (the key is stored encrypted)",
    body="CertificateBody",
    response="Certificate",
    upsert=True,
)
async def put(request: web.Request) -> web.Response:
    spec = await body(request, CertificateBody)
    stored, created = await _repo(request).put(
        request.match_info["host"], spec, if_match=if_match(request)
    )
    headers = {"Location": href(stored.certificate.host)} if created else {}
    return json_response(
        view(stored), status=201 if created else 200, revision=stored.revision, headers=headers
    )


@routes.get(BASE)
@doc("List certificates in host order", response="Certificate", paginated=True, order=("host",))
async def index(request: web.Request) -> web.Response:
    pg = paging(request, ("host",))
    listing = await _repo(request).list(
        page=pg.page, per_page=pg.per_page, descending=pg.descending
    )
    return json_response(
        page_body(request, pg, listing.total, [view(s) for s in listing.certificates]),
        headers={"X-Etcd-Revision": str(listing.revision)},
    )


@routes.get(ONE)
@doc("Get a host's certificate (the key shows as ***)", response="Certificate")
async def show(request: web.Request) -> web.Response:
    stored = await _repo(request).get(request.match_info["host"])
    return json_response(view(stored), revision=stored.revision)


@routes.delete(ONE)
@doc("Delete a host's certificate (the router falls back to its internal CA)", status=204)
async def delete(request: web.Request) -> web.Response:
    await _repo(request).delete(request.match_info["host"], if_match=if_match(request))
    return web.Response(status=204)


@routes.get(CA_PEM)
@doc("The routers' internal CA root certificate, to trust", response="RouterCAPem")
async def ca_pem(request: web.Request) -> web.Response:
    state = request.app[STATE]
    # Only the first call ever needs the key (to make the CA); later ones read the public half.
    pem = (
        await ca_certificate(state.etcd)
        or (await ensure_ca(state.etcd, state.secrets)).certificate_pem
    )
    return web.Response(
        body=pem.encode("ascii"),
        content_type=PEM_TYPE,
        headers={"Content-Disposition": 'inline; filename="lastbackend-ca.pem"'},
    )
