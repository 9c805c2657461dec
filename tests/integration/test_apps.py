"""``/v3/apps`` against a real etcd: apps are services, and what starting one writes.

Droplets are written straight into etcd, as the staging controller will write them, and then
assigned and started through the API; the keys the API leaves are read back with the store's
own key tree.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import attrs
import pytest
from aiohttp.test_utils import TestClient

from lastbackend import codec
from lastbackend.config import Settings
from lastbackend.model.apps import (
    AppState,
    BuildpackLifecycle,
    DockerLifecycle,
    Droplet,
    DropletState,
    Lifecycle,
)
from lastbackend.model.platform import ServiceConfig
from lastbackend.secrets import Secrets, generate_key, is_token
from lastbackend.store import keys
from lastbackend.store.embedded import EmbeddedEtcd
from tests.conftest import dump
from tests.support import RawEtcd

pytestmark = pytest.mark.etcd

Client = TestClient[Any, Any]
WHEN = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
RUN_IMAGE = "registry.local/droplets/web:1"
KEY = generate_key()


@pytest.fixture
def settings(etcd_server: EmbeddedEtcd) -> Settings:
    """The API's key is known here, so a test can decrypt what it stored."""
    return Settings(etcd_endpoints=(etcd_server.endpoint,), secret_key=KEY)


def opened(raw: bytes) -> ServiceConfig:
    """A stored config with its env values, each checked to be a Fernet token, decrypted."""
    config = codec.loads(raw, ServiceConfig)
    assert all(is_token(v) for v in config.env.values()), config.env
    return attrs.evolve(config, env=Secrets(KEY).open_env(config.env))


# helpers ----------------------------------------------------------------------------------------


async def create_project(api: Client, name: str) -> str:
    resp = await api.post("/api/projects", json={"name": name})
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["id"])


async def create_app(api: Client, space: str, name: str, **fields: Any) -> dict[str, Any]:
    body = {"name": name, "relationships": {"space": {"guid": space}}, **fields}
    resp = await api.post("/v3/apps", json=body)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def write_droplet(
    etcd: RawEtcd,
    pid: str,
    sid: str,
    *,
    state: DropletState = "STAGED",
    lifecycle: Lifecycle | None = None,
    image: str | None = RUN_IMAGE,
    ports: list[str] | None = None,
) -> str:
    """A droplet as the staging controller leaves it, with its helper key."""
    guid = str(uuid.uuid4())
    droplet = Droplet(
        created=WHEN,
        updated=WHEN,
        package=str(uuid.uuid4()),
        lifecycle=lifecycle or BuildpackLifecycle(),
        state=state,
        image=image if state == "STAGED" else None,
        ports=ports or [],
        environment_variables={"cloud": "foundry"},
    )
    await etcd.put(keys.droplet(pid, sid, guid), codec.dumps(droplet))
    await etcd.put(keys.droplet_owner(guid), f"{pid}:{sid}")
    return guid


async def assign(api: Client, app: str, droplet: str) -> Any:
    return await api.patch(
        f"/v3/apps/{app}/relationships/current_droplet", json={"data": {"guid": droplet}}
    )


async def part(etcd: RawEtcd, pid: str, sid: str, name: str) -> bytes | None:
    kv = await etcd.get(keys.service_part(pid, sid, name))
    return kv.value if kv else None


async def config_of(etcd: RawEtcd, pid: str, sid: str) -> ServiceConfig:
    raw = await part(etcd, pid, sid, "config")
    assert raw is not None
    return opened(raw)


async def app_of(etcd: RawEtcd, pid: str, sid: str) -> AppState:
    raw = await part(etcd, pid, sid, "app")
    assert raw is not None
    return codec.loads(raw, AppState)


def detail(body: dict[str, Any]) -> str:
    return " | ".join(e["detail"] for e in body["errors"])


# create and read --------------------------------------------------------------------------------


