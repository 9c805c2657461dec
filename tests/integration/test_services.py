"""``/api/projects/{project}/services`` against a real etcd: the service, its parts, its children.

Containers and builds are written straight into etcd, as the node agent and the build controller
will write them, and read back through the API.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from lastbackend import codec
from lastbackend.config import Settings
from lastbackend.model.platform import Build, Container, Meta, ServiceConfig
from lastbackend.secrets import Secrets, generate_key, is_token
from lastbackend.store import keys
from lastbackend.store.embedded import EmbeddedEtcd
from tests.conftest import dump
from tests.support import RawEtcd

pytestmark = pytest.mark.etcd

Client = TestClient[Any, Any]
Snapshot = dict[str, tuple[bytes, int]]

ROOT = "/lastbackend/"
HELPER = "/lastbackend/helper/projects/"
PROJECTS = "/lastbackend/projects/"
WHEN = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)

CONFIG: dict[str, Any] = {
    "image": "library/nginx:1.27",
    "replicas": 2,
    "memory": 64,
    "command": "nginx",
    "ports": {"80/TCP": 8080},
    "env": {"MODE": "prod"},
    "volumes": {"data": "/var/lib/data"},
}
SOURCE: dict[str, Any] = {"hub": "github.com", "owner": "lastbackend", "repo": "proxy"}
KEY = generate_key()


@pytest.fixture
def settings(etcd_server: EmbeddedEtcd) -> Settings:
    """The API's key is known here, so a test can decrypt what it stored."""
    return Settings(etcd_endpoints=(etcd_server.endpoint,), secret_key=KEY)


# helpers ----------------------------------------------------------------------------------------


async def create_project(api: Client, name: str) -> str:
    resp = await api.post("/api/projects", json={"name": name})
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["id"])


async def create_service(api: Client, project: str, name: str, **fields: Any) -> dict[str, Any]:
    resp = await api.post(f"/api/projects/{project}/services", json={"name": name, **fields})
    assert resp.status == 201, await resp.text()
    return await resp.json()


def url(project: str, service: str = "", sub: str = "") -> str:
    path = f"/api/projects/{project}/services"
    if service:
        path += f"/{service}"
    if sub:
        path += f"/{sub}"
    return path


async def get_json(api: Client, path: str) -> Any:
    resp = await api.get(path)
    assert resp.status == 200, await resp.text()
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
        assert error["title"].startswith("CF-")
    return "; ".join(e["detail"] for e in errors)


async def snapshot(etcd: RawEtcd, prefix: str = ROOT) -> Snapshot:
    """Every key with its value and mod revision: equal snapshots mean nothing was written."""
    return {kv.key: (kv.value, kv.mod_revision) for kv in (await etcd.range(prefix)).kvs}


def part_key(pid: str, sid: str, part: str) -> str:
    return f"{PROJECTS}{pid}/services/{sid}/{part}"


async def stored(etcd: RawEtcd, pid: str, sid: str, part: str) -> Any:
    """A service part as an admin reads it: JSON decoded, the image key as bare text; a
    config's env values, each checked to be a Fernet token, decrypted."""
    kv = await etcd.get(part_key(pid, sid, part))
    if kv is None:
        return None
    if part == "image":
        return kv.value.decode()
    value = json.loads(kv.value)
    if part == "config":
        assert all(is_token(v) for v in value["env"].values()), value["env"]
        value["env"] = Secrets(KEY).open_env(value["env"])
    return value


def default_config(**fields: Any) -> dict[str, Any]:
    return {**codec.unstructure(ServiceConfig()), **fields}


async def backdate(etcd: RawEtcd, pid: str, sid: str) -> None:
    """Rewrite the service's meta as if it had been created and last changed long ago."""
    kv = await etcd.get(part_key(pid, sid, "meta"))
    assert kv is not None
    meta = codec.loads(kv.value, Meta)
    await etcd.put(kv.key, codec.dumps(Meta(meta.name, LONG_AGO, LONG_AGO, meta.description)))


async def put_container(etcd: RawEtcd, pid: str, sid: str, cid: str, status: str) -> Container:
    container = Container(cid, status, WHEN, WHEN, {"80/TCP": 44536})
    await etcd.put(keys.container(pid, sid, cid), codec.dumps(container))
    return container


