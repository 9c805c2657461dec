"""The dashboard's server side: ``/ui/`` (static files, their headers, no traversal),
``/api/whoami`` and ``/api/nodes`` (docs/dashboard.md), on a real etcd."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from lastbackend import codec
from lastbackend.api.dashboard import CSP
from lastbackend.controllers.leader import LeaderElection
from lastbackend.model.pods import Node
from lastbackend.store import keys

pytestmark = pytest.mark.etcd

ADMIN = {"Authorization": "Bearer adm"}
READ = {"Authorization": "Bearer ro"}


@pytest.fixture
async def secured(make_client):
    return await make_client(admin_tokens=("adm",), read_tokens=("ro",))


# --- static files ------------------------------------------------------------------------------


async def test_the_page_is_public_with_a_strict_policy(secured):
    resp = await secured.get("/ui/")  # no token: the page holds no data
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    assert resp.headers["Content-Security-Policy"] == CSP
    assert "default-src 'none'" in CSP
    assert "frame-ancestors 'none'" in CSP
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    html = await resp.text()
    assert '<script type="module" src="app.js">' in html


async def test_bare_ui_redirects_to_the_page(api):
    resp = await api.get("/ui", allow_redirects=False)
    assert resp.status == 308
    assert resp.headers["Location"] == "/ui/"


async def test_modules_are_javascript_and_cached_by_etag(api):
    resp = await api.get("/ui/app.js")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/javascript; charset=utf-8"
    tag = resp.headers["ETag"]
    again = await api.get("/ui/app.js", headers={"If-None-Match": tag})
    assert again.status == 304
    assert await again.read() == b""
    assert (await api.get("/ui/style.css")).headers["Content-Type"] == "text/css; charset=utf-8"


async def test_every_module_imported_is_served_and_nothing_is_external(api):
    """Walk the imports from app.js: each is served, and no file names another origin."""
    seen: set[str] = set()
    todo = ["app.js"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        resp = await api.get(f"/ui/{name}")
        assert resp.status == 200, name
        text = await resp.text()
        assert not re.search(r"https?://", text), name
        base = name.rpartition("/")[0]
        for found in re.findall(r"""from\s+['"](\.{1,2}/[^'"]+)['"]""", text):
            parts = [*(base.split("/") if base else []), *found.split("/")]
            path: list[str] = []
            for part in parts:
                if part == "..":
                    path.pop()
                elif part != ".":
                    path.append(part)
            todo.append("/".join(path))
    assert len(seen) > 5, seen
    index = await (await api.get("/ui/")).text()
    preloaded = set(re.findall(r'<link rel="modulepreload" href="([^"]+)">', index))
    assert preloaded == seen - {"app.js"}, "index.html preloads every module, and only those"


@pytest.mark.parametrize(
    "path",
    [
        "/ui/../pyproject.toml",
        "/ui/%2e%2e/dashboard.py",
        "/ui/..%2fdashboard.py",
        "/ui/pages/../../dashboard.py",
        "/ui/%2e%2e%2f%2e%2e%2fapp.py",
        "/ui//etc/passwd",
        "/ui/nope.js",
        "/ui/app.js%00.html",
        "/ui/app.js/",
    ],
)
async def test_no_path_leaves_the_dashboard(api, path):
    resp = await api.get(path, allow_redirects=False)
    assert resp.status in (404, 400), (path, resp.status)
    body = await resp.read()
    assert b"import" not in body, path


# --- whoami --------------------------------------------------------------------------------------


async def test_whoami_without_auth(api):
    resp = await api.get("/api/whoami")
    assert resp.status == 200
    assert await resp.json() == {"auth": False, "role": "admin"}


async def test_whoami_with_tokens(secured):
    anonymous = await secured.get("/api/whoami")
    assert anonymous.status == 200
    assert await anonymous.json() == {"auth": True, "role": None}
    assert await (await secured.get("/api/whoami", headers=ADMIN)).json() == {
        "auth": True,
        "role": "admin",
    }
    assert await (await secured.get("/api/whoami", headers=READ)).json() == {
        "auth": True,
        "role": "read",
    }
    wrong = await secured.get("/api/whoami", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    assert (await wrong.json())["errors"][0]["detail"] == "the bearer token is not valid"


async def test_the_exemptions_open_nothing_else(secured):
    """``/ui/`` and whoami answer without a token; the API next to them still needs one."""
    assert (await secured.get("/api/projects")).status == 401
    assert (await secured.get("/ui/../api/projects")).status == 401
    assert (await secured.get("/api/nodes")).status == 401


# --- nodes ---------------------------------------------------------------------------------------


async def test_nodes_lists_agents_and_lost_ones(secured, etcd):
    node = Node("n1", "host-1", 2048, 2, "24.0", datetime(2026, 12, 4, tzinfo=UTC))
    await etcd.put(keys.node("n1"), codec.dumps(node).decode())
    await etcd.put(keys.pod_spec("n1", "p1"), "{}")
    await etcd.put(keys.pod_spec("n1", "p2"), "{}")
    await etcd.put(keys.pod_spec("gone", "p3"), "{}")
    resp = await secured.get("/api/nodes", headers=READ)
    assert resp.status == 200
    body = await resp.json()
    assert body["pagination"]["total_results"] == 2
    first, second = body["resources"]
    assert (first["name"], first["state"], first["pods"]) == ("gone", "lost", 1)
    assert (second["name"], second["state"], second["pods"]) == ("n1", "ready", 2)
    assert (second["memory"], second["hostname"]) == (2048, "host-1")
    reverse = await (await secured.get("/api/nodes?order_by=-name", headers=READ)).json()
    assert [n["name"] for n in reverse["resources"]] == ["n1", "gone"]


async def test_nodes_empty(api):
    body = await (await api.get("/api/nodes")).json()
    assert body["resources"] == []


# --- leaders -------------------------------------------------------------------------------------


async def test_leaders_are_read_from_the_election_keys(secured, etcd):
    election = LeaderElection(etcd, "services", identity="host-a/42/cafe", ttl=5)
    await election.campaign()
    try:
        resp = await secured.get("/api/leaders", headers=READ)
        assert resp.status == 200
        body = await resp.json()
        assert [(x["name"], x["leader"]) for x in body["resources"]] == [
            ("services", "host-a/42/cafe")
        ]
        assert body["resources"][0]["since_revision"] == election.term
    finally:
        await election.resign()
    after = await (await secured.get("/api/leaders", headers=READ)).json()
    assert after["resources"] == []  # a resigned leader's key goes with its lease
    assert (await secured.get("/api/leaders")).status == 401