async def test_create_answers_the_documents_shape_and_stores_a_service(
    api: Client, etcd: RawEtcd
) -> None:
    pid = await create_project(api, "demo")
    body = {
        "name": "my-app",
        "lifecycle": {"type": "buildpack", "data": {"buildpack": "name-363"}},
        "environment_variables": {"unicorn": "horn"},
        "relationships": {"space": {"guid": pid}},
    }
    resp = await api.post("/v3/apps", json=body)
    assert resp.status == 201, await resp.text()
    app = await resp.json()
    guid = app["guid"]
    assert uuid.UUID(guid).version == 4
    assert resp.headers["Location"] == f"/v3/apps/{guid}"
    assert resp.headers["ETag"].strip('"').isdigit()
    assert app["name"] == "my-app"
    assert app["desired_state"] == "STOPPED"
    assert app["lifecycle"] == {
        "type": "buildpack",
        "data": {"buildpack": "name-363", "stack": None},
    }
    assert app["environment_variables"] == {"unicorn": "horn"}
    assert app["relationships"] == {"space": {"guid": pid}}
    assert app["updated_at"] is None
    datetime.strptime(app["created_at"], "%Y-%m-%dT%H:%M:%SZ")
    assert app["links"]["self"] == {"href": f"/v3/apps/{guid}"}
    assert app["links"]["space"] == {"href": f"/api/projects/{pid}"}
    assert app["links"]["start"] == {"href": f"/v3/apps/{guid}/actions/start", "method": "POST"}
    assert app["links"]["current_droplet"] == {"href": f"/v3/apps/{guid}/droplets/current"}

    tree = await dump(etcd)
    assert tree[keys.app_owner(guid)] == pid.encode()
    assert tree[keys.service_name(pid, "my-app")] == guid.encode()
    config = opened(tree[keys.service_part(pid, guid, "config")])
    assert config.replicas == 1
    assert config.env == {"unicorn": "horn"}
    assert config.image is None
    assert json.loads(tree[keys.service_part(pid, guid, "lifecycle")]) == app["lifecycle"]
    assert json.loads(tree[keys.service_part(pid, guid, "app")]) == {
        "desired_state": "STOPPED",
        "current_droplet": None,
    }
    assert keys.service_part(pid, guid, "image") not in tree

    got = await api.get(f"/v3/apps/{guid}")
    assert got.status == 200
    assert await got.json() == app
    assert got.headers["ETag"] == resp.headers["ETag"]


async def test_the_lifecycle_defaults_to_buildpack_auto_detection(api: Client) -> None:
    pid = await create_project(api, "demo")
    app = await create_app(api, pid, "web")
    assert app["lifecycle"] == {"type": "buildpack", "data": {"buildpack": None, "stack": None}}
    docker = await create_app(
        api, pid, "box", lifecycle={"type": "docker", "data": {"use_caching": True}}
    )
    assert docker["lifecycle"] == {"type": "docker", "data": {"use_caching": True}}


@pytest.mark.parametrize(
    "guid", ["3f2c8a54-1b7e-4d2a-9c6f-0e5b7a1d2c3e", "not-a-guid", "demo"], ids=str
)
async def test_an_unknown_app_is_404(api: Client, guid: str) -> None:
    await create_project(api, "demo")
    for method, path in (
        ("GET", ""),
        ("PATCH", ""),
        ("DELETE", ""),
        ("POST", "/actions/start"),
        ("POST", "/actions/stop"),
        ("GET", "/relationships/current_droplet"),
        ("GET", "/droplets/current"),
    ):
        resp = await api.request(method, f"/v3/apps/{guid}{path}", json={})
        assert resp.status == 404, (method, path)
        body = await resp.json()
        assert body["errors"][0]["title"] == "CF-ResourceNotFound"


async def test_a_dangling_app_helper_is_404(api: Client, etcd: RawEtcd) -> None:
    pid = await create_project(api, "demo")
    ghost = str(uuid.uuid4())
    await etcd.put(keys.app_owner(ghost), pid)
    assert (await api.get(f"/v3/apps/{ghost}")).status == 404
    resp = await api.get("/v3/apps")
    assert (await resp.json())["resources"] == []


# one model: apps are services ------------------------------------------------------------------


