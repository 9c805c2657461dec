"""``/api/certificates`` and ``/api/router/ca.pem`` against a real etcd.

The key must never come back and never sit in etcd in clear: responses show ``***``, etcd holds
a Fernet token (checked by searching every raw value for the key's PEM body, as an admin with
``etcdctl`` would see it), and only :func:`certificates_for_router` hands the clear key out.
Every refused body is a 422 naming the field, and the etcd revision does not move.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from lastbackend.api.state import STATE
from lastbackend.cli.keytree import _render
from lastbackend.secrets import Secrets, generate_key
from lastbackend.store import keys
from lastbackend.store.certificates import (
    RouterCA,
    ca_certificate,
    certificates_for_router,
    ensure_ca,
)
from tests.conftest import ClientFactory, dump
from tests.support import RawEtcd
from tests.unit.test_certificates_model import DAY, NOW, Issued, Pki, cert_text, key_text

pytestmark = pytest.mark.etcd

Client = TestClient[Any, Any]

BASE = "/api/certificates"
HOST = "app.example.com"
KEY = f"/lastbackend/certificates/{HOST}"
FIELDS = {
    "host",
    "certificate",
    "private_key",
    "subjects",
    "not_before",
    "not_after",
    "issuer",
    "serial",
    "fingerprint_sha256",
    "created",
    "updated",
}


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


@pytest.fixture
async def client(make_client: ClientFactory, tmp_path: Path) -> Client:
    """The API with its key file in a temporary data dir."""
    return await make_client(data_dir=tmp_path)


def secrets_of(client: Client) -> Secrets:
    return client.server.app[STATE].secrets


def key_body(issued: Issued) -> bytes:
    """The base64 lines of the key's PEM: what must appear in no etcd value and no response."""
    return "".join(issued.key_pem.splitlines()[1:-1]).encode()


def etag(resp: ClientResponse) -> str:
    return resp.headers["ETag"]


async def expect_error(resp: ClientResponse, status: int) -> str:
    """The status and DESIGN.md section 8's error shape; the details, joined."""
    assert resp.status == status, await resp.text()
    errors = (await resp.json())["errors"]
    assert errors
    for error in errors:
        assert set(error) == {"code", "title", "detail"}
        assert error["title"].startswith("CF-")
    return "; ".join(e["detail"] for e in errors)


async def put(client: Client, host: str, issued: Issued, status: int = 201) -> ClientResponse:
    resp = await client.put(f"{BASE}/{host}", json=issued.body())
    assert resp.status == status, await resp.text()
    assert key_body(issued) not in await resp.read()
    return resp


# create, read, replace --------------------------------------------------------------------------


async def test_put_stores_the_chain_and_an_encrypted_key(
    client: Client, etcd: RawEtcd, pki: Pki
) -> None:
    issued = pki.leaf(HOST, "www.example.com")
    resp = await put(client, HOST, issued)
    assert resp.headers["Location"] == f"{BASE}/{HOST}"
    body = await resp.json()
    assert set(body) == FIELDS | {"links"}
    assert body["host"] == HOST
    assert body["certificate"] == issued.pem
    assert body["private_key"] == "***"
    assert body["subjects"] == [HOST, "www.example.com"]
    assert body["issuer"] == "CN=Test Intermediate"
    assert body["serial"] == f"{issued.cert.serial_number:X}"
    assert body["not_after"] == issued.cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert body["created"] == body["updated"]
    assert body["links"] == {"self": {"href": f"{BASE}/{HOST}"}}

    tree = await dump(etcd)
    assert list(tree) == [KEY]
    kv = await etcd.get(KEY)
    assert kv is not None
    assert etag(resp) == f'"{kv.mod_revision}"'
    raw = tree[KEY]
    assert key_body(issued) not in raw
    assert b"PRIVATE KEY" not in raw
    assert raw == json.dumps(json.loads(raw), separators=(",", ":")).encode()  # compact
    value = json.loads(raw)
    assert set(value) == FIELDS
    assert value["private_key"].startswith("gAAAAA")
    assert secrets_of(client).decrypt(value["private_key"]) == issued.key_pem
    assert _render(raw)["private_key"] == "***"  # `lastbackend tree` masks it like every secret