async def put_build(etcd: RawEtcd, pid: str, sid: str, number: int, commit: str) -> Build:
    build = Build("passed", WHEN, WHEN, commit, f"Merge pull request #{number}", "unloop", "built")
    await etcd.put(keys.build(pid, sid, number), codec.dumps(build))
    return build


# create -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["name", "id"])
async def test_create_in_a_project_by_name_or_id(api: Client, etcd: RawEtcd, by: str) -> None:
    pid = await create_project(api, "demo")
    ref = "demo" if by == "name" else pid

    resp = await api.post(url(ref), json={"name": "web", "description": "front", "config": CONFIG})
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    sid = body["id"]
    assert str(uuid.UUID(sid)) == sid
    assert body["project"] == pid
    assert body["name"] == "web"
    assert body["description"] == "front"
    assert body["config"] == default_config(**CONFIG)
    assert body["image"] == CONFIG["image"]
    assert body["source"] is None
    assert body["domains"] == {}
    assert resp.headers["Location"] == f"/api/projects/{pid}/services/{sid}"
    meta = await etcd.get(part_key(pid, sid, "meta"))
    assert meta is not None
    assert etag(resp) == meta.mod_revision

    raw = await dump(etcd)
    assert raw[f"{HELPER}{pid}/services/web"] == sid.encode()
    assert await stored(etcd, pid, sid, "config") == default_config(**CONFIG)
    assert (await get_json(api, resp.headers["Location"]))["id"] == sid


@pytest.mark.parametrize("project", ["nope", "3f1c2b1e-0000-4000-8000-000000000000"])
async def test_create_in_a_missing_project_is_404(api: Client, etcd: RawEtcd, project: str) -> None:
    await create_project(api, "demo")
    before = await snapshot(etcd)
    detail = await expect_error(await api.post(url(project), json={"name": "web"}), 404)
    assert project in detail
    await expect_error(await api.get(url(project)), 404)
    assert await snapshot(etcd) == before


async def test_same_name_in_two_projects_is_fine(api: Client, etcd: RawEtcd) -> None:
    demo = await create_project(api, "demo")
    prod = await create_project(api, "prod")
    a = await create_service(api, "demo", "web", config={"replicas": 1})
    b = await create_service(api, "prod", "web", config={"replicas": 5})
    assert a["id"] != b["id"]

    assert (await get_json(api, url("demo", "web")))["config"]["replicas"] == 1
    assert (await get_json(api, url("prod", "web")))["config"]["replicas"] == 5
    raw = await dump(etcd)
    assert raw[f"{HELPER}{demo}/services/web"] == a["id"].encode()
    assert raw[f"{HELPER}{prod}/services/web"] == b["id"].encode()
    # a service's id does not reach it through another project
    await expect_error(await api.get(url("demo", b["id"])), 404)
    await expect_error(await api.delete(url("demo", b["id"])), 404)


async def test_duplicate_name_in_one_project_is_409_and_writes_nothing(
    api: Client, etcd: RawEtcd
) -> None:
    await create_project(api, "demo")
    await create_service(api, "demo", "web")
    before = await snapshot(etcd)
    detail = await expect_error(
        await api.post(url("demo"), json={"name": "web", "config": CONFIG}), 409
    )
    assert "web" in detail
    assert await snapshot(etcd) == before


@pytest.mark.parametrize(
    "payload",
    [
        {"name": "3f1c2b1e-0000-4000-8000-000000000000"},
        {"name": "Web"},
        {"name": "web", "config": {"replicas": "2"}},
        {"name": "web", "config": {"image": "Not An Image"}},
        {"name": "web", "domains": {"Bad Host": True}},
        {"name": "web", "created": "2020-01-01T00:00:00Z"},
    ],
)
async def test_bad_create_is_422_and_writes_nothing(
    api: Client, etcd: RawEtcd, payload: dict[str, Any]
) -> None:
    await create_project(api, "demo")
    before = await snapshot(etcd)
    await expect_error(await api.post(url("demo"), json=payload), 422)
    assert await snapshot(etcd) == before