async def test_an_app_is_a_service_and_a_service_is_an_app(api: Client) -> None:
    pid = await create_project(api, "demo")
    app = await create_app(api, pid, "web", environment_variables={"MODE": "prod"})
    resp = await api.get(f"/api/projects/demo/services/{app['guid']}")
    assert resp.status == 200
    service = await resp.json()
    assert service["name"] == "web"
    assert service["project"] == pid
    assert service["config"]["env"] == {"MODE": "prod"}
    assert service["config"]["replicas"] == 1

    resp = await api.post(
        "/api/projects/demo/services",
        json={"name": "api", "config": {"image": "library/nginx:1.27", "env": {"A": "b"}}},
    )
    sid = (await resp.json())["id"]
    resp = await api.get(f"/v3/apps/{sid}")
    assert resp.status == 200
    other = await resp.json()
    assert other["name"] == "api"
    assert other["desired_state"] == "STARTED"  # no app key: it runs
    assert other["lifecycle"] == {"type": "buildpack", "data": {"buildpack": None, "stack": None}}
    assert other["environment_variables"] == {"A": "b"}
    listed = await (await api.get("/v3/apps?order_by=name")).json()
    assert [a["name"] for a in listed["resources"]] == ["api", "web"]
    listed = await (await api.get("/api/projects/demo/services")).json()
    assert [s["name"] for s in listed["resources"]] == ["api", "web"]


# list -------------------------------------------------------------------------------------------


async def test_list_filters_orders_and_pages(api: Client) -> None:
    one = await create_project(api, "one")
    two = await create_project(api, "two")
    for space, name in ((one, "c"), (one, "a"), (two, "b"), (two, "a")):
        await create_app(api, space, name)

    async def names(query: str) -> list[str]:
        resp = await api.get(f"/v3/apps?{query}")
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        label = {one: "1", two: "2"}
        return [label[a["relationships"]["space"]["guid"]] + a["name"] for a in body["resources"]]

    assert await names("order_by=name") in (["1a", "2a", "2b", "1c"], ["2a", "1a", "2b", "1c"])
    assert (await names("order_by=-name"))[0] == "1c"
    assert sorted(await names(f"space_guids={one}")) == ["1a", "1c"]
    assert sorted(await names(f"space_guids={one},{two}&names=a")) == ["1a", "2a"]
    assert await names(f"names=b,c&order_by=name&space_guids={two}") == ["2b"]
    assert await names("names=zzz") == []

    resp = await api.get("/v3/apps?order_by=created_at")
    body = await resp.json()
    stamps = [(a["created_at"], a["guid"]) for a in body["resources"]]
    assert stamps == sorted(stamps)
    resp = await api.get("/v3/apps?order_by=name&per_page=3&page=2")
    body = await resp.json()
    assert [a["name"] for a in body["resources"]] == ["c"]
    pagination = body["pagination"]
    assert pagination["total_results"] == 4
    assert pagination["total_pages"] == 2
    assert pagination["next"] is None
    assert "page=1" in pagination["previous"]["href"]
    assert resp.headers["X-Etcd-Revision"].isdigit()


@pytest.mark.parametrize(
    ("query", "param", "reason"),
    [
        ("space_guids=nope", "space_guids", "not a UUID"),
        ("space_guids=", "space_guids", "not a UUID"),
        ("names=Bad_Name", "names", "not a DNS label"),
        ("names=a,,b", "names", "must not be empty"),
        ("order_by=size", "order_by", "must be one of"),
        ("per_page=0", "per_page", "integer from 1"),
        ("page=x", "page", "integer from 1"),
        ("name=a", "name", "unknown parameter"),
    ],
)
async def test_bad_list_parameters_are_400_naming_them(
    api: Client, query: str, param: str, reason: str
) -> None:
    resp = await api.get(f"/v3/apps?{query}")
    assert resp.status == 400
    body = await resp.json()
    assert body["errors"][0]["title"] == "CF-BadQueryParameter"
    assert f"query parameter {param}: " in detail(body)
    assert reason in detail(body)


# patch ------------------------------------------------------------------------------------------