async def test_get_shows_the_certificate_and_hides_the_key(client: Client, pki: Pki) -> None:
    issued = pki.leaf(HOST)
    created = await put(client, HOST, issued)
    resp = await client.get(f"{BASE}/{HOST}")
    assert resp.status == 200
    assert etag(resp) == etag(created)
    one = await resp.json()
    assert one == await created.json()
    assert one["private_key"] == "***"
    assert "BEGIN CERTIFICATE" in one["certificate"]
    assert key_body(issued) not in await resp.read()


async def test_hosts_are_converted_as_domains_are(client: Client, pki: Pki) -> None:
    issued = pki.leaf("xn--bcher-kva.example")
    resp = await put(client, "B%C3%BCcher.Example", issued)
    assert resp.headers["Location"] == f"{BASE}/xn--bcher-kva.example"
    for spelling in ("xn--bcher-kva.example", "B%C3%BCcher.example", "XN--BCHER-KVA.EXAMPLE"):
        resp = await client.get(f"{BASE}/{spelling}")
        assert resp.status == 200, spelling
        assert (await resp.json())["host"] == "xn--bcher-kva.example"


async def test_a_wildcard_host_in_the_path(client: Client, etcd: RawEtcd, pki: Pki) -> None:
    issued = pki.leaf("*.example.com")
    resp = await put(client, "*.example.com", issued)
    assert resp.headers["Location"] == f"{BASE}/*.example.com"
    assert list(await dump(etcd)) == ["/lastbackend/certificates/*.example.com"]
    for path in (f"{BASE}/*.example.com", f"{BASE}/%2A.example.com"):
        resp = await client.get(path)
        assert resp.status == 200, path
        assert (await resp.json())["subjects"] == ["*.example.com"]
    await put(client, "one.example.com", issued)  # the same wildcard serves a name under it


async def test_put_replaces_and_keeps_created(client: Client, etcd: RawEtcd, pki: Pki) -> None:
    first = pki.leaf(HOST)
    created = await (await put(client, HOST, first)).json()
    second = pki.leaf(HOST, not_after=NOW + 30 * DAY)
    resp = await put(client, HOST, second, status=200)
    assert "Location" not in resp.headers
    body = await resp.json()
    assert body["created"] == created["created"]
    assert body["serial"] == f"{second.cert.serial_number:X}"
    assert body["certificate"] == second.pem
    raw = (await dump(etcd))[KEY]
    assert key_body(second) not in raw
    assert secrets_of(client).decrypt(json.loads(raw)["private_key"]) == second.key_pem


async def test_a_put_that_changes_nothing_writes_nothing(
    client: Client, etcd: RawEtcd, pki: Pki
) -> None:
    issued = pki.leaf(HOST)
    created = await put(client, HOST, issued)
    revision = await etcd.status()
    again = await put(client, HOST, issued, status=200)
    assert etag(again) == etag(created)
    # the same key in another PEM form (SEC 1) and the chain with CRLFs: still the same pair
    sec1 = key_text(issued.key, serialization.PrivateFormat.TraditionalOpenSSL)
    resp = await client.put(
        f"{BASE}/{HOST}",
        json={"certificate": issued.pem.replace("\n", "\r\n"), "private_key": sec1},
    )
    assert resp.status == 200, await resp.text()
    assert etag(resp) == etag(created)
    assert await etcd.status() == revision


async def test_a_new_key_for_the_same_chain_is_a_mismatch_not_a_change(
    client: Client, etcd: RawEtcd, pki: Pki
) -> None:
    issued = pki.leaf(HOST)
    await put(client, HOST, issued)
    revision = await etcd.status()
    other = key_text(ec.generate_private_key(ec.SECP256R1()))
    resp = await client.put(
        f"{BASE}/{HOST}", json={"certificate": issued.pem, "private_key": other}
    )
    assert "private_key: does not match the certificate" in await expect_error(resp, 422)
    assert await etcd.status() == revision