# read -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("project_by", "service_by"), [("name", "name"), ("id", "id")])
async def test_get_by_id_and_by_name(api: Client, project_by: str, service_by: str) -> None:
    pid = await create_project(api, "demo")
    created = await create_service(api, "demo", "web", config=CONFIG, source=SOURCE)
    await create_service(api, "demo", "db")
    project = "demo" if project_by == "name" else pid
    service = "web" if service_by == "name" else created["id"]

    resp = await api.get(url(project, service))
    assert resp.status == 200
    body = await resp.json()
    assert body == created
    assert body["source"] == {**SOURCE, "branch": "master"}
    href = f"/api/projects/{pid}/services/{created['id']}"
    assert body["links"]["self"]["href"] == href
    assert body["links"]["containers"]["href"] == f"{href}/containers"
    assert body["links"]["builds"]["href"] == f"{href}/builds"
    assert etag(resp) == etag(await api.get(url(project, service, "config")))

    for missing in ("nope", str(uuid.uuid4())):
        await expect_error(await api.get(url(project, missing)), 404)


async def test_list_a_projects_services(api: Client) -> None:
    await create_project(api, "demo")
    await create_project(api, "other")
    for name in ("web", "db", "cache"):
        await create_service(api, "demo", name)
    await create_service(api, "other", "queue")

    body = await get_json(api, url("demo"))
    assert [s["name"] for s in body["resources"]] == ["cache", "db", "web"]
    assert body["pagination"]["total_results"] == 3
    descending = await get_json(api, url("demo") + "?order_by=-name&per_page=2")
    assert [s["name"] for s in descending["resources"]] == ["web", "db"]
    assert descending["pagination"]["total_pages"] == 2
    assert descending["pagination"]["next"] is not None
    assert [s["name"] for s in (await get_json(api, url("other")))["resources"]] == ["queue"]

    await create_project(api, "empty")
    empty = await get_json(api, url("empty"))
    assert empty["resources"] == []
    assert empty["pagination"]["total_results"] == 0


# update -----------------------------------------------------------------------------------------


async def test_patch_rename_moves_the_helper_key(api: Client, etcd: RawEtcd) -> None:
    pid = await create_project(api, "demo")
    sid = (await create_service(api, "demo", "web", config=CONFIG))["id"]
    await create_service(api, "demo", "db")
    await get_json(api, url("demo", "web"))  # warm any name cache

    resp = await api.patch(url("demo", "web"), json={"name": "front"})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["id"] == sid
    assert body["name"] == "front"
    assert body["config"] == default_config(**CONFIG)

    await expect_error(await api.get(url("demo", "web")), 404)
    assert (await get_json(api, url("demo", "front")))["id"] == sid
    raw = await dump(etcd)
    assert f"{HELPER}{pid}/services/web" not in raw
    assert raw[f"{HELPER}{pid}/services/front"] == sid.encode()
    assert json.loads(raw[part_key(pid, sid, "meta")])["name"] == "front"

    before = await snapshot(etcd)
    await expect_error(await api.patch(url("demo", "front"), json={"name": "db"}), 409)
    assert await snapshot(etcd) == before


async def test_patch_config_merges_field_by_field(api: Client, etcd: RawEtcd) -> None:
    pid = await create_project(api, "demo")
    sid = (
        await create_service(api, "demo", "web", config=CONFIG, domains={"a.example.com": True})
    )["id"]

    await backdate(etcd, pid, sid)

    resp = await api.patch(url("demo", "web"), json={"config": {"replicas": 3}})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    wanted = default_config(**{**CONFIG, "replicas": 3})
    assert body["config"] == wanted
    assert body["created"] == "2020-01-01T00:00:00Z"
    assert body["updated"] != "2020-01-01T00:00:00Z"
    assert (await stored(etcd, pid, sid, "meta"))["updated"] == body["updated"]
    assert body["domains"] == {"a.example.com": True}
    assert body["image"] == CONFIG["image"]
    assert await stored(etcd, pid, sid, "config") == wanted
    assert await stored(etcd, pid, sid, "domains") == {"a.example.com": True}

    resp = await api.patch(url("demo", "web"), json={"description": "only this"})
    assert resp.status == 200
    assert (await resp.json())["config"] == wanted

    before = await snapshot(etcd)
    await expect_error(await api.patch(url("demo", "web"), json={"config": {"bogus": 1}}), 422)
    await expect_error(await api.patch(url("demo", "web"), json={"config": {"memory": 1}}), 422)
    assert await snapshot(etcd) == before