async def test_patch_renames_replaces_env_and_lifecycle_data(api: Client, etcd: RawEtcd) -> None:
    pid = await create_project(api, "demo")
    app = await create_app(
        api,
        pid,
        "web",
        environment_variables={"A": "1", "B": "2"},
        lifecycle={"type": "buildpack", "data": {"buildpack": "static", "stack": "tiny"}},
    )
    guid = app["guid"]
    resp = await api.patch(
        f"/v3/apps/{guid}",
        json={
            "name": "site",
            "environment_variables": {"C": "3"},
            "lifecycle": {"type": "buildpack", "data": {"buildpack": "procfile"}},
        },
    )
    assert resp.status == 200, await resp.text()
    patched = await resp.json()
    assert patched["name"] == "site"
    assert patched["environment_variables"] == {"C": "3"}  # replaced, not merged
    assert patched["lifecycle"]["data"] == {"buildpack": "procfile", "stack": None}
    assert patched["updated_at"] is not None
    assert resp.headers["ETag"] != '"0"'
    assert await (await api.get(f"/v3/apps/{guid}")).json() == patched
    tree = await dump(etcd)
    assert tree[keys.service_name(pid, "site")] == guid.encode()
    assert keys.service_name(pid, "web") not in tree
    assert (await config_of(etcd, pid, guid)).env == {"C": "3"}
    assert patched["health_check"] is None

    check = {"type": "http", "data": {"endpoint": "/up", "timeout": 30}}
    resp = await api.patch(f"/v3/apps/{guid}", json={"health_check": check})
    assert resp.status == 200, await resp.text()
    shown = (await resp.json())["health_check"]
    assert shown["type"] == "http"
    assert shown["data"]["endpoint"] == "/up"
    stored = (await config_of(etcd, pid, guid)).health_check
    assert stored is not None
    assert (stored.type, stored.data.timeout) == ("http", 30)
    resp = await api.patch(f"/v3/apps/{guid}", json={"health_check": {"type": "tcp"}})
    assert resp.status == 422
    assert "health_check.type" in await resp.text()
    assert (await api.get("/api/projects/demo/services/web")).status == 404
    assert (await api.get("/api/projects/demo/services/site")).status == 200


async def test_patch_cannot_change_the_lifecycle_type(api: Client, etcd: RawEtcd) -> None:
    pid = await create_project(api, "demo")
    app = await create_app(api, pid, "web")
    before = await etcd.status()
    resp = await api.patch(
        f"/v3/apps/{app['guid']}",
        json={"name": "other", "lifecycle": {"type": "docker", "data": {}}},
    )
    assert resp.status == 422
    assert "lifecycle.type: cannot change from buildpack to docker" in detail(await resp.json())
    assert await etcd.status() == before
    assert (await (await api.get(f"/v3/apps/{app['guid']}")).json())["name"] == "web"


async def test_patch_to_a_taken_name_is_409(api: Client, etcd: RawEtcd) -> None:
    pid = await create_project(api, "demo")
    await create_app(api, pid, "web")
    app = await create_app(api, pid, "api")
    before = await etcd.status()
    resp = await api.patch(f"/v3/apps/{app['guid']}", json={"name": "web"})
    assert resp.status == 409
    body = await resp.json()
    assert body["errors"][0]["title"] == "CF-UniquenessError"
    assert "name: " in detail(body)
    assert "'web'" in detail(body)
    assert await etcd.status() == before


async def test_if_match_guards_patch_start_and_delete(api: Client, etcd: RawEtcd) -> None:
    pid = await create_project(api, "demo")
    resp = await api.post(
        "/v3/apps", json={"name": "web", "relationships": {"space": {"guid": pid}}}
    )
    etag = resp.headers["ETag"]
    guid = (await resp.json())["guid"]
    resp = await api.patch(
        f"/v3/apps/{guid}", json={"environment_variables": {"A": "1"}}, headers={"If-Match": etag}
    )
    assert resp.status == 200
    before = await etcd.status()
    for method, path, body in (
        ("PATCH", "", {"name": "x"}),
        ("POST", "/actions/stop", None),
        ("DELETE", "", None),
    ):
        resp = await api.request(
            method, f"/v3/apps/{guid}{path}", json=body, headers={"If-Match": etag}
        )
        assert resp.status == 412, (method, path)
    assert await etcd.status() == before


# delete -----------------------------------------------------------------------------------------


async def test_delete_removes_the_service_and_its_droplets(api: Client, etcd: RawEtcd) -> None:
    pid = await create_project(api, "demo")
    app = await create_app(api, pid, "web")
    keep = await create_app(api, pid, "web2")
    guid = app["guid"]
    droplet = await write_droplet(etcd, pid, guid)
    resp = await api.delete(f"/v3/apps/{guid}")
    assert resp.status == 204
    tree = await dump(etcd)
    assert not [k for k in tree if guid in k or droplet in k]
    assert keys.app_owner(keep["guid"]) in tree
    assert (await api.get(f"/v3/apps/{guid}")).status == 404
    assert (await api.delete(f"/v3/apps/{guid}")).status == 404


# bad input --------------------------------------------------------------------------------------

