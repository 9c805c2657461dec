"""``/api/projects`` against a real etcd: the five actions of seed 001, ETags and the raw key tree.

Every assertion about storage reads etcd directly (``dump`` or a snapshot with mod revisions), so
these tests check what an admin with ``etcdctl`` would see, not only what the API says.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from lastbackend import codec
from lastbackend.model.platform import Meta
from lastbackend.secrets import is_token
from lastbackend.store import keys
from tests.conftest import ClientFactory, dump
from tests.support import RawEtcd

pytestmark = pytest.mark.etcd

Client = TestClient[Any, Any]
Snapshot = dict[str, tuple[bytes, int]]

ROOT = "/lastbackend/"
HELPER = "/lastbackend/helper/projects/"
PROJECTS = "/lastbackend/projects/"
RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


# helpers ----------------------------------------------------------------------------------------


async def create_project(api: Client, name: str, description: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"name": name}
    if description is not None:
        payload["description"] = description
    resp = await api.post("/api/projects", json=payload)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def create_service(api: Client, project: str, name: str, **fields: Any) -> dict[str, Any]:
    resp = await api.post(f"/api/projects/{project}/services", json={"name": name, **fields})
    assert resp.status == 201, await resp.text()
    return await resp.json()


def etag(resp: ClientResponse) -> int:
    raw = resp.headers["ETag"]
    assert raw.startswith('"'), f"ETag {raw!r} is not a quoted string"
    assert raw.endswith('"'), f"ETag {raw!r} is not a quoted string"
    return int(raw[1:-1])


async def expect_error(resp: ClientResponse, status: int) -> str:
    """Check the status and DESIGN.md section 8's error shape; return the details, joined."""
    assert resp.status == status, await resp.text()
    errors = (await resp.json())["errors"]
    assert errors
    for error in errors:
        assert set(error) == {"code", "title", "detail"}
        assert isinstance(error["code"], int)
        assert error["title"].startswith("CF-")
    return "; ".join(e["detail"] for e in errors)


async def snapshot(etcd: RawEtcd, prefix: str = ROOT) -> Snapshot:
    """Every key with its value and mod revision: equal snapshots mean nothing was written."""
    return {kv.key: (kv.value, kv.mod_revision) for kv in (await etcd.range(prefix)).kvs}


def parse_time(value: str) -> datetime:
    assert RFC3339_UTC.fullmatch(value), f"{value!r} is not RFC 3339 UTC like 2026-01-01T00:00:00Z"
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def assert_recent(value: str) -> None:
    moment = parse_time(value)
    assert abs(datetime.now(UTC) - moment) < timedelta(minutes=1), value


def query_of(link: dict[str, str] | None) -> dict[str, str]:
    assert link is not None
    return {k: v[0] for k, v in parse_qs(urlsplit(link["href"]).query).items()}


async def backdate(etcd: RawEtcd, pid: str) -> None:
    """Rewrite the project's meta as if it had been created and last changed long ago."""
    key = f"{PROJECTS}{pid}/meta"
    kv = await etcd.get(key)
    assert kv is not None
    meta = codec.loads(kv.value, Meta)
    await etcd.put(key, codec.dumps(Meta(meta.name, LONG_AGO, LONG_AGO, meta.description)))


def is_compact_json(raw: bytes) -> bool:
    return raw == json.dumps(json.loads(raw), separators=(",", ":"), ensure_ascii=False).encode()


# create and read --------------------------------------------------------------------------------


async def test_create_returns_location_and_etag_of_the_meta_key(api: Client, etcd: RawEtcd) -> None:
    resp = await api.post("/api/projects", json={"name": "demo", "description": "a demo"})
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    pid = body["id"]
    assert str(uuid.UUID(pid)) == pid
    assert body["name"] == "demo"
    assert body["description"] == "a demo"
    assert_recent(body["created"])
    assert body["updated"] == body["created"]
    assert resp.headers["Location"] == f"/api/projects/{pid}"
    meta = await etcd.get(f"{PROJECTS}{pid}/meta")
    assert meta is not None
    assert etag(resp) == meta.mod_revision

    again = await api.get(resp.headers["Location"])
    assert again.status == 200
    assert (await again.json()) == body
    assert etag(again) == meta.mod_revision