async def test_concurrent_puts_of_one_host_create_it_once(
    client: Client, etcd: RawEtcd, pki: Pki
) -> None:
    leaves = [pki.leaf(HOST) for _ in range(10)]
    resps = await asyncio.gather(
        *(client.put(f"{BASE}/{HOST}", json=leaf.body()) for leaf in leaves)
    )
    assert sorted(r.status for r in resps) == [200] * 9 + [201]
    kv = await etcd.get(KEY)
    assert kv is not None
    serials = {f"{leaf.cert.serial_number:X}": leaf for leaf in leaves}
    last = serials[json.loads(kv.value)["serial"]]  # the last writer's pair, whole
    stored = json.loads(kv.value)
    assert stored["certificate"] == last.pem
    assert secrets_of(client).decrypt(stored["private_key"]) == last.key_pem


async def test_the_key_reaches_no_log_line(
    client: Client, etcd: RawEtcd, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    issued = pki.leaf(HOST)
    expired = pki.leaf(HOST, not_before=NOW - 90 * DAY, not_after=NOW - DAY)
    with structlog.testing.capture_logs() as events:
        await put(client, HOST, issued)
        await put(client, HOST, issued, status=200)
        await client.put(f"{BASE}/{HOST}", json=expired.body())  # a 422 with a key inside
        await client.get(f"{BASE}/{HOST}")
        await client.get(BASE)
        await certificates_for_router(etcd, secrets_of(client))
        await certificates_for_router(etcd, Secrets(generate_key()))  # logs the skip
        await client.get("/api/router/ca.pem")
    assert any(e.get("event") == "certificate skipped" for e in events)
    logged = repr(events) + caplog.text
    for leaf in (issued, expired):
        for line in leaf.key_pem.splitlines()[1:-1]:
            assert line not in logged
    ca = await ensure_ca(etcd, secrets_of(client))
    for line in ca.private_key_pem.splitlines()[1:-1]:
        assert line not in logged


# list and delete --------------------------------------------------------------------------------


async def test_list_pages_and_orders_by_host(client: Client, pki: Pki) -> None:
    for host in ("a.example.com", "b.example.com", "c.example.com"):
        await put(client, host, pki.leaf(host))
    resp = await client.get(BASE)
    assert resp.status == 200
    listed = await resp.json()
    assert [r["host"] for r in listed["resources"]] == [
        "a.example.com",
        "b.example.com",
        "c.example.com",
    ]
    assert {r["private_key"] for r in listed["resources"]} == {"***"}
    assert listed["pagination"]["total_results"] == 3
    assert int(resp.headers["X-Etcd-Revision"]) > 0
    resp = await client.get(f"{BASE}?per_page=2&order_by=-host")
    page = await resp.json()
    assert [r["host"] for r in page["resources"]] == ["c.example.com", "b.example.com"]
    assert page["pagination"]["total_pages"] == 2
    assert page["pagination"]["previous"] is None
    assert "page=2" in page["pagination"]["next"]["href"]
    resp = await client.get(f"{BASE}?per_page=2&page=2&order_by=-host")
    assert [r["host"] for r in (await resp.json())["resources"]] == ["a.example.com"]
    assert "order_by" in await expect_error(await client.get(f"{BASE}?order_by=name"), 400)


async def test_an_empty_list(client: Client) -> None:
    listed = await (await client.get(BASE)).json()
    assert listed["resources"] == []
    assert listed["pagination"]["total_results"] == 0


async def test_delete(client: Client, etcd: RawEtcd, pki: Pki) -> None:
    await put(client, HOST, pki.leaf(HOST))
    await put(client, "other.example.com", pki.leaf("other.example.com"))
    resp = await client.delete(f"{BASE}/{HOST}")
    assert resp.status == 204
    assert list(await dump(etcd)) == ["/lastbackend/certificates/other.example.com"]
    await expect_error(await client.get(f"{BASE}/{HOST}"), 404)
    await expect_error(await client.delete(f"{BASE}/{HOST}"), 404)


async def test_unknown_and_invalid_hosts_are_404(client: Client) -> None:
    await expect_error(await client.get(f"{BASE}/nowhere.example.com"), 404)
    await expect_error(await client.get(f"{BASE}/Not%20A%20Host"), 404)
    await expect_error(await client.delete(f"{BASE}/nowhere.example.com"), 404)


# If-Match ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
async def test_stale_if_match_is_412_and_changes_nothing(
    client: Client, etcd: RawEtcd, pki: Pki, method: str
) -> None:
    stale = etag(await put(client, HOST, pki.leaf(HOST)))
    current = etag(await put(client, HOST, pki.leaf(HOST), status=200))
    assert current != stale
    payload = pki.leaf(HOST).body() if method == "PUT" else None
    revision = await etcd.status()
    resp = await client.request(method, f"{BASE}/{HOST}", json=payload, headers={"If-Match": stale})
    await expect_error(resp, 412)
    assert await etcd.status() == revision
    resp = await client.request(
        method, f"{BASE}/{HOST}", json=payload, headers={"If-Match": current}
    )
    assert resp.status in (200, 204), await resp.text()


async def test_if_match_on_a_host_without_a_certificate_is_412(
    client: Client, etcd: RawEtcd, pki: Pki
) -> None:
    resp = await client.put(
        f"{BASE}/{HOST}", json=pki.leaf(HOST).body(), headers={"If-Match": '"5"'}
    )
    await expect_error(resp, 412)
    assert await dump(etcd) == {}


# bad input --------------------------------------------------------------------------------------


def bad_bodies(pki: Pki) -> list[tuple[str, Any, str]]:
    """(path host, body, what the 422 must say): one of each way a body is refused."""
    good = pki.leaf(HOST)
    stranger = Pki()  # its intermediate has our name, not our key
    encrypted = good.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    ).decode()
    broken_chain = cert_text(good.cert, stranger.inter)  # same issuer name, another key
    expired = pki.leaf(HOST, not_before=NOW - 90 * DAY, not_after=NOW - DAY)
    early = pki.leaf(HOST, not_before=NOW + DAY, not_after=NOW + 90 * DAY)
    wildcard = pki.leaf("*.example.com")
    return [
        ("Not A Host", good.body(), "host: "),  # the wording is model.hosts', as for domains
        ("10.0.0.1", good.body(), "is an IP address"),
        ("*.com", good.body(), "a wildcard needs at least two labels"),
        (HOST, {**good.body(), "certificate": "garbage"}, "certificate: is not PEM"),
        (HOST, {**good.body(), "private_key": "garbage"}, "private_key: is not PEM"),
        (
            HOST,
            {**good.body(), "private_key": encrypted},
            "private_key: the key must not be passphrase-protected",
        ),
        (
            HOST,
            {**good.body(), "private_key": key_text(ec.generate_private_key(ec.SECP256R1()))},
            "private_key: does not match the certificate",
        ),
        (
            "other.example.com",
            good.body(),
            "certificate: is for app.example.com, which does not cover 'other.example.com'",
        ),
        ("*.example.com", good.body(), "does not cover '*.example.com'"),
        ("a.b.example.com", wildcard.body(), "which does not cover 'a.b.example.com'"),
        (HOST, expired.body(), "certificate: expired at "),
        (HOST, early.body(), "certificate: is not valid until "),
        (
            HOST,
            {**good.body(), "certificate": broken_chain},
            "certificate: certificate 1's signature does not verify",
        ),
        (
            HOST,
            {**good.body(), "certificate": cert_text(good.cert, pki.root)},
            "certificate: certificate 2 of the chain did not issue certificate 1",
        ),
        (
            HOST,
            {**good.body(), "certificate": good.pem + good.key_pem},
            "certificate: holds a PRIVATE KEY block",
        ),
        (HOST, {"certificate": good.pem}, "private_key: is required"),
        (HOST, {"private_key": good.key_pem}, "certificate: is required"),
        (HOST, {**good.body(), "certificate": 7}, "certificate: must be a string, got a number"),
        (HOST, {**good.body(), "extra": "x"}, "extra: unknown field"),
        (HOST, [good.body()], "body: must be a JSON object, got an array"),
    ]