NOWHERE = "3f2c8a54-1b7e-4d2a-9c6f-0e5b7a1d2c3e"
CREATE_CASES: list[tuple[str, dict[str, Any], int, str]] = [
    ("unknown-field", {"bogus": 1}, 422, "bogus: unknown field"),
    ("bad-space-guid", {"relationships": {"space": {"guid": "x"}}}, 422,
     "relationships.space.guid: 'x' is not a UUID"),
    ("missing-space", {"relationships": {}}, 422, "relationships.space: is required"),
    ("nonexistent-space", {"relationships": {"space": {"guid": NOWHERE}}}, 422,
     f"relationships.space.guid: space {NOWHERE} does not exist"),
    ("lifecycle-type", {"lifecycle": {"type": "heroku", "data": {}}}, 422,
     "lifecycle.type: must be one of buildpack, docker"),
    ("lifecycle-data-field", {"lifecycle": {"type": "docker", "data": {"stack": "x"}}}, 422,
     "lifecycle.data.stack: unknown field"),
    ("buildpack-name", {"lifecycle": {"type": "buildpack", "data": {"buildpack": "A B"}}}, 422,
     "lifecycle.data.buildpack: 'A B' is not a buildpack name"),
    ("env-name", {"environment_variables": {"1X": "v"}}, 422,
     "environment_variables['1X']: '1X' is not an environment variable name"),
    ("env-value", {"environment_variables": {"X": 1}}, 422,
     "environment_variables['X']: must be a string"),
    ("name", {"name": "my_app"}, 422, "name: 'my_app' is not a DNS label"),
    ("name-missing", {"name": None}, 422, "name: must be a string, got null"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "status", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in CREATE_CASES],
)
async def test_bad_create_names_the_field_and_writes_nothing(
    api: Client, etcd: RawEtcd, change: dict[str, Any], status: int, reason: str
) -> None:
    pid = await create_project(api, "demo")
    body: dict[str, Any] = {"name": "web", "relationships": {"space": {"guid": pid}}, **change}
    before = await etcd.status()
    resp = await api.post("/v3/apps", json=body)
    assert resp.status == status, await resp.text()
    assert reason in detail(await resp.json())
    assert await etcd.status() == before


async def test_create_of_a_taken_name_is_409_and_writes_nothing(api: Client, etcd: RawEtcd) -> None:
    pid = await create_project(api, "demo")
    await create_app(api, pid, "web")
    before = await etcd.status()
    resp = await api.post(
        "/v3/apps", json={"name": "web", "relationships": {"space": {"guid": pid}}}
    )
    assert resp.status == 409
    body = await resp.json()
    assert body["errors"][0]["title"] == "CF-UniquenessError"
    assert f"name: an app named 'web' already exists in space {pid}" in detail(body)
    assert await etcd.status() == before


PATCH_CASES: list[tuple[dict[str, Any] | bytes, int, str]] = [
    ({"bogus": 1}, 422, "bogus: unknown field"),
    ({"relationships": {"space": {"guid": NOWHERE}}}, 422, "relationships: unknown field"),
    ({"name": None}, 422, "name: must not be null"),
    ({"environment_variables": None}, 422, "environment_variables: must not be null"),
    ({"environment_variables": {"a-b": "v"}}, 422, "environment_variables['a-b']"),
    ({"lifecycle": {"type": "nope"}}, 422, "lifecycle.type: must be one of"),
    ({"lifecycle": {"type": "buildpack", "data": {"use_caching": True}}}, 422,
     "lifecycle.data.use_caching: unknown field"),
    ({"name": "UPPER"}, 422, "name: 'UPPER' is not a DNS label"),
    ([1], 422, "body: must be a JSON object"),
    (b'{"name": ', 400, "not valid JSON"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "reason"), PATCH_CASES)
async def test_bad_patch_names_the_field_and_writes_nothing(
    api: Client, etcd: RawEtcd, body: Any, status: int, reason: str
) -> None:
    pid = await create_project(api, "demo")
    app = await create_app(api, pid, "web")
    before = await etcd.status()
    if isinstance(body, bytes):
        resp = await api.patch(
            f"/v3/apps/{app['guid']}", data=body, headers={"Content-Type": "application/json"}
        )
    else:
        resp = await api.patch(f"/v3/apps/{app['guid']}", json=body)
    assert resp.status == status, await resp.text()
    assert reason in detail(await resp.json())
    assert await etcd.status() == before


# current droplet --------------------------------------------------------------------------------