async def test_patch_that_changes_nothing_writes_nothing(api: Client, etcd: RawEtcd) -> None:
    await create_project(api, "demo")
    created = await api.post(url("demo"), json={"name": "web", "config": CONFIG})
    before = await snapshot(etcd)

    for change in ({"config": {"replicas": CONFIG["replicas"]}}, {"name": "web"}, {}):
        resp = await api.patch(url("demo", "web"), json=change)
        assert resp.status == 200, await resp.text()
        assert etag(resp) == etag(created)
        assert (await resp.json())["updated"] == (await created.json())["updated"]
    resp = await api.put(url("demo", "web", "config"), json=CONFIG)
    assert resp.status == 200
    assert etag(resp) == etag(created)
    assert await snapshot(etcd) == before


async def test_the_same_mappings_in_another_order_write_nothing(api: Client, etcd: RawEtcd) -> None:
    """Hosts, env and ports are JSON objects: their key order is not a change (DESIGN.md 5)."""
    await create_project(api, "demo")
    domains = {"a.example.com": True, "b.example.com": False}
    env = {"A": "1", "B": "2"}
    created = await api.post(
        url("demo"), json={"name": "web", "domains": domains, "config": {"env": env}}
    )
    assert created.status == 201
    before = await snapshot(etcd)

    resp = await api.put(url("demo", "web", "domains"), json=dict(reversed(domains.items())))
    assert resp.status == 200, await resp.text()
    assert await resp.json() == domains
    assert etag(resp) == etag(created)
    resp = await api.patch(url("demo", "web", "config"), json={"env": dict(reversed(env.items()))})
    assert resp.status == 200, await resp.text()
    assert etag(resp) == etag(created)
    assert await snapshot(etcd) == before


async def test_concurrent_patches_all_land(api: Client, etcd: RawEtcd) -> None:
    pid = await create_project(api, "demo")
    sid = (await create_service(api, "demo", "web", config=CONFIG))["id"]
    changes: list[tuple[str, dict[str, Any]]] = [
        ("", {"description": "described"}),
        ("config", {"replicas": 7}),
        ("config", {"memory": 512}),
        ("config", {"command": "nginx -t"}),
        ("", {"config": {"env": {"A": "1"}}}),
        ("domains", {"web.example.com": True}),
        ("source", SOURCE),
    ]
    responses = await asyncio.gather(
        *(
            api.request(
                "PUT" if sub in ("domains", "source") else "PATCH",
                url("demo", "web", sub),
                json=change,
            )
            for sub, change in changes
        )
    )
    assert [r.status for r in responses] == [200] * len(changes)

    body = await get_json(api, url("demo", "web"))
    wanted = default_config(
        **{**CONFIG, "replicas": 7, "memory": 512, "command": "nginx -t", "env": {"A": "1"}}
    )
    assert body["description"] == "described"
    assert body["config"] == wanted
    assert body["domains"] == {"web.example.com": True}
    assert body["source"] == {**SOURCE, "branch": "master"}
    assert await stored(etcd, pid, sid, "config") == wanted


async def test_concurrent_creates_of_one_name_make_one_service(api: Client, etcd: RawEtcd) -> None:
    pid = await create_project(api, "demo")
    responses = await asyncio.gather(
        *(api.post(url("demo"), json={"name": "web", "config": {"replicas": i}}) for i in range(8))
    )
    assert sorted(r.status for r in responses) == [201] + [409] * 7
    (winner,) = [await r.json() for r in responses if r.status == 201]
    raw = await dump(etcd)
    assert raw[f"{HELPER}{pid}/services/web"] == winner["id"].encode()
    metas = [k for k in raw if k.startswith(f"{PROJECTS}{pid}/services/") and k.endswith("/meta")]
    assert metas == [part_key(pid, winner["id"], "meta")]


