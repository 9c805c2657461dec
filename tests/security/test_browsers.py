"""Web pages cannot drive the API (issue 13, section 4, browsers).

The default install listens on loopback with no token, so the only thing between a web page in
the user's browser and the API is what the API checks itself. Each test plays a page's request
as the browser would send it: a "simple" cross-site POST (no preflight: a form or text/plain
body, or none), a DNS-rebound page (its own name in ``Host``, and since the browser believes it
is same-origin, no ``Origin`` on a GET), a page on another origin (its ``Origin``), and a CORS
preflight.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import ClientFactory, dump
from tests.support import RawEtcd

pytestmark = pytest.mark.etcd

Client = TestClient[Any, Any]
EVIL = "http://evil.example"
ROUTED_APP = "http://web.demo.lb.localhost:8080"  # a page the router serves: user code
DASHBOARD = "https://dash.example.com"
JSON = {"Content-Type": "application/json"}


def own(api: Client) -> str:
    return f"http://127.0.0.1:{api.port}"


async def detail(resp: Any) -> str:
    return " | ".join(e["detail"] for e in (await resp.json())["errors"])


async def unchanged(etcd: RawEtcd, before: tuple[int, dict[str, bytes]]) -> bool:
    return (await etcd.status(), await dump(etcd)) == before


async def snapshot(etcd: RawEtcd) -> tuple[int, dict[str, bytes]]:
    return await etcd.status(), await dump(etcd)


# JSON bodies say they are JSON -----------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},  # no Content-Type at all
        {"Content-Type": "text/plain"},
        {"Content-Type": "text/plain;charset=UTF-8"},  # fetch's default for a string body
        {"Content-Type": "application/x-www-form-urlencoded"},
        {"Content-Type": "multipart/form-data; boundary=x"},
        {"Content-Type": "application/octet-stream"},
        {"Content-Type": "application/json; charset=latin-1"},
        {"Content-Type": "application/jsonp"},
    ],
    ids=["none", "text", "text-utf8", "form", "multipart", "octet-stream", "latin1", "jsonp"],
)
async def test_a_json_body_without_the_json_content_type_is_a_415_and_writes_nothing(
    api: Client, etcd: RawEtcd, headers: dict[str, str]
) -> None:
    before = await snapshot(etcd)
    body = json.dumps({"name": "pwned"}).encode()
    # aiohttp would label bare bytes application/octet-stream: skip that to send no type at all
    skip = () if headers else ("Content-Type",)
    resp = await api.post("/api/projects", data=body, headers=headers, skip_auto_headers=skip)
    assert resp.status == 415, await resp.text()
    assert "Content-Type" in await detail(resp)
    assert "application/json" in await detail(resp)
    assert await unchanged(etcd, before)


async def test_json_with_a_utf8_charset_is_json(api: Client) -> None:
    resp = await api.post(
        "/api/projects",
        data=b'{"name": "demo"}',
        headers={"Content-Type": "application/json; charset=UTF-8"},
    )
    assert resp.status == 201, await resp.text()


# DNS rebinding: the Host header ------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["evil.example:2967", "evil.example", "127.0.0.1.nip.io", "localhost.evil.example", "localhos"],
)
async def test_a_page_under_a_foreign_name_is_refused_421(
    api: Client, etcd: RawEtcd, host: str
) -> None:
    """A rebound page: same-origin in its browser's eyes, so no Origin and no preflight."""
    await api.post("/api/projects", json={"name": "demo"})
    before = await snapshot(etcd)
    for method, path, body in (
        ("GET", "/api/projects", None),
        ("GET", "/api/events", None),
        ("POST", "/api/projects", {"name": "pwned"}),
        ("DELETE", "/api/projects/demo", None),
    ):
        resp = await api.request(method, path, json=body, headers={"Host": host})
        assert resp.status == 421, (method, path, await resp.text())
        text = await detail(resp)
        assert "Host" in text
        assert "api.hosts" in text
        assert "demo" not in await resp.text()
    assert await unchanged(etcd, before)


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "localhost:2967",
        "LOCALHOST:2967",
        "localhost.",
        "web.demo.lb.localhost:2967",
        "127.0.0.1:2967",
        "127.8.9.10",
        "[::1]:2967",
        "10.1.2.3:2967",  # an IP: a rebinding page always sends a name, never an address
    ],
)
async def test_loopback_names_and_addresses_are_answered(api: Client, host: str) -> None:
    resp = await api.get("/api/projects", headers={"Host": host})
    assert resp.status == 200, await resp.text()


async def test_api_hosts_adds_names_and_subdomains(make_client: ClientFactory) -> None:
    api = await make_client(api_hosts=("lb.example.com", "*.corp.example"))
    for host in ("lb.example.com", "lb.example.com:443", "api.corp.example", "a.b.corp.example"):
        resp = await api.get("/api/projects", headers={"Host": host})
        assert resp.status == 200, (host, await resp.text())
    for host in ("corp.example", "xlb.example.com", "lb.example.com.evil.example"):
        resp = await api.get("/api/projects", headers={"Host": host})
        assert resp.status == 421, host


async def test_a_malformed_host_is_a_400_naming_it(api: Client) -> None:
    for host in ("[::1", "a:b:c", "localhost:99999999"):
        resp = await api.get("/api/projects", headers={"Host": host})
        assert resp.status in (400, 421), (host, await resp.text())
        assert "Host" in await detail(resp)