async def test_current_droplet_must_be_a_staged_droplet_of_the_app(
    api: Client, etcd: RawEtcd
) -> None:
    pid = await create_project(api, "demo")
    app = await create_app(api, pid, "web")
    other = await create_app(api, pid, "other")
    guid = app["guid"]
    assert (await api.get(f"/v3/apps/{guid}/relationships/current_droplet")).status == 404
    assert (await api.get(f"/v3/apps/{guid}/droplets/current")).status == 404

    staging = await write_droplet(etcd, pid, guid, state="STAGING")
    failed = await write_droplet(etcd, pid, guid, state="FAILED")
    foreign = await write_droplet(etcd, pid, other["guid"])
    cases = [
        (staging, f"data.guid: droplet {staging} is STAGING, not STAGED"),
        (failed, f"data.guid: droplet {failed} is FAILED, not STAGED"),
        (foreign, f"data.guid: droplet {foreign} is not a droplet of app {guid}"),
        (NOWHERE, f"data.guid: droplet {NOWHERE} is not a droplet of app {guid}"),
        ("nope", "data.guid: 'nope' is not a UUID"),
    ]
    before = await etcd.status()
    for droplet, reason in cases:
        resp = await assign(api, guid, droplet)
        assert resp.status == 422, droplet
        assert reason in detail(await resp.json())
    resp = await api.patch(f"/v3/apps/{guid}/relationships/current_droplet", json={"guid": staging})
    assert resp.status == 422
    assert "data: is required" in detail(await resp.json())
    assert await etcd.status() == before

    staged = await write_droplet(etcd, pid, guid)
    resp = await assign(api, guid, staged)
    assert resp.status == 200, await resp.text()
    expected = {
        "data": {"guid": staged},
        "links": {
            "self": {"href": f"/v3/apps/{guid}/relationships/current_droplet"},
            "related": {"href": f"/v3/apps/{guid}/droplets/current"},
        },
    }
    assert await resp.json() == expected
    resp = await api.get(f"/v3/apps/{guid}/relationships/current_droplet")
    assert await resp.json() == expected
    state = await app_of(etcd, pid, guid)
    assert state == AppState(desired_state="STOPPED", current_droplet=staged)
    assert await part(etcd, pid, guid, "image") is None  # stopped: nothing runs yet

    resp = await api.get(f"/v3/apps/{guid}/droplets/current")
    assert resp.status == 200
    droplet = await resp.json()
    assert droplet["guid"] == staged
    assert droplet["state"] == "STAGED"
    assert droplet["lifecycle"] == {"type": "buildpack", "data": {"buildpack": None, "stack": None}}
    assert droplet["environment_variables"] == {"cloud": "foundry"}
    assert droplet["links"]["app"] == {"href": f"/v3/apps/{guid}"}


# start and stop ---------------------------------------------------------------------------------


async def test_start_without_a_droplet_is_422_and_writes_nothing(
    api: Client, etcd: RawEtcd
) -> None:
    pid = await create_project(api, "demo")
    app = await create_app(api, pid, "web")
    before = await etcd.status()
    resp = await api.post(f"/v3/apps/{app['guid']}/actions/start")
    assert resp.status == 422
    body = await resp.json()
    assert body["errors"][0]["title"] == "CF-UnprocessableEntity"
    assert "app has no current droplet; stage a package and assign it first" in detail(body)
    assert await etcd.status() == before


async def test_start_runs_a_buildpack_droplet_on_port_8080(api: Client, etcd: RawEtcd) -> None:
    pid = await create_project(api, "demo")
    app = await create_app(api, pid, "web", environment_variables={"MODE": "x"})
    guid = app["guid"]
    await api.patch(f"/api/projects/{pid}/services/{guid}/config", json={"command": "old"})
    droplet = await write_droplet(etcd, pid, guid)
    assert (await assign(api, guid, droplet)).status == 200
    resp = await api.post(f"/v3/apps/{guid}/actions/start")
    assert resp.status == 200, await resp.text()
    started = await resp.json()
    assert started["desired_state"] == "STARTED"
    assert started["updated_at"] is not None
    assert resp.headers["ETag"] == f'"{await etcd.status()}"'

    assert await part(etcd, pid, guid, "image") == RUN_IMAGE.encode()
    config = await config_of(etcd, pid, guid)
    assert config.ports == {"8080/TCP": 0}
    assert config.command == ""
    assert config.replicas == 1
    assert config.env == {"MODE": "x"}
    assert await app_of(etcd, pid, guid) == AppState("STARTED", droplet)
    service = await (await api.get(f"/api/projects/{pid}/services/{guid}")).json()
    assert service["image"] == RUN_IMAGE

    before = await etcd.status()  # starting again changes nothing
    assert (await api.post(f"/v3/apps/{guid}/actions/start")).status == 200
    assert await etcd.status() == before