async def test_every_bad_body_is_422_naming_the_field_and_writes_nothing(
    client: Client, etcd: RawEtcd, pki: Pki
) -> None:
    cases = bad_bodies(pki)
    revision = await etcd.status()
    for host, payload, message in cases:
        resp = await client.put(f"{BASE}/{host}", json=payload)
        detail = await expect_error(resp, 422)
        assert message in detail, (host, message, detail)
        if message in ("is an IP address", "a wildcard needs at least two labels"):
            assert detail.startswith("host: "), detail
        sent_key = payload.get("private_key") if isinstance(payload, dict) else None
        for line in sent_key.splitlines() if isinstance(sent_key, str) else ():
            assert len(line) < 20 or line not in detail, "a 422 quoted the key"
        assert await etcd.status() == revision, message  # nothing written, not even a rewrite
    assert await dump(etcd) == {}


async def test_a_refused_replacement_keeps_the_stored_one(
    client: Client, etcd: RawEtcd, pki: Pki
) -> None:
    await put(client, HOST, pki.leaf(HOST))
    before = await dump(etcd)
    expired = pki.leaf(HOST, not_before=NOW - 90 * DAY, not_after=NOW - DAY)
    await expect_error(await client.put(f"{BASE}/{HOST}", json=expired.body()), 422)
    assert await dump(etcd) == before


