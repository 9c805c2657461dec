"""Bearer tokens (DESIGN.md section 7): 401 without a valid token, 403 for a read token on a write.

Every refusal carries the one error shape of section 8, and a refused write leaves etcd untouched.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import dump

ADMIN = {"Authorization": "Bearer adm"}
READ = {"Authorization": "Bearer ro"}

pytestmark = pytest.mark.etcd


def assert_error(body: dict[str, Any], code: int) -> None:
    assert set(body) == {"errors"}, body
    assert len(body["errors"]) >= 1
    for error in body["errors"]:
        assert set(error) == {"code", "title", "detail"}, error
        assert isinstance(error["code"], int)
        assert error["title"].startswith("CF-")
        assert error["detail"]
    assert body["errors"][0]["code"] == code


@pytest.fixture
async def secured(make_client):
    return await make_client(admin_tokens=("adm",), read_tokens=("ro",))


async def create_project(client, name: str = "demo") -> dict[str, Any]:
    resp = await client.post("/api/projects", json={"name": name}, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    return await resp.json()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/projects"),
        ("POST", "/api/projects"),
        ("GET", "/api/projects/demo"),
        ("DELETE", "/api/projects/demo"),
    ],
)
async def test_no_header_is_401_with_a_challenge(secured, etcd, method, path):
    before = await dump(etcd)
    resp = await secured.request(method, path, json={"name": "x"} if method == "POST" else None)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].lower().startswith("bearer")
    assert resp.content_type == "application/json"
    assert_error(await resp.json(), 10002)
    assert await dump(etcd) == before


@pytest.mark.parametrize(
    "header",
    [
        "Bearer nope",
        "Bearer admx",
        "Bearer ad",
        "Bearer ",
        "Basic YWRtOmFkbQ==",
        "adm",
        "Token adm",
    ],
)
async def test_wrong_token_is_401(secured, etcd, header):
    resp = await secured.get("/api/projects", headers={"Authorization": header})
    assert resp.status == 401
    assert "WWW-Authenticate" in resp.headers
    assert_error(await resp.json(), 10002)
    resp = await secured.post(
        "/api/projects", json={"name": "x"}, headers={"Authorization": header}
    )
    assert resp.status == 401
    assert await dump(etcd) == {}


async def test_scheme_is_case_insensitive(secured):
    resp = await secured.get("/api/projects", headers={"Authorization": "bearer adm"})
    assert resp.status == 200


async def test_read_token_reads(secured):
    project = await create_project(secured)
    resp = await secured.get("/api/projects", headers=READ)
    assert resp.status == 200
    assert [p["name"] for p in (await resp.json())["resources"]] == ["demo"]
    resp = await secured.get(f"/api/projects/{project['id']}", headers=READ)
    assert resp.status == 200
    assert (await resp.json())["name"] == "demo"
    resp = await secured.get("/api/projects/demo", headers=READ)
    assert resp.status == 200


async def test_read_token_cannot_write_and_nothing_is_written(secured, etcd):
    project = await create_project(secured)
    before = await dump(etcd)
    assert before  # the project's keys
    attempts = [
        ("POST", "/api/projects", {"name": "other"}),
        ("PATCH", f"/api/projects/{project['id']}", {"name": "renamed"}),
        ("PATCH", "/api/projects/demo", {"description": "changed"}),
        ("PUT", "/api/projects/demo", {"name": "demo", "description": "changed"}),
        ("DELETE", f"/api/projects/{project['id']}", None),
        ("DELETE", "/api/projects/demo", None),
    ]
    for method, path, payload in attempts:
        resp = await secured.request(method, path, json=payload, headers=READ)
        assert resp.status == 403, (method, path, await resp.text())
        assert_error(await resp.json(), 10003)
        assert await dump(etcd) == before, (method, path)
    # still readable, unchanged
    resp = await secured.get("/api/projects/demo", headers=READ)
    assert resp.status == 200
    assert (await resp.json())["description"] == project["description"]


async def test_read_token_is_refused_before_the_body_is_looked_at(secured, etcd):
    # A malformed body with a read token is a 403, not a 400/422: auth comes first.
    resp = await secured.post(
        "/api/projects",
        data=b"{not json",
        headers={**READ, "Content-Type": "application/json"},
    )
    assert resp.status == 403
    assert await dump(etcd) == {}


async def test_admin_token_writes(secured, etcd):
    project = await create_project(secured)
    pid = project["id"]
    assert set(await dump(etcd)) == {
        "/lastbackend/helper/projects/demo",
        f"/lastbackend/projects/{pid}/meta",
    }
    resp = await secured.patch(f"/api/projects/{pid}", json={"name": "renamed"}, headers=ADMIN)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["name"] == "renamed"
    assert "/lastbackend/helper/projects/renamed" in await dump(etcd)
    resp = await secured.delete(f"/api/projects/{pid}", headers=ADMIN)
    assert resp.status == 204, await resp.text()
    assert await dump(etcd) == {}


async def test_several_tokens_per_role(make_client, etcd):
    client = await make_client(admin_tokens=("a1", "a2"), read_tokens=("r1", "r2"))
    for token in ("a1", "a2"):
        resp = await client.post(
            "/api/projects", json={"name": token}, headers={"Authorization": f"Bearer {token}"}
        )
        assert resp.status == 201, await resp.text()
    for token in ("r1", "r2"):
        headers = {"Authorization": f"Bearer {token}"}
        assert (await client.get("/api/projects", headers=headers)).status == 200
        resp = await client.post("/api/projects", json={"name": "x" + token}, headers=headers)
        assert resp.status == 403
    assert len(await dump(etcd)) == 4


async def test_read_tokens_only_means_no_one_writes(make_client, etcd):
    client = await make_client(read_tokens=("ro",))
    assert (await client.get("/api/projects")).status == 401
    assert (await client.get("/api/projects", headers=READ)).status == 200
    resp = await client.post("/api/projects", json={"name": "demo"}, headers=READ)
    assert resp.status == 403
    assert await dump(etcd) == {}


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/openapi.json"])
async def test_public_paths_need_no_token(secured, path):
    resp = await secured.get(path)
    assert resp.status == 200, await resp.text()


async def test_metrics_needs_a_token_when_auth_is_on(secured):
    resp = await secured.get("/metrics")
    assert resp.status == 401
    assert_error(await resp.json(), 10002)
    resp = await secured.get("/metrics", headers={"Authorization": "Bearer wrong"})
    assert resp.status == 401
    for headers in (READ, ADMIN):
        resp = await secured.get("/metrics", headers=headers)
        assert resp.status == 200
        assert "lastbackend_http_requests_total" in await resp.text()


async def test_refusals_are_counted_in_metrics(secured):
    await secured.get("/api/projects")
    await secured.post("/api/projects", json={"name": "x"}, headers=READ)
    text = await (await secured.get("/metrics", headers=READ)).text()
    assert 'method="GET",route="/api/projects",status="401"' in text
    assert 'method="POST",route="/api/projects",status="403"' in text


async def test_without_tokens_everything_works_without_a_header(api, etcd):
    resp = await api.post("/api/projects", json={"name": "demo"})
    assert resp.status == 201, await resp.text()
    pid = (await resp.json())["id"]
    assert (await api.get("/api/projects")).status == 200
    assert (await api.get(f"/api/projects/{pid}")).status == 200
    resp = await api.patch(f"/api/projects/{pid}", json={"description": "d"})
    assert resp.status == 200, await resp.text()
    for path in ("/healthz", "/readyz", "/openapi.json", "/metrics"):
        assert (await api.get(path)).status == 200, path
    assert (await api.delete(f"/api/projects/{pid}")).status == 204
    assert await dump(etcd) == {}


async def test_without_tokens_any_header_is_ignored(api):
    resp = await api.get("/api/projects", headers={"Authorization": "Bearer whatever"})
    assert resp.status == 200