async def test_start_publishes_port_from_env_and_restores_replicas(
    api: Client, etcd: RawEtcd
) -> None:
    pid = await create_project(api, "demo")
    app = await create_app(api, pid, "web", environment_variables={"PORT": "9000"})
    guid = app["guid"]
    await api.patch(f"/api/projects/{pid}/services/{guid}/config", json={"replicas": 0})
    await assign(api, guid, await write_droplet(etcd, pid, guid))
    assert (await api.post(f"/v3/apps/{guid}/actions/start")).status == 200
    config = await config_of(etcd, pid, guid)
    assert config.ports == {"9000/TCP": 0}
    assert config.replicas == 1

    bad = await create_app(api, pid, "bad", environment_variables={"PORT": "http"})
    await assign(api, bad["guid"], await write_droplet(etcd, pid, bad["guid"]))
    assert (await api.post(f"/v3/apps/{bad['guid']}/actions/start")).status == 200
    assert (await config_of(etcd, pid, bad["guid"])).ports == {"8080/TCP": 0}


async def test_start_runs_a_docker_droplet_on_its_exposed_ports(api: Client, etcd: RawEtcd) -> None:
    pid = await create_project(api, "demo")
    app = await create_app(api, pid, "box", lifecycle={"type": "docker", "data": {}})
    guid = app["guid"]
    droplet = await write_droplet(
        etcd, pid, guid, lifecycle=DockerLifecycle(), image="library/redis:7",
        ports=["6379/TCP", "53/UDP"],
    )  # fmt: skip
    await assign(api, guid, droplet)
    assert (await api.post(f"/v3/apps/{guid}/actions/start")).status == 200
    assert (await config_of(etcd, pid, guid)).ports == {"6379/TCP": 0, "53/UDP": 0}
    assert await part(etcd, pid, guid, "image") == b"library/redis:7"


async def test_stop_keeps_image_and_config(api: Client, etcd: RawEtcd) -> None:
    pid = await create_project(api, "demo")
    app = await create_app(api, pid, "web")
    guid = app["guid"]
    droplet = await write_droplet(etcd, pid, guid)
    await assign(api, guid, droplet)
    await api.post(f"/v3/apps/{guid}/actions/start")
    config = await config_of(etcd, pid, guid)
    resp = await api.post(f"/v3/apps/{guid}/actions/stop")
    assert resp.status == 200
    assert (await resp.json())["desired_state"] == "STOPPED"
    assert await app_of(etcd, pid, guid) == AppState("STOPPED", droplet)
    assert await config_of(etcd, pid, guid) == config
    assert await part(etcd, pid, guid, "image") == RUN_IMAGE.encode()


async def test_stopping_a_plain_service_writes_its_app_key(api: Client, etcd: RawEtcd) -> None:
    pid = await create_project(api, "demo")
    resp = await api.post(
        "/api/projects/demo/services", json={"name": "api", "config": {"image": "nginx"}}
    )
    sid = (await resp.json())["id"]
    resp = await api.post(f"/v3/apps/{sid}/actions/stop")
    assert resp.status == 200
    assert await app_of(etcd, pid, sid) == AppState("STOPPED", None)


async def test_assigning_to_a_started_app_deploys_the_new_droplet(
    api: Client, etcd: RawEtcd
) -> None:
    pid = await create_project(api, "demo")
    app = await create_app(api, pid, "web")
    guid = app["guid"]
    await assign(api, guid, await write_droplet(etcd, pid, guid))
    await api.post(f"/v3/apps/{guid}/actions/start")
    second = await write_droplet(etcd, pid, guid, image="registry.local/droplets/web:2")
    assert (await assign(api, guid, second)).status == 200
    assert await part(etcd, pid, guid, "image") == b"registry.local/droplets/web:2"
    assert await app_of(etcd, pid, guid) == AppState("STARTED", second)