async def test_bodies_past_the_size_limit_are_413(
    make_client: ClientFactory, etcd: RawEtcd, tmp_path: Path, pki: Pki
) -> None:
    small = await make_client(data_dir=tmp_path, max_body_bytes=4096)
    issued = pki.leaf(HOST)
    padded = {"certificate": issued.pem + "x" * 5000, "private_key": issued.key_pem}
    await expect_error(await small.put(f"{BASE}/{HOST}", json=padded), 413)
    assert await dump(etcd) == {}


# what routers read ------------------------------------------------------------------------------


async def test_certificates_for_router_returns_clear_keys(
    client: Client, etcd: RawEtcd, pki: Pki
) -> None:
    app, wild = pki.leaf(HOST), pki.leaf("*.example.com")
    await put(client, HOST, app)
    await put(client, "*.example.com", wild)
    found = await certificates_for_router(etcd, secrets_of(client))
    assert found == [("*.example.com", wild.pem, wild.key_pem), (HOST, app.pem, app.key_pem)]


async def test_certificates_for_router_skips_what_it_cannot_decrypt(
    client: Client, etcd: RawEtcd, pki: Pki
) -> None:
    await put(client, HOST, pki.leaf(HOST))
    other = Secrets(generate_key())
    good = pki.leaf("good.example.com")
    await put(client, "good.example.com", good)
    await etcd.put(keys.certificate("corrupt.example.com"), b"{not json")
    found = await certificates_for_router(etcd, secrets_of(client))
    assert [h for h, _, _ in found] == [HOST, "good.example.com"]
    assert await certificates_for_router(etcd, other) == []


# the routers' CA --------------------------------------------------------------------------------


def ca_of(pem: str) -> x509.Certificate:
    cert = x509.load_pem_x509_certificate(pem.encode())
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca
    assert basic.value.path_length == 1
    return cert


async def test_ca_pem_is_a_self_signed_ca_stable_across_calls_and_clients(
    make_client: ClientFactory, etcd: RawEtcd, tmp_path: Path
) -> None:
    first = await make_client(data_dir=tmp_path)
    second = await make_client(data_dir=tmp_path)
    assert await ca_certificate(etcd) is None
    resp = await first.get("/api/router/ca.pem")
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/x-pem-file"
    pem = await resp.text()
    cert = ca_of(pem)
    assert cert.subject.rfc4514_string() == "CN=lastbackend Local CA Root"
    for client in (first, second, first):
        assert await (await client.get("/api/router/ca.pem")).text() == pem
    assert await ca_certificate(etcd) == pem

    tree = await dump(etcd)
    assert list(tree) == [keys.ROUTER_CA]
    value = json.loads(tree[keys.ROUTER_CA])
    assert value["certificate"] == pem
    assert value["private_key"].startswith("gAAAAA")
    assert b"PRIVATE KEY" not in tree[keys.ROUTER_CA]
    ca = await ensure_ca(etcd, secrets_of(first))
    assert ca.certificate_pem == pem
    assert ca.private_key_pem.split("\n")[1].encode() not in tree[keys.ROUTER_CA]
    assert secrets_of(first).decrypt(value["private_key"]) == ca.private_key_pem