async def test_if_match_guards_the_service_and_its_parts(api: Client, etcd: RawEtcd) -> None:
    await create_project(api, "demo")
    stale = etag(await api.post(url("demo"), json={"name": "web", "config": CONFIG}))
    current = etag(await api.patch(url("demo", "web"), json={"description": "changed"}))
    assert current > stale
    before = await snapshot(etcd)

    headers = {"If-Match": f'"{stale}"'}
    for method, sub, payload in [
        ("PATCH", "", {"config": {"replicas": 9}}),
        ("PATCH", "config", {"replicas": 9}),
        ("PUT", "image", {"image": "library/redis:7"}),
        ("DELETE", "", None),
    ]:
        resp = await api.request(method, url("demo", "web", sub), json=payload, headers=headers)
        await expect_error(resp, 412)
    assert await snapshot(etcd) == before

    resp = await api.patch(
        url("demo", "web", "config"), json={"replicas": 9}, headers={"If-Match": f'"{current}"'}
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["replicas"] == 9


# sub-resources ----------------------------------------------------------------------------------


async def test_config_subresource(api: Client, etcd: RawEtcd) -> None:
    pid = await create_project(api, "demo")
    sid = (await create_service(api, "demo", "web", config=CONFIG))["id"]
    assert await get_json(api, url("demo", "web", "config")) == default_config(**CONFIG)

    resp = await api.patch(url("demo", "web", "config"), json={"memory": 256, "env": {"X": "1"}})
    assert resp.status == 200, await resp.text()
    merged = default_config(**{**CONFIG, "memory": 256, "env": {"X": "1"}})
    assert await resp.json() == merged
    assert await stored(etcd, pid, sid, "config") == merged

    replacement = {"image": "library/nginx:1.27", "replicas": 1}
    resp = await api.put(url("demo", "web", "config"), json=replacement)
    assert resp.status == 200, await resp.text()
    assert await resp.json() == default_config(**replacement)
    assert await stored(etcd, pid, sid, "config") == default_config(**replacement)
    assert (await get_json(api, url("demo", "web")))["config"] == default_config(**replacement)

    before = await snapshot(etcd)
    await expect_error(await api.put(url("demo", "web", "config"), json={"replicas": -1}), 422)
    await expect_error(await api.patch(url("demo", "web", "config"), json={"ports": []}), 422)
    assert await snapshot(etcd) == before


async def test_source_subresource(api: Client, etcd: RawEtcd) -> None:
    pid = await create_project(api, "demo")
    sid = (await create_service(api, "demo", "web"))["id"]
    assert await get_json(api, url("demo", "web", "source")) is None
    assert await stored(etcd, pid, sid, "source") is None

    resp = await api.put(url("demo", "web", "source"), json={**SOURCE, "branch": "dev"})
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {**SOURCE, "branch": "dev"}
    assert await stored(etcd, pid, sid, "source") == {**SOURCE, "branch": "dev"}
    assert await get_json(api, url("demo", "web", "source")) == {**SOURCE, "branch": "dev"}

    resp = await api.put(url("demo", "web", "source"), json=SOURCE)
    assert resp.status == 200
    assert (await resp.json())["branch"] == "master"

    resp = await api.delete(url("demo", "web", "source"))
    assert resp.status == 204
    assert part_key(pid, sid, "source") not in await dump(etcd)
    assert await get_json(api, url("demo", "web", "source")) is None
    assert (await get_json(api, url("demo", "web")))["source"] is None

    await expect_error(
        await api.put(url("demo", "web", "source"), json={**SOURCE, "branch": "a..b"}), 422
    )


async def test_domains_subresource(api: Client, etcd: RawEtcd) -> None:
    pid = await create_project(api, "demo")
    sid = (await create_service(api, "demo", "web", domains={"web.example.com": True}))["id"]
    assert await get_json(api, url("demo", "web", "domains")) == {"web.example.com": True}

    domains = {"web.lbapp.in": True, "web.example.com": False}
    resp = await api.put(url("demo", "web", "domains"), json=domains)
    assert resp.status == 200, await resp.text()
    assert await resp.json() == domains
    assert await stored(etcd, pid, sid, "domains") == domains
    assert await get_json(api, url("demo", "web", "domains")) == domains

    before = await snapshot(etcd)
    await expect_error(await api.put(url("demo", "web", "domains"), json={"x.com": "yes"}), 422)
    await expect_error(await api.put(url("demo", "web", "domains"), json={"a/b": True}), 422)
    assert await snapshot(etcd) == before


async def test_image_follows_config_image(api: Client, etcd: RawEtcd) -> None:
    pid = await create_project(api, "demo")
    sid = (await create_service(api, "demo", "web", config={"image": "library/app:1"}))["id"]
    assert await get_json(api, url("demo", "web", "image")) == {"image": "library/app:1"}
    assert (await dump(etcd))[part_key(pid, sid, "image")] == b"library/app:1"

    resp = await api.patch(url("demo", "web", "config"), json={"image": "library/app:2"})
    assert resp.status == 200, await resp.text()
    assert await get_json(api, url("demo", "web", "image")) == {"image": "library/app:2"}
    assert (await dump(etcd))[part_key(pid, sid, "image")] == b"library/app:2"

    resp = await api.patch(url("demo", "web"), json={"config": {"image": "library/app:3"}})
    assert (await resp.json())["image"] == "library/app:3"
    assert (await dump(etcd))[part_key(pid, sid, "image")] == b"library/app:3"


async def test_a_service_without_an_image_has_no_image_key(api: Client, etcd: RawEtcd) -> None:
    pid = await create_project(api, "demo")
    sid = (await create_service(api, "demo", "web"))["id"]
    assert part_key(pid, sid, "image") not in await dump(etcd)
    assert await get_json(api, url("demo", "web", "image")) == {"image": None}

    resp = await api.put(url("demo", "web", "image"), json={"image": "library/app:1"})
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"image": "library/app:1"}
    assert (await dump(etcd))[part_key(pid, sid, "image")] == b"library/app:1"