async def test_start_refuses_a_current_droplet_that_is_gone(api: Client, etcd: RawEtcd) -> None:
    pid = await create_project(api, "demo")
    app = await create_app(api, pid, "web")
    guid = app["guid"]
    droplet = await write_droplet(etcd, pid, guid)
    await assign(api, guid, droplet)
    await etcd.delete_prefix(keys.droplets(pid, guid))
    assert (await api.get(f"/v3/apps/{guid}/droplets/current")).status == 404
    before = await etcd.status()
    resp = await api.post(f"/v3/apps/{guid}/actions/start")
    assert resp.status == 422
    assert f"the current droplet {droplet} no longer exists" in detail(await resp.json())
    assert await etcd.status() == before


# concurrency ------------------------------------------------------------------------------------


async def test_concurrent_starts_and_patches_all_land(api: Client, etcd: RawEtcd) -> None:
    pid = await create_project(api, "demo")
    apps = [await create_app(api, pid, f"web{i}") for i in range(6)]
    for app in apps:
        await assign(api, app["guid"], await write_droplet(etcd, pid, app["guid"]))

    async def go(i: int, app: dict[str, Any]) -> list[int]:
        guid = app["guid"]
        calls = [
            api.post(f"/v3/apps/{guid}/actions/start"),
            api.patch(f"/v3/apps/{guid}", json={"environment_variables": {"N": str(i)}}),
            api.patch(
                f"/v3/apps/{guid}",
                json={"lifecycle": {"type": "buildpack", "data": {"buildpack": f"bp{i}"}}},
            ),
            api.patch(f"/v3/apps/{guid}", json={"name": f"renamed{i}"}),
        ]
        return [r.status for r in await asyncio.gather(*calls)]

    statuses = await asyncio.gather(*(go(i, app) for i, app in enumerate(apps)))
    assert all(s == 200 for row in statuses for s in row), statuses
    for i, app in enumerate(apps):
        guid = app["guid"]
        got = await (await api.get(f"/v3/apps/{guid}")).json()
        assert got["desired_state"] == "STARTED"
        assert got["environment_variables"] == {"N": str(i)}
        assert got["lifecycle"]["data"]["buildpack"] == f"bp{i}"
        assert got["name"] == f"renamed{i}"
        config = await config_of(etcd, pid, guid)
        assert config.ports == {"8080/TCP": 0}
        assert config.env == {"N": str(i)}
        assert await part(etcd, pid, guid, "image") == RUN_IMAGE.encode()


async def test_a_droplet_restaged_during_assignment_is_never_assigned_unstaged(
    api: Client, etcd: RawEtcd
) -> None:
    """The assignment txn compares the droplet key, so every version of the app key that names
    the flapping droplet was written while that droplet was STAGED (checked in etcd's history)."""
    pid = await create_project(api, "demo")
    app = await create_app(api, pid, "web")
    guid = app["guid"]
    flapping = await write_droplet(etcd, pid, guid)
    steady = await write_droplet(etcd, pid, guid)
    key = keys.droplet(pid, guid, flapping)
    staged = (await etcd.get(key)).value  # type: ignore[union-attr]
    failed = {**json.loads(staged), "state": "FAILED", "error": "boom", "image": None}
    done = asyncio.Event()

    async def flap() -> None:
        while not done.is_set():
            await etcd.put(key, json.dumps(failed))
            await etcd.put(key, staged)
            await asyncio.sleep(0.001)

    async def assigns() -> list[int]:
        statuses = []
        for _ in range(15):
            for droplet in (flapping, steady):
                resp = await assign(api, guid, droplet)
                statuses.append(resp.status)
                if resp.status == 422:
                    assert "is FAILED, not STAGED" in detail(await resp.json())
        done.set()
        return statuses

    _, statuses = await asyncio.gather(flap(), assigns())
    assert set(statuses) <= {200, 422}
    app_key = keys.service_part(pid, guid, "app")
    kv = await etcd.get(app_key)
    checked = 0
    while kv is not None and kv.version > 1:  # walk the app key's history, newest first
        if codec.loads(kv.value, AppState).current_droplet == flapping:
            at = await etcd.get(key, revision=kv.mod_revision)
            assert at is not None
            assert json.loads(at.value)["state"] == "STAGED", kv.mod_revision
            checked += 1
        kv = await etcd.get(app_key, revision=kv.mod_revision - 1)
    assert checked > 0
