"""``/healthz``, ``/readyz``, ``/metrics``, ``/openapi.json`` and the request id (DESIGN.md 2, 8).

The outage tests run on a private etcd so that stopping it never disturbs the session server.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from lastbackend.api.app import make_app
from lastbackend.api.openapi import documented_routes
from lastbackend.config import Settings
from lastbackend.store.embedded import EmbeddedEtcd
from lastbackend.store.etcd import Etcd
from tests.conftest import dump, new_etcd_server
from tests.support import RawEtcd

pytestmark = pytest.mark.etcd

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def assert_error(body: dict[str, Any], code: int) -> None:
    assert set(body) == {"errors"}, body
    assert body["errors"], body
    for error in body["errors"]:
        assert set(error) == {"code", "title", "detail"}, error
    assert body["errors"][0]["code"] == code


# --- liveness and readiness ----------------------------------------------------------------


async def test_healthz(api):
    resp = await api.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}


async def test_readyz_reports_the_etcd_revision(api, etcd):
    revision = await etcd.put("/lastbackend/probe", "x")
    resp = await api.get("/readyz")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ok"
    assert isinstance(body["etcd"]["revision"], int)
    assert body["etcd"]["revision"] >= revision


@pytest.fixture
def private_server(tmp_path: Path) -> Iterator[EmbeddedEtcd]:
    server = new_etcd_server(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
async def private(private_server: EmbeddedEtcd) -> AsyncIterator[tuple[TestClient[Any, Any], Etcd]]:
    settings = Settings(etcd_endpoints=(private_server.endpoint,), etcd_timeout=1.0)
    async with RawEtcd([private_server.endpoint], timeout=1.0) as etcd:
        client = TestClient(TestServer(make_app(settings, etcd)))
        await client.start_server()
        try:
            yield client, etcd
        finally:
            await client.close()


async def wait_status(client: TestClient[Any, Any], path: str, status: int, within: float) -> Any:
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        resp = await client.get(path)
        last = (resp.status, await resp.text())
        if resp.status == status:
            return await resp.json()
        await asyncio.sleep(0.1)
    raise AssertionError(f"{path} never answered {status} within {within}s; last: {last}")


async def test_readyz_follows_an_etcd_restart_and_no_data_is_lost(private, private_server):
    client, etcd = private
    resp = await client.post("/api/projects", json={"name": "before"})
    assert resp.status == 201, await resp.text()
    before = (await resp.json())["id"]
    kept = await dump(etcd)
    assert (await client.get("/readyz")).status == 200

    await asyncio.to_thread(private_server.stop)
    started = time.monotonic()
    resp = await client.get("/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body["status"] == "unavailable"
    assert body["etcd"]
    assert time.monotonic() - started < 5, "the etcd timeout bounds /readyz"
    assert (await client.get("/healthz")).status == 200, "liveness does not depend on etcd"

    await asyncio.to_thread(private_server.start)
    body = await wait_status(client, "/readyz", 200, within=15)
    assert body["etcd"]["revision"] > 0

    assert await dump(etcd) == kept
    resp = await client.get(f"/api/projects/{before}")
    assert resp.status == 200
    assert (await resp.json())["name"] == "before"
    resp = await client.post("/api/projects", json={"name": "after"})
    assert resp.status == 201, await resp.text()
    listed = await (await client.get("/api/projects")).json()
    assert [p["name"] for p in listed["resources"]] == ["after", "before"]


async def test_writes_while_etcd_is_down_are_503_and_write_nothing(private, private_server):
    client, etcd = private
    resp = await client.post("/api/projects", json={"name": "kept"})
    assert resp.status == 201
    pid = (await resp.json())["id"]
    kept = await dump(etcd)

    await asyncio.to_thread(private_server.stop)
    attempts = [
        ("POST", "/api/projects", {"name": "lost"}),
        ("PATCH", f"/api/projects/{pid}", {"name": "renamed"}),
        ("DELETE", f"/api/projects/{pid}", None),
        ("GET", f"/api/projects/{pid}", None),
        ("GET", "/api/projects", None),
    ]
    for method, path, payload in attempts:
        started = time.monotonic()
        resp = await client.request(method, path, json=payload)
        assert resp.status == 503, (method, path, await resp.text())
        assert resp.headers.get("Retry-After")
        assert resp.content_type == "application/json"
        assert_error(await resp.json(), 10015)
        assert "X-Request-ID" in resp.headers
        assert time.monotonic() - started < 5, (method, path)

    await asyncio.to_thread(private_server.start)
    await wait_status(client, "/readyz", 200, within=15)
    assert await dump(etcd) == kept, "nothing of the refused writes reached etcd"
    assert (await client.get(f"/api/projects/{pid}")).status == 200
    assert (await client.get("/api/projects/lost")).status == 404


# --- metrics ---------------------------------------------------------------------------------


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the one sample of ``name`` whose labels include ``labels``."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line[: line.rindex("}")]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_metrics_count_requests_by_route_template(api):
    resp = await api.post("/api/projects", json={"name": "demo"})
    pid = (await resp.json())["id"]
    for ref in (pid, "demo", "demo", "missing"):
        await api.get(f"/api/projects/{ref}")
    await api.get("/no/such/path")

    resp = await api.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()

    assert "# TYPE lastbackend_http_requests_total counter" in text
    route = "/api/projects/{project}"
    assert sample(text, "lastbackend_http_requests_total", route=route, status="200") == 3
    assert sample(text, "lastbackend_http_requests_total", route=route, status="404") == 1
    assert (
        sample(
            text,
            "lastbackend_http_requests_total",
            method="POST",
            route="/api/projects",
            status="201",
        )
        == 1
    )
    # raw paths never become labels: one series per route, whatever the id
    assert pid not in text
    assert 'route="/api/projects/demo"' not in text
    assert 'route="/no/such/path"' not in text

    assert "# TYPE lastbackend_http_request_duration_seconds histogram" in text
    buckets = [
        line
        for line in text.splitlines()
        if line.startswith("lastbackend_http_request_duration_seconds_bucket{")
        and f'route="{route}"' in line
    ]
    assert any('le="0.005"' in b for b in buckets), buckets
    assert any('le="+Inf"' in b for b in buckets), buckets
    assert (
        sample(
            text,
            "lastbackend_http_request_duration_seconds_bucket",
            method="GET",
            route=route,
            le="+Inf",
        )
        == 4
    )
    assert (
        sample(text, "lastbackend_http_request_duration_seconds_count", method="GET", route=route)
        == 4
    )


async def test_metrics_are_per_app(make_client):
    first = await make_client()
    second = await make_client()
    await first.get("/healthz")
    text = await (await second.get("/metrics")).text()
    assert sample(text, "lastbackend_http_requests_total", route="/healthz") is None


# --- OpenAPI -----------------------------------------------------------------------------------


async def test_openapi_matches_the_router(api):
    app = api.server.app
    resp = await api.get("/openapi.json")
    assert resp.status == 200
    spec = await resp.json()
    assert spec["openapi"].startswith("3.")

    routes = documented_routes(app)
    assert routes, "the router has routes"
    undocumented = [(m, p) for m, p, d in routes if d is None]
    assert undocumented == []
    for method, path, doc in routes:
        assert doc is not None, (method, path)
        assert doc.summary, (method, path)
        assert path in spec["paths"], path
        assert method.lower() in spec["paths"][path], (method, path)

    in_router = {(m.lower(), p) for m, p, _ in routes}
    for path, item in spec["paths"].items():
        for method in item:
            if method in HTTP_METHODS:
                assert (method, path) in in_router, (method, path)
            op = item[method]
            params = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert params == set(re.findall(r"{(\w+)}", path)), (method, path)


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


async def test_openapi_refs_resolve(api):
    spec = await (await api.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    found = list(refs(spec))
    assert found
    for ref in found:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in schemas, ref


# --- request id ---------------------------------------------------------------------------------


async def test_request_id_is_echoed(api):
    resp = await api.get("/healthz", headers={"X-Request-ID": "abc-123.x_y"})
    assert resp.headers["X-Request-ID"] == "abc-123.x_y"
    resp = await api.get("/api/projects/missing", headers={"X-Request-ID": "err-1"})
    assert resp.status == 404
    assert resp.headers["X-Request-ID"] == "err-1"


async def test_request_id_is_generated_when_absent_or_unusable(api):
    seen = set()
    for headers in ({}, {}, {"X-Request-ID": "bad id\twith spaces"}, {"X-Request-ID": "x" * 500}):
        resp = await api.get("/healthz", headers=headers)
        rid = resp.headers["X-Request-ID"]
        assert re.fullmatch(r"[A-Za-z0-9._-]{1,128}", rid), rid
        assert rid != headers.get("X-Request-ID")
        seen.add(rid)
    assert len(seen) == 4, "each request gets its own id"


async def test_request_id_on_refused_requests(make_client):
    client = await make_client(admin_tokens=("adm",))
    resp = await client.get("/api/projects", headers={"X-Request-ID": "r-401"})
    assert resp.status == 401
    assert resp.headers["X-Request-ID"] == "r-401"