async def test_an_explicit_image_wins(api: Client, etcd: RawEtcd) -> None:
    pid = await create_project(api, "demo")
    created = await create_service(
        api, "demo", "web", config={"image": "library/app:1"}, image="registry.local/app:built"
    )
    sid = created["id"]
    assert created["image"] == "registry.local/app:built"
    assert await stored(etcd, pid, sid, "image") == "registry.local/app:built"

    resp = await api.put(url("demo", "web", "image"), json={"image": "library/app:9"})
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"image": "library/app:9"}
    assert await stored(etcd, pid, sid, "image") == "library/app:9"
    config = await get_json(api, url("demo", "web", "config"))
    assert config["image"] == "library/app:1"  # what the user asked for stays as asked

    # changing something else in the config does not take the explicit image away
    resp = await api.patch(url("demo", "web", "config"), json={"replicas": 4})
    assert resp.status == 200
    assert await stored(etcd, pid, sid, "image") == "library/app:9"

    # in one request, the explicit image wins over the config's
    resp = await api.patch(
        url("demo", "web"), json={"config": {"image": "library/app:2"}, "image": "library/app:10"}
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["config"]["image"] == "library/app:2"
    assert body["image"] == "library/app:10"
    assert await stored(etcd, pid, sid, "image") == "library/app:10"
    await expect_error(await api.put(url("demo", "web", "image"), json={"image": "A B"}), 422)


# containers and builds --------------------------------------------------------------------------


async def test_containers_are_readable(api: Client, etcd: RawEtcd) -> None:
    pid = await create_project(api, "demo")
    sid = (await create_service(api, "demo", "web"))["id"]
    assert (await get_json(api, url("demo", "web", "containers")))["resources"] == []
    b = await put_container(etcd, pid, sid, "bbb" + "0" * 61, "running")
    a = await put_container(etcd, pid, sid, "aaa" + "0" * 61, "exited")

    body = await get_json(api, url("demo", "web", "containers"))
    assert body["resources"] == [codec.unstructure(a), codec.unstructure(b)]
    assert body["pagination"]["total_results"] == 2
    assert body["resources"][1]["ports"] == {"80/TCP": 44536}
    assert body["resources"][1]["created"] == "2026-01-01T12:00:00Z"
    descending = await get_json(api, url("demo", "web", "containers") + "?order_by=-id")
    assert [c["id"] for c in descending["resources"]] == [b.id, a.id]

    resp = await api.get(url("demo", "web", f"containers/{a.id}"))
    assert resp.status == 200
    assert await resp.json() == codec.unstructure(a)
    kv = await etcd.get(keys.container(pid, sid, a.id))
    assert kv is not None
    assert etag(resp) == kv.mod_revision
    by_ids = await api.get(url(pid, sid, f"containers/{b.id}"))
    assert (await by_ids.json())["status"] == "running"


async def test_builds_are_listed_in_number_order(api: Client, etcd: RawEtcd) -> None:
    pid = await create_project(api, "demo")
    sid = (await create_service(api, "demo", "web"))["id"]
    builds = {n: await put_build(etcd, pid, sid, n, f"{n:040x}") for n in (10, 2, 1)}

    raw = json.loads((await dump(etcd))[keys.build(pid, sid, 10)])
    assert raw["commitMessage"] == "Merge pull request #10"
    assert "commit_message" not in raw

    body = await get_json(api, url("demo", "web", "builds"))
    assert [b["number"] for b in body["resources"]] == [1, 2, 10]
    assert body["pagination"]["total_results"] == 3
    assert body["resources"][2] == {"number": 10, **codec.unstructure(builds[10])}
    assert body["resources"][2]["commitMessage"] == "Merge pull request #10"
    descending = await get_json(api, url("demo", "web", "builds") + "?order_by=-number")
    assert [b["number"] for b in descending["resources"]] == [10, 2, 1]
    paged = await get_json(api, url("demo", "web", "builds") + "?per_page=2&page=2")
    assert [b["number"] for b in paged["resources"]] == [10]

    resp = await api.get(url("demo", "web", "builds/2"))
    assert resp.status == 200
    assert await resp.json() == {"number": 2, **codec.unstructure(builds[2])}
    kv = await etcd.get(keys.build(pid, sid, 2))
    assert kv is not None
    assert etag(resp) == kv.mod_revision


@pytest.mark.parametrize(
    "sub", ["containers/x", "builds/x", "builds/3", "builds/-1", "containers/" + "f" * 64]
)
async def test_a_missing_container_or_build_is_404(api: Client, etcd: RawEtcd, sub: str) -> None:
    pid = await create_project(api, "demo")
    sid = (await create_service(api, "demo", "web"))["id"]
    await put_container(etcd, pid, sid, "a" * 64, "running")
    await put_build(etcd, pid, sid, 1, "0" * 40)
    await expect_error(await api.get(url("demo", "web", sub)), 404)
    # and nothing is readable through a service that does not exist
    await expect_error(await api.get(url("demo", "nope", "containers")), 404)
    await expect_error(await api.get(url("demo", "nope", "builds/1")), 404)


# delete -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["name", "id"])
async def test_delete_removes_the_subtree_and_not_a_sibling(
    api: Client, etcd: RawEtcd, by: str
) -> None:
    pid = await create_project(api, "demo")
    web = (await create_service(api, "demo", "web", config=CONFIG, source=SOURCE))["id"]
    # A sibling with the same children, and one whose name extends the first one's.
    siblings = [
        (await create_service(api, "demo", "db", config=CONFIG))["id"],
        (await create_service(api, "demo", "web2", config=CONFIG))["id"],
    ]
    for sid in (web, *siblings):
        await put_container(etcd, pid, sid, "c" * 64, "running")
        await put_build(etcd, pid, sid, 1, "0" * 40)
    before = await snapshot(etcd)
    assert f"{PROJECTS}{pid}/services/{web}/containers/{'c' * 64}" in before

    resp = await api.delete(url("demo", "web" if by == "name" else web))
    assert resp.status == 204

    after = await snapshot(etcd)
    assert not [k for k in after if web in k]
    assert f"{HELPER}{pid}/services/web" not in after
    assert after == {k: v for k, v in before.items() if web not in k and not k.endswith("/web")}
    await expect_error(await api.get(url("demo", "web")), 404)
    await expect_error(await api.get(url("demo", web, "containers")), 404)
    await expect_error(await api.delete(url("demo", "web")), 404)
    listed = await get_json(api, url("demo"))
    assert sorted(s["name"] for s in listed["resources"]) == ["db", "web2"]

    # the name is free again
    again = await create_service(api, "demo", "web")
    assert again["id"] != web
    assert (await get_json(api, url("demo", "web", "builds")))["resources"] == []


async def test_deleting_the_project_removes_its_services_and_helpers(
    api: Client, etcd: RawEtcd
) -> None:
    pid = await create_project(api, "demo")
    other = await create_project(api, "other")
    for project in (pid, other):
        for name in ("web", "db"):
            sid = (await create_service(api, project, name, config=CONFIG))["id"]
            await put_container(etcd, project, sid, "c" * 64, "running")
            await put_build(etcd, project, sid, 1, "0" * 40)
    before = await snapshot(etcd)
    assert len([k for k in before if k.startswith(f"{HELPER}{pid}/services/")]) == 2

    resp = await api.delete("/api/projects/demo")
    assert resp.status == 204

    after = await snapshot(etcd)
    assert not [k for k in after if k.startswith((f"{PROJECTS}{pid}/", f"{HELPER}{pid}/"))]
    assert f"{HELPER}demo" not in after
    kept = {
        k: v
        for k, v in before.items()
        if pid not in k and k != f"{HELPER}demo" and v[0] != pid.encode()  # helper/apps -> pid
    }
    assert len(before) - len(kept) > 2 + 2 * 7  # project + 2 services (7 keys each) + helpers
    assert after == kept
    await expect_error(await api.get(url(pid, "web")), 404)
    await expect_error(await api.get(url("demo")), 404)
    assert len((await get_json(api, url("other")))["resources"]) == 2