@pytest.mark.parametrize("by", ["id", "name"])
async def test_get_by_id_and_by_name(api: Client, by: str) -> None:
    created = await create_project(api, "demo", "first")
    await create_project(api, "demo2", "second")
    ref = created["id"] if by == "id" else "demo"

    resp = await api.get(f"/api/projects/{ref}")
    assert resp.status == 200
    body = await resp.json()
    assert body == created
    assert body["links"]["self"]["href"] == f"/api/projects/{created['id']}"
    assert body["links"]["services"]["href"] == f"/api/projects/{created['id']}/services"


@pytest.mark.parametrize("ref", ["nope", "3f1c2b1e-0000-4000-8000-000000000000"])
async def test_get_missing_project_is_404(api: Client, ref: str) -> None:
    await create_project(api, "demo")
    detail = await expect_error(await api.get(f"/api/projects/{ref}"), 404)
    assert ref in detail


async def test_duplicate_name_is_409_and_writes_nothing(api: Client, etcd: RawEtcd) -> None:
    await create_project(api, "demo")
    before = await snapshot(etcd)
    detail = await expect_error(await api.post("/api/projects", json={"name": "demo"}), 409)
    assert "demo" in detail
    assert await snapshot(etcd) == before


async def test_concurrent_creates_of_one_name_make_one_project(api: Client, etcd: RawEtcd) -> None:
    responses = await asyncio.gather(
        *(api.post("/api/projects", json={"name": "demo", "description": str(i)}) for i in range(8))
    )
    statuses = sorted(r.status for r in responses)
    assert statuses == [201] + [409] * 7
    (winner,) = [await r.json() for r in responses if r.status == 201]
    raw = await dump(etcd)
    assert raw[f"{HELPER}demo"] == winner["id"].encode()
    assert [k for k in raw if k.endswith("/meta")] == [f"{PROJECTS}{winner['id']}/meta"]


@pytest.mark.parametrize(
    "payload",
    [
        {"name": "3f1c2b1e-0000-4000-8000-000000000000"},
        {"name": "Demo"},
        {"name": "demo/evil"},
        {"name": "demo", "created": "2020-01-01T00:00:00Z"},
        {"description": "no name"},
    ],
)
async def test_bad_create_is_422_and_writes_nothing(
    api: Client, etcd: RawEtcd, payload: dict[str, Any]
) -> None:
    await expect_error(await api.post("/api/projects", json=payload), 422)
    assert await dump(etcd) == {}


async def test_a_second_api_process_sees_renames_and_deletes(
    make_client: ClientFactory, etcd: RawEtcd
) -> None:
    """Each API process keeps its own name cache; another process's writes must not fool it."""
    a = await make_client()
    b = await make_client()
    old = (await create_project(a, "demo"))["id"]
    assert (await (await a.get("/api/projects/demo")).json())["id"] == old

    assert (await b.patch("/api/projects/demo", json={"name": "prod"})).status == 200
    new = (await create_project(b, "demo"))["id"]
    assert (await (await a.get("/api/projects/demo")).json())["id"] == new
    assert (await (await a.get("/api/projects/prod")).json())["id"] == old

    assert (await b.delete("/api/projects/demo")).status == 204
    await expect_error(await a.get("/api/projects/demo"), 404)
    resp = await a.patch("/api/projects/demo", json={"description": "x"})
    await expect_error(resp, 404)
    assert set(await dump(etcd)) == {f"{HELPER}prod", f"{PROJECTS}{old}/meta"}


# list -------------------------------------------------------------------------------------------