# Origin: writes from another page ----------------------------------------------------------------


@pytest.mark.parametrize("origin", [EVIL, ROUTED_APP, "null", "http://127.0.0.1:1", "https://x"])
async def test_a_write_from_a_foreign_origin_is_a_403_and_writes_nothing(
    api: Client, etcd: RawEtcd, origin: str
) -> None:
    resp = await api.post("/api/projects", json={"name": "demo"})
    assert resp.status == 201
    resp = await api.post("/api/projects/demo/services", json={"name": "web"})
    assert resp.status == 201
    app = (await resp.json())["id"]
    before = await snapshot(etcd)
    attempts = [
        ("POST", "/api/projects", {"name": "pwned"}),
        ("PUT", "/api/projects/demo", {"name": "demo", "description": "pwned"}),
        ("PATCH", "/api/projects/demo", {"description": "pwned"}),
        ("DELETE", "/api/projects/demo", None),
        ("POST", f"/v3/apps/{app}/actions/start", None),  # a body-less "simple" POST
    ]
    for method, path, body in attempts:
        resp = await api.request(method, path, json=body, headers={"Origin": origin})
        assert resp.status == 403, (method, path, await resp.text())
        assert "Origin" in await detail(resp)
        assert "Access-Control-Allow-Origin" not in resp.headers
    # A form post, the classic cross-site request: refused for its origin before its type.
    resp = await api.post(
        "/api/projects",
        data={"name": "pwned"},
        headers={"Origin": origin, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert resp.status == 403
    assert await unchanged(etcd, before)


async def test_the_apis_own_origin_writes(api: Client) -> None:
    for origin in (own(api), f"http://localhost:{api.port}"):
        host = origin.removeprefix("http://")
        name = "a" if "127" in origin else "b"
        resp = await api.post(
            "/api/projects", json={"name": name}, headers={"Origin": origin, "Host": host}
        )
        assert resp.status == 201, (origin, await resp.text())


async def test_reads_from_a_foreign_origin_get_no_cors_headers(api: Client) -> None:
    """The browser then hides the answer from the page: nothing to read."""
    resp = await api.get("/api/projects", headers={"Origin": EVIL})
    assert resp.status == 200
    assert "Access-Control-Allow-Origin" not in resp.headers


# CORS -------------------------------------------------------------------------------------------


def preflight(origin: str, method: str = "POST", headers: str = "content-type") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }


async def test_cors_is_off_by_default(api: Client) -> None:
    resp = await api.options("/api/projects", headers=preflight(EVIL))
    assert resp.status == 403
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert "api.cors_origins" in await detail(resp)


async def test_listed_origins_get_preflight_answers_and_nobody_else(
    make_client: ClientFactory, etcd: RawEtcd
) -> None:
    api = await make_client(cors_origins=(DASHBOARD,), admin_tokens=("adm",))
    resp = await api.options(
        "/api/projects", headers=preflight(DASHBOARD, "PATCH", "authorization, content-type")
    )
    assert resp.status == 204, await resp.text()
    assert resp.headers["Access-Control-Allow-Origin"] == DASHBOARD
    assert "PATCH" in resp.headers["Access-Control-Allow-Methods"]
    allowed = resp.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed
    assert "content-type" in allowed
    assert "Origin" in resp.headers["Vary"]
    assert "Access-Control-Allow-Credentials" not in resp.headers  # bearer tokens, no cookies

    for origin in (EVIL, DASHBOARD + ":444", DASHBOARD.replace("https", "http"), "null"):
        resp = await api.options("/api/projects", headers=preflight(origin))
        assert resp.status == 403, origin
        assert "Access-Control-Allow-Origin" not in resp.headers
    resp = await api.options("/api/projects", headers=preflight(DASHBOARD, "TRACE"))
    assert resp.status == 403
    resp = await api.options("/api/projects", headers=preflight(DASHBOARD, headers="x-evil"))
    assert resp.status == 403
    assert "x-evil" in await detail(resp)

    # The listed origin's real requests work and are readable, errors and streams included.
    admin = {"Authorization": "Bearer adm", "Origin": DASHBOARD}
    resp = await api.post("/api/projects", json={"name": "demo"}, headers=admin)
    assert resp.status == 201, await resp.text()
    assert resp.headers["Access-Control-Allow-Origin"] == DASHBOARD
    assert "ETag" in resp.headers["Access-Control-Expose-Headers"]
    resp = await api.get("/api/projects/nope", headers=admin)
    assert resp.status == 404
    assert resp.headers["Access-Control-Allow-Origin"] == DASHBOARD
    resp = await api.get("/api/projects", headers={"Origin": DASHBOARD})
    assert resp.status == 401  # CORS is not a credential
    assert resp.headers["Access-Control-Allow-Origin"] == DASHBOARD
    async with api.get("/api/events?heartbeat=1", headers=admin) as stream:
        assert stream.status == 200
        assert stream.headers["Access-Control-Allow-Origin"] == DASHBOARD
    resp = await api.post("/api/projects", json={"name": "x"}, headers={**admin, "Origin": EVIL})
    assert resp.status == 403
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert "/lastbackend/helper/projects/x" not in await dump(etcd)