async def test_concurrent_first_calls_store_exactly_one_ca(client: Client, etcd: RawEtcd) -> None:
    secrets = secrets_of(client)
    made = await asyncio.gather(*(ensure_ca(etcd, secrets) for _ in range(10)))
    assert all(isinstance(ca, RouterCA) for ca in made)
    assert len({ca.certificate_pem for ca in made}) == 1
    assert len({ca.private_key_pem for ca in made}) == 1
    kv = await etcd.get(keys.ROUTER_CA)
    assert kv is not None
    assert kv.version == 1  # written once: the losers wrote nothing
    assert json.loads(kv.value)["certificate"] == made[0].certificate_pem


async def test_concurrent_first_requests_agree(make_client: ClientFactory, tmp_path: Path) -> None:
    clients = [await make_client(data_dir=tmp_path) for _ in range(2)]
    resps = await asyncio.gather(*(clients[i % 2].get("/api/router/ca.pem") for i in range(10)))
    assert {r.status for r in resps} == {200}
    assert len({await r.text() for r in resps}) == 1


async def test_the_ca_key_signs_for_its_certificate(client: Client, etcd: RawEtcd) -> None:
    ca = await ensure_ca(etcd, secrets_of(client))
    cert = ca_of(ca.certificate_pem)
    key = serialization.load_pem_private_key(ca.private_key_pem.encode(), None)
    assert key.public_key() == cert.public_key()
    assert "PRIVATE" not in repr(ca)


# auth and docs ----------------------------------------------------------------------------------


async def test_read_token_reads_but_cannot_write(
    make_client: ClientFactory, etcd: RawEtcd, tmp_path: Path, pki: Pki
) -> None:
    client = await make_client(admin_tokens=("a",), read_tokens=("r",), data_dir=tmp_path)
    admin = {"Authorization": "Bearer a"}
    read = {"Authorization": "Bearer r"}
    issued = pki.leaf(HOST)
    resp = await client.put(f"{BASE}/{HOST}", json=issued.body(), headers=admin)
    assert resp.status == 201, await resp.text()
    before = await dump(etcd)
    for method, payload in (("PUT", pki.leaf(HOST).body()), ("DELETE", None)):
        resp = await client.request(method, f"{BASE}/{HOST}", json=payload, headers=read)
        await expect_error(resp, 403)
        resp = await client.request(method, f"{BASE}/{HOST}", json=payload)
        await expect_error(resp, 401)
    assert await dump(etcd) == before
    resp = await client.get(f"{BASE}/{HOST}", headers=read)
    assert resp.status == 200
    assert (await resp.json())["private_key"] == "***"
    assert (await client.get(BASE, headers=read)).status == 200
    await expect_error(await client.get("/api/router/ca.pem"), 401)
    resp = await client.get("/api/router/ca.pem", headers=read)
    assert resp.status == 200
    ca_of(await resp.text())


async def test_openapi_documents_the_family(client: Client) -> None:
    spec = await (await client.get("/openapi.json")).json()
    assert set(spec["paths"][BASE]) == {"get"}
    assert set(spec["paths"][f"{BASE}/{{host}}"]) == {"get", "put", "delete"}
    schema = spec["components"]["schemas"]["Certificate"]
    assert schema["properties"]["private_key"]["enum"] == ["***"]
    ca = spec["paths"]["/api/router/ca.pem"]["get"]["responses"]["200"]["content"]
    assert list(ca) == ["application/x-pem-file"]