async def test_list_in_name_order(api: Client) -> None:
    for name in ("charlie", "alpha", "bravo"):
        await create_project(api, name)
    # Services add helper keys under helper/projects/<pid>/: they must not show up as projects.
    await create_service(api, "alpha", "web")

    resp = await api.get("/api/projects")
    assert resp.status == 200
    body = await resp.json()
    assert [p["name"] for p in body["resources"]] == ["alpha", "bravo", "charlie"]
    pagination = body["pagination"]
    assert pagination["total_results"] == 3
    assert pagination["total_pages"] == 1
    assert pagination["next"] is None
    assert pagination["previous"] is None
    assert int(resp.headers["X-Etcd-Revision"]) > 0


async def test_list_paginates_in_descending_name_order(api: Client) -> None:
    names = ["alpha", "bravo", "charlie", "delta", "echo"]
    for name in names:
        await create_project(api, name)
    wanted = sorted(names, reverse=True)

    seen: list[str] = []
    for page in (1, 2, 3):
        resp = await api.get(f"/api/projects?page={page}&per_page=2&order_by=-name")
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        pagination = body["pagination"]
        assert pagination["total_results"] == 5
        assert pagination["total_pages"] == 3
        assert query_of(pagination["first"])["page"] == "1"
        assert query_of(pagination["last"])["page"] == "3"
        for link in ("first", "last"):
            assert query_of(pagination[link])["per_page"] == "2"
            assert query_of(pagination[link])["order_by"] == "-name"
        if page < 3:
            assert query_of(pagination["next"]) == {
                "page": str(page + 1),
                "per_page": "2",
                "order_by": "-name",
            }
        else:
            assert pagination["next"] is None
        if page > 1:
            assert query_of(pagination["previous"])["page"] == str(page - 1)
            assert query_of(pagination["previous"])["order_by"] == "-name"
        else:
            assert pagination["previous"] is None
        seen += [p["name"] for p in body["resources"]]
        assert len(body["resources"]) == (2 if page < 3 else 1)
    assert seen == wanted


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("per_page=0", "per_page"),
        ("order_by=bogus", "order_by"),
        ("page=0", "page"),
        ("per_page=abc", "per_page"),
    ],
)
async def test_list_rejects_bad_paging(api: Client, query: str, parameter: str) -> None:
    await create_project(api, "demo")
    detail = await expect_error(await api.get(f"/api/projects?{query}"), 400)
    assert parameter in detail


# update -----------------------------------------------------------------------------------------


async def test_patch_description_keeps_name_and_created(api: Client, etcd: RawEtcd) -> None:
    pid = (await create_project(api, "demo", "old"))["id"]
    await backdate(etcd, pid)

    resp = await api.patch(f"/api/projects/{pid}", json={"description": "new"})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["name"] == "demo"
    assert body["description"] == "new"
    assert parse_time(body["created"]) == LONG_AGO
    assert_recent(body["updated"])

    stored = json.loads((await dump(etcd))[f"{PROJECTS}{pid}/meta"])
    assert stored == {k: body[k] for k in ("name", "created", "updated", "description")}
    meta = await etcd.get(f"{PROJECTS}{pid}/meta")
    assert meta is not None
    assert etag(resp) == meta.mod_revision
    assert (await (await api.get("/api/projects/demo")).json())["description"] == "new"


async def test_patch_rename_moves_the_helper_key(api: Client, etcd: RawEtcd) -> None:
    pid = (await create_project(api, "demo", "kept"))["id"]
    await create_service(api, "demo", "web")
    assert (await api.get("/api/projects/demo")).status == 200  # warm any name cache

    resp = await api.patch("/api/projects/demo", json={"name": "prod"})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["id"] == pid
    assert body["name"] == "prod"
    assert body["description"] == "kept"

    await expect_error(await api.get("/api/projects/demo"), 404)
    renamed = await api.get("/api/projects/prod")
    assert renamed.status == 200
    assert (await renamed.json())["id"] == pid
    services = await api.get("/api/projects/prod/services/web")
    assert services.status == 200

    raw = await dump(etcd)
    assert f"{HELPER}demo" not in raw
    assert raw[f"{HELPER}prod"] == pid.encode()
    assert json.loads(raw[f"{PROJECTS}{pid}/meta"])["name"] == "prod"
    # The old name is free again and names a different project.
    other = await create_project(api, "demo")
    assert other["id"] != pid
    assert (await (await api.get("/api/projects/demo")).json())["id"] == other["id"]


async def test_put_replaces_every_field(api: Client, etcd: RawEtcd) -> None:
    created = await create_project(api, "demo", "described")

    resp = await api.put("/api/projects/demo", json={"name": "demo", "description": "other"})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["description"] == "other"

    resp = await api.put("/api/projects/demo", json={"name": "demo"})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["description"] == ""
    assert body["created"] == created["created"]
    stored = json.loads((await dump(etcd))[f"{PROJECTS}{created['id']}/meta"])
    assert stored["description"] == ""

    before = await snapshot(etcd)
    await expect_error(await api.put("/api/projects/demo", json={"description": "x"}), 422)
    assert await snapshot(etcd) == before


async def test_patch_that_changes_nothing_writes_nothing(api: Client, etcd: RawEtcd) -> None:
    pid = (await create_project(api, "demo", "same"))["id"]
    await backdate(etcd, pid)
    first = await api.get(f"/api/projects/{pid}")
    before = await snapshot(etcd)

    for change in ({"description": "same"}, {"name": "demo"}, {}):
        resp = await api.patch(f"/api/projects/{pid}", json=change)
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert etag(resp) == etag(first)
        assert body["updated"] == (await first.json())["updated"]
        assert parse_time(body["updated"]) == LONG_AGO
    put = await api.put(f"/api/projects/{pid}", json={"name": "demo", "description": "same"})
    assert put.status == 200
    assert etag(put) == etag(first)
    assert await snapshot(etcd) == before


async def test_patch_refuses_unknown_or_mistyped_fields(api: Client, etcd: RawEtcd) -> None:
    await create_project(api, "demo")
    before = await snapshot(etcd)
    for change in ({"created": "2020-01-01T00:00:00Z"}, {"description": 5}, {"name": None}):
        await expect_error(await api.patch("/api/projects/demo", json=change), 422)
    await expect_error(await api.patch("/api/projects/demo", json=["name"]), 422)
    assert await snapshot(etcd) == before


async def test_if_match_with_a_stale_etag_is_412_and_writes_nothing(
    api: Client, etcd: RawEtcd
) -> None:
    created = await api.post("/api/projects", json={"name": "demo"})
    stale = etag(created)
    changed = await api.patch("/api/projects/demo", json={"description": "moved on"})
    assert etag(changed) > stale
    before = await snapshot(etcd)

    headers = {"If-Match": f'"{stale}"'}
    patch = await api.patch("/api/projects/demo", json={"description": "lost"}, headers=headers)
    await expect_error(patch, 412)
    put = await api.put("/api/projects/demo", json={"name": "demo"}, headers=headers)
    await expect_error(put, 412)
    await expect_error(await api.delete("/api/projects/demo", headers=headers), 412)

    assert await snapshot(etcd) == before
    assert (await (await api.get("/api/projects/demo")).json())["description"] == "moved on"


async def test_if_match_with_the_current_etag_succeeds(api: Client, etcd: RawEtcd) -> None:
    pid = (await create_project(api, "demo"))["id"]
    current = etag(await api.get(f"/api/projects/{pid}"))

    resp = await api.patch(
        f"/api/projects/{pid}", json={"description": "ok"}, headers={"If-Match": f'"{current}"'}
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["description"] == "ok"
    assert etag(resp) > current

    gone = await api.delete(f"/api/projects/{pid}", headers={"If-Match": resp.headers["ETag"]})
    assert gone.status == 204
    assert await dump(etcd) == {}


# delete -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["id", "name"])
async def test_delete_by_id_and_by_name(api: Client, etcd: RawEtcd, by: str) -> None:
    pid = (await create_project(api, "demo"))["id"]
    await create_service(api, "demo", "web", config={"image": "library/nginx:1.27"})
    ref = pid if by == "id" else "demo"

    resp = await api.delete(f"/api/projects/{ref}")
    assert resp.status == 204
    for path in (f"/api/projects/{pid}", "/api/projects/demo", "/api/projects/demo/services"):
        await expect_error(await api.get(path), 404)
    await expect_error(await api.delete(f"/api/projects/{ref}"), 404)
    assert await dump(etcd) == {}
    listed = await (await api.get("/api/projects")).json()
    assert listed["resources"] == []
    assert listed["pagination"]["total_results"] == 0


def keys_of(raw: Snapshot, name: str, pid: str) -> Snapshot:
    """The project's keys: its name, its subtree, ``helper/apps/<sid> -> <pid>`` and the hosts
    its services hold (``helper/domains/<host> -> <pid>:<sid>``)."""
    return {
        k: v
        for k, v in raw.items()
        if k == f"{HELPER}{name}"
        or f"/{pid}/" in k
        or v[0] == pid.encode()
        or v[0].startswith(f"{pid}:".encode())
    }


async def test_deleting_demo_leaves_demo2_untouched(api: Client, etcd: RawEtcd) -> None:
    demo = (await create_project(api, "demo"))["id"]
    demo2 = (await create_project(api, "demo2"))["id"]
    for name, pid in (("demo", demo), ("demo2", demo2)):
        await create_service(api, pid, "web", config={"image": "library/nginx:1.27"})
        await create_service(api, pid, "db", domains={f"db.{name}.example.com": True})
    before = keys_of(await snapshot(etcd), "demo2", demo2)
    assert f"{keys.HELPER_DOMAINS}db.demo2.example.com" in before
    assert f"{HELPER}demo2" in before
    assert f"{HELPER}{demo2}/services/web" in before
    assert len([k for k in before if k.startswith("/lastbackend/helper/apps/")]) == 2
    assert len([k for k in before if k.startswith(f"{PROJECTS}{demo2}/services/")]) > 2

    assert (await api.delete("/api/projects/demo")).status == 204

    after = await snapshot(etcd)
    assert after == before
    assert not [k for k in after if demo in k or k == f"{HELPER}demo"]
    listed = await (await api.get("/api/projects/demo2/services")).json()
    assert sorted(s["name"] for s in listed["resources"]) == ["db", "web"]


async def test_rename_to_a_taken_name_is_409_and_changes_nothing(
    api: Client, etcd: RawEtcd
) -> None:
    demo = (await create_project(api, "demo"))["id"]
    prod = (await create_project(api, "prod"))["id"]
    before = await snapshot(etcd)

    detail = await expect_error(await api.patch("/api/projects/demo", json={"name": "prod"}), 409)
    assert "prod" in detail
    await expect_error(await api.put(f"/api/projects/{demo}", json={"name": "prod"}), 409)

    assert await snapshot(etcd) == before
    assert (await (await api.get("/api/projects/demo")).json())["id"] == demo
    assert (await (await api.get("/api/projects/prod")).json())["id"] == prod


async def test_concurrent_renames_to_one_name_let_one_win(api: Client, etcd: RawEtcd) -> None:
    ids = [(await create_project(api, f"p{i}"))["id"] for i in range(6)]
    responses = await asyncio.gather(
        *(api.patch(f"/api/projects/{pid}", json={"name": "prod"}) for pid in ids)
    )
    assert sorted(r.status for r in responses) == [200] + [409] * 5
    (winner,) = [pid for pid, r in zip(ids, responses, strict=True) if r.status == 200]
    raw = await dump(etcd)
    names = {
        k.removeprefix(HELPER): v.decode()
        for k, v in raw.items()
        if k.startswith(HELPER) and "/" not in k.removeprefix(HELPER)
    }
    assert names["prod"] == winner
    assert len(names) == 6
    assert sorted(names.values()) == sorted(ids)
    for pid in ids:
        meta = json.loads(raw[f"{PROJECTS}{pid}/meta"])
        assert names[meta["name"]] == pid


async def test_rename_to_a_uuid_is_422_and_changes_nothing(api: Client, etcd: RawEtcd) -> None:
    other = (await create_project(api, "other"))["id"]
    await create_project(api, "demo")
    before = await snapshot(etcd)

    for name in (str(uuid.uuid4()), other):
        detail = await expect_error(await api.patch("/api/projects/demo", json={"name": name}), 422)
        assert "name" in detail
    assert await snapshot(etcd) == before


# the raw key tree -------------------------------------------------------------------------------


async def test_key_layout_is_exactly_the_documented_tree(api: Client, etcd: RawEtcd) -> None:
    pid = (await create_project(api, "demo", "the demo"))["id"]
    config = {
        "image": "library/nginx:1.27",
        "replicas": 2,
        "memory": 64,
        "command": "nginx -g 'daemon off;'",
        "ports": {"80/TCP": 8080},
        "env": {"MODE": "prod"},
        "volumes": {"data": "/var/lib/data"},
    }
    source = {"hub": "github.com", "owner": "lastbackend", "repo": "proxy", "branch": "dev"}
    domains = {"web.example.com": True, "old.example.com": False}
    sid = (await create_service(api, "demo", "web", config=config, source=source, domains=domains))[
        "id"
    ]

    raw = await dump(etcd)
    service = f"{PROJECTS}{pid}/services/{sid}"
    assert set(raw) == {
        f"{HELPER}demo",
        f"{PROJECTS}{pid}/meta",
        f"{HELPER}{pid}/services/web",
        f"{service}/meta",
        f"{service}/config",
        f"{service}/source",
        f"{service}/domains",
        f"{service}/image",
        f"/lastbackend/helper/apps/{sid}",
        "/lastbackend/helper/domains/web.example.com",
        "/lastbackend/helper/domains/old.example.com",
    }
    # helper keys hold the bare id; a held host (routed or not) its <pid>:<sid>
    for host in domains:
        assert raw[f"/lastbackend/helper/domains/{host}"] == f"{pid}:{sid}".encode()
    assert raw[f"{HELPER}demo"] == pid.encode()
    assert raw[f"/lastbackend/helper/apps/{sid}"] == pid.encode()
    assert raw[f"{HELPER}{pid}/services/web"] == sid.encode()
    # the image key is the bare image reference, not a JSON string
    assert raw[f"{service}/image"] == config["image"].encode()

    for key, value in raw.items():
        if key.startswith(PROJECTS) and not key.endswith("/image"):
            assert is_compact_json(value), f"{key} is not compact JSON: {value!r}"

    project_meta = json.loads(raw[f"{PROJECTS}{pid}/meta"])
    assert set(project_meta) == {"name", "created", "updated", "description"}
    assert project_meta["name"] == "demo"
    assert project_meta["description"] == "the demo"
    assert_recent(project_meta["created"])
    assert_recent(project_meta["updated"])

    service_meta = json.loads(raw[f"{service}/meta"])
    assert set(service_meta) == {"name", "created", "updated", "description"}
    assert service_meta["name"] == "web"
    assert_recent(service_meta["created"])

    stored_config = json.loads(raw[f"{service}/config"])
    assert set(stored_config) == {
        "image",
        "name",
        "replicas",
        "memory",
        "command",
        "ports",
        "env",
        "volumes",
    }
    # env values are stored encrypted (names readable), every other field as sent
    assert set(stored_config["env"]) == set(config["env"])
    assert all(is_token(v) for v in stored_config["env"].values())
    assert {k: stored_config[k] for k in config if k != "env"} == {
        k: v for k, v in config.items() if k != "env"
    }
    assert json.loads(raw[f"{service}/source"]) == source
    assert json.loads(raw[f"{service}/domains"]) == domains
