"""Secrets stay secret (issue 13, section 3): environment values, moved secrets, ``/readyz``.

Each test is a reproduction of what the review found, against a real etcd read as an admin with
``etcdctl`` would (``dump``): env values were stored and streamed in clear and shown to read-only
tokens; a vendor's or registry account's stored secret followed a changed host; ``/readyz``
told anyone its leaders' identities and etcd's errors; the AMQP forwarder's repr held its URL.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from lastbackend import codec
from lastbackend.api.app import make_app
from lastbackend.cli.keytree import tree
from lastbackend.config import Settings
from lastbackend.controllers.amqp import AmqpHub
from lastbackend.controllers.runner import ControllerRunner
from lastbackend.controllers.services import ServicesController
from lastbackend.model.platform import ServiceConfig
from lastbackend.node.agent import NodeAgent
from lastbackend.runtime.base import NodeCapacity
from lastbackend.secrets import Secrets, generate_key, is_token
from lastbackend.store import keys
from tests.conftest import ClientFactory, dump
from tests.fakeruntime import FakeProcess, FakeRuntime
from tests.support import RawEtcd, eventually, free_port

pytestmark = pytest.mark.etcd

Client = TestClient[Any, Any]
KEY = generate_key()
ADMIN, READ = "secrets-admin-token", "secrets-read-token"
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}
AS_READER = {"Authorization": f"Bearer {READ}"}
DB_PASSWORD = "hunter2-Db-Pa55-e1f0"
API_KEY = "sk-live-0c9a7e55d1b2"
ENV = {"DB_PASSWORD": DB_PASSWORD, "Password": "x-" + API_KEY, "MODE": "prod"}
"""Names a mask by name would miss (``MODE``) or match only ignoring case (``Password``)."""
CLEAR = (DB_PASSWORD, API_KEY, "prod")
IMAGE = "registry.local/team/web:1"
STARS = {name: "***" for name in ENV}


@pytest.fixture
def settings(etcd_server: Any, tmp_path: Path) -> Settings:
    return Settings(
        etcd_endpoints=(etcd_server.endpoint,),
        data_dir=tmp_path,
        secret_key=KEY,
        admin_tokens=(ADMIN,),
        read_tokens=(READ,),
    )


@pytest.fixture
async def api(make_client: ClientFactory) -> Client:
    return await make_client()


async def call(api: Client, method: str, path: str, expect: int, **kwargs: Any) -> Any:
    headers = kwargs.pop("headers", AS_ADMIN)
    resp = await api.request(method, path, headers=headers, **kwargs)
    text = await resp.text()
    assert resp.status == expect, text
    return json.loads(text) if text else None


async def project(api: Client) -> str:
    return str((await call(api, "POST", "/api/projects", 201, json={"name": "demo"}))["id"])


async def service(api: Client, pid: str, name: str = "web", **config: Any) -> str:
    body = {"name": name, "config": {"image": IMAGE, "env": ENV, **config}}
    return str((await call(api, "POST", f"/api/projects/{pid}/services", 201, json=body))["id"])


def clear_anywhere(values: dict[str, bytes]) -> list[str]:
    """Keys whose raw value holds one of the clear env values."""
    return [k for k, v in values.items() if any(c.encode() in v for c in CLEAR)]


def env_maps(values: dict[str, bytes]) -> dict[str, dict[str, str]]:
    """Every environment map in the tree, by key: configs, droplets, revisions, pods."""
    out = {}
    for key, raw in values.items():
        if key.endswith("/config") and keys.service_of(key):
            out[key] = json.loads(raw)["env"]
        elif keys.droplet_of(key):
            out[key] = json.loads(raw)["environment_variables"]
        elif keys.revision_of(key) or keys.pod_spec_of(key):
            out[key] = json.loads(raw)["spec"]["env"]
    return out


class Node:
    """The services controller and a node agent on the fake engine, sharing the API's key."""

    def __init__(self, etcd: RawEtcd) -> None:
        self.runtime = FakeRuntime(images=[IMAGE], capacity=NodeCapacity(4096, 2, "n1", "fake"))
        self.started: list[dict[str, str]] = []
        self.runtime.on_start(self._record)
        agent = NodeAgent(self.runtime, Secrets(KEY), "n1", probe=self.runtime.probe)
        self.runners = [
            ControllerRunner(ServicesController(), etcd, lease_ttl=2),
            ControllerRunner(agent, etcd, lease_ttl=2),
        ]
        for runner in self.runners:
            runner.start()

    def _record(self, process: FakeProcess) -> None:
        self.started.append(process.env)

    async def stop(self) -> None:
        for runner in reversed(self.runners):
            await runner.stop(grace=1)


@pytest.fixture
async def node(etcd: RawEtcd) -> AsyncIterator[Node]:
    made = Node(etcd)
    yield made
    await made.stop()


# environment values at rest ----------------------------------------------------------------------


async def test_env_values_are_ciphertext_in_every_key_and_containers_get_them_clear(
    api: Client, etcd: RawEtcd, node: Node
) -> None:
    pid = await project(api)
    sid = await service(api, pid)
    app = {"name": "site", "relationships": {"space": {"guid": pid}}, "environment_variables": ENV}
    guid = (await call(api, "POST", "/v3/apps", 201, json=app))["guid"]
    await call(api, "PATCH", f"/v3/apps/{guid}", 200, json={"environment_variables": ENV})
    package = {"type": "docker", "image": "busybox", "relationships": {"app": {"guid": guid}}}
    package_guid = (await call(api, "POST", "/v3/packages", 201, json=package))["guid"]
    staged = {"environment_variables": ENV, "lifecycle": {"type": "docker", "data": {}}}
    await call(api, "POST", f"/v3/packages/{package_guid}/droplets", 201, json=staged)

    async def running() -> bool:
        return bool(node.started)

    await eventually(running, 15)
    assert node.started[0]["DB_PASSWORD"] == DB_PASSWORD, "the agent decrypts what it runs"
    assert {k: node.started[0][k] for k in ENV} == ENV

    tree_now = await dump(etcd)
    assert clear_anywhere(tree_now) == []
    maps = env_maps(tree_now)
    kinds = {keys.leaf(k) if k.endswith("/config") else k.split("/")[-2] for k in maps}
    assert {"config", "droplets", "revisions"} <= kinds
    assert any(keys.pod_spec_of(k) for k in maps), "pod specs are covered too"
    for key, env in maps.items():
        assert set(env) == set(ENV), key
        assert all(is_token(v) for v in env.values()), key
        assert Secrets(KEY).open_env(env) == ENV
    assert sid


async def test_admins_see_env_in_clear_and_read_tokens_see_stars_everywhere(
    api: Client, etcd: RawEtcd, node: Node
) -> None:
    pid = await project(api)
    sid = await service(api, pid)
    svc = f"/api/projects/{pid}/services/{sid}"

    async def deployed() -> bool:
        return bool(await dump(etcd, keys.revisions(pid, sid)))

    await eventually(deployed, 15)
    package = {"type": "docker", "image": "busybox", "relationships": {"app": {"guid": sid}}}
    package_guid = (await call(api, "POST", "/v3/packages", 201, json=package))["guid"]
    staged = {"environment_variables": ENV, "lifecycle": {"type": "docker", "data": {}}}
    droplet = await call(api, "POST", f"/v3/packages/{package_guid}/droplets", 201, json=staged)
    views = {
        "service": (svc, lambda b: b["config"]["env"]),
        "services": (f"/api/projects/{pid}/services", lambda b: b["resources"][0]["config"]["env"]),
        "config": (f"{svc}/config", lambda b: b["env"]),
        "revisions": (f"{svc}/revisions", lambda b: b["resources"][0]["spec"]["env"]),
        "app": (f"/v3/apps/{sid}", lambda b: b["environment_variables"]),
        "apps": ("/v3/apps", lambda b: b["resources"][0]["environment_variables"]),
        "droplet": (f"/v3/droplets/{droplet['guid']}", lambda b: b["environment_variables"]),
        "droplets": ("/v3/droplets", lambda b: b["resources"][0]["environment_variables"]),
    }
    for name, (path, env_of) in views.items():
        assert env_of(await call(api, "GET", path, 200)) == ENV, name
        resp = await api.get(path, headers=AS_READER)
        text = await resp.text()
        assert resp.status == 200, text
        assert env_of(json.loads(text)) == STARS, name
        assert not any(c in text for c in CLEAR), name
    # a write answers with the same view: the admin's own PATCH shows clear values
    patched = await call(api, "PATCH", f"{svc}/config", 200, json={"replicas": 2})
    assert patched["env"] == ENV


async def test_the_event_stream_shows_env_by_role(api: Client, etcd: RawEtcd) -> None:
    streams = {}
    for role, headers in (("admin", AS_ADMIN), ("read", AS_READER)):
        resp = await api.get("/api/events", headers=headers, params={"prefix": "projects/"})
        assert resp.status == 200
        streams[role] = resp
        assert (await next_event(resp))[1]["revision"] > 0  # hello
    pid = await project(api)
    sid = await service(api, pid)
    last = await etcd.status()
    for role, resp in streams.items():
        seen = await events_through(resp, last)
        (config,) = [e for e in seen if e["key"] == keys.service_part(pid, sid, "config")]
        assert config["object"]["env"] == (ENV if role == "admin" else STARS), role
        resp.close()


async def next_event(resp: aiohttp.ClientResponse) -> tuple[str | None, Any]:
    """The next SSE message: its id and its data."""
    event_id, data = None, None
    async with asyncio.timeout(10):
        while True:
            line = (await resp.content.readline()).decode().rstrip("\n")
            if line.startswith("id: "):
                event_id = line[len("id: ") :]
            elif line.startswith("data: "):
                data = json.loads(line[len("data: ") :])
            elif not line and data is not None:
                return event_id, data


async def events_through(resp: aiohttp.ClientResponse, revision: int) -> list[Any]:
    """Every event up to the last one of ``revision`` (the one whose id is ``revision``)."""
    seen = []
    while True:
        event_id, data = await next_event(resp)
        seen.append(data)
        if event_id == str(revision):
            return seen


async def test_env_stored_in_clear_before_the_upgrade_reads_and_runs(
    api: Client, etcd: RawEtcd, node: Node
) -> None:
    pid = await project(api)
    sid = await service(api, pid, replicas=0)
    key = keys.service_part(pid, sid, "config")
    legacy = ServiceConfig(image=IMAGE, replicas=1, env=ENV)  # type: ignore[arg-type]
    await etcd.put(key, codec.dumps(legacy))  # as an older version wrote it
    svc = f"/api/projects/{pid}/services/{sid}"
    assert (await call(api, "GET", svc, 200))["config"]["env"] == ENV
    assert (await call(api, "GET", svc, 200, headers=AS_READER))["config"]["env"] == STARS

    async def running() -> bool:
        return bool(node.started)

    await eventually(running, 15)
    assert {k: node.started[0][k] for k in ENV} == ENV

    await call(api, "PATCH", f"{svc}/config", 200, json={"memory": 64})
    stored = json.loads((await dump(etcd))[key])["env"]
    assert all(is_token(v) for v in stored.values()), "the next write encrypts it"


async def test_lastbackend_tree_masks_secret_names_in_any_case(
    etcd: RawEtcd, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    legacy = {"env": {"PASSWORD": DB_PASSWORD, "Token": API_KEY}}
    await etcd.put(keys.ROOT + "projects/p/services/s/config", json.dumps(legacy))
    assert await tree(settings, keys.ROOT, as_json=True) == 0
    out = capsys.readouterr().out
    assert DB_PASSWORD not in out
    assert API_KEY not in out


async def test_an_unchanged_env_keeps_its_tokens_so_nothing_rolls_out(
    api: Client, etcd: RawEtcd
) -> None:
    pid = await project(api)
    sid = await service(api, pid)
    svc = f"/api/projects/{pid}/services/{sid}"
    config = await call(api, "GET", f"{svc}/config", 200)
    before = await etcd.status()
    await call(api, "PUT", f"{svc}/config", 200, json=config)
    await call(api, "PATCH", f"/v3/apps/{sid}", 200, json={"environment_variables": ENV})
    assert await etcd.status() == before, "same values, same tokens: nothing written"


async def test_stars_sent_back_cannot_overwrite_a_value(api: Client, etcd: RawEtcd) -> None:
    pid = await project(api)
    sid = await service(api, pid)
    svc = f"/api/projects/{pid}/services/{sid}"
    before = await dump(etcd)
    shown = await call(api, "GET", f"{svc}/config", 200, headers=AS_READER)
    body = await call(api, "PUT", f"{svc}/config", 422, json=shown)
    detail = body["errors"][0]["detail"]
    assert "config.env['DB_PASSWORD']" in detail
    assert "send the real value" in detail
    body = await call(
        api, "PATCH", f"/v3/apps/{sid}", 422, json={"environment_variables": {"MODE": "***"}}
    )
    assert "environment_variables['MODE']" in body["errors"][0]["detail"]
    assert await dump(etcd) == before


async def test_a_token_copied_into_env_is_not_decrypted_for_anyone(
    api: Client, etcd: RawEtcd
) -> None:
    vendor_token = "ghp_wr1te-only-V3nd0r-t0ken"
    await call(api, "PUT", "/api/vendors/github", 201, json={"token": vendor_token})
    ciphertext = json.loads((await dump(etcd))[keys.vendor("github")])["token"]
    pid = await project(api)
    sid = await service(api, pid)
    svc = f"/api/projects/{pid}/services/{sid}"
    await call(api, "PATCH", f"{svc}/config", 200, json={"env": {"STOLEN": ciphertext}})
    shown = await call(api, "GET", f"{svc}/config", 200)
    assert shown["env"] == {"STOLEN": ciphertext}, "taken as text, not as a token to trust"
    assert vendor_token not in json.dumps(shown)


# where a stored secret is sent -------------------------------------------------------------------


async def test_moving_a_vendor_needs_its_token_again(api: Client, etcd: RawEtcd) -> None:
    connect = {"token": "glpat-0123", "host": "git.corp"}
    await call(api, "PUT", "/api/vendors/gitlab", 201, json=connect)
    before = await dump(etcd)
    for moved in ({"host": "evil.example"}, {"host": "git.corp", "scheme": "http"}, {}):
        body = await call(api, "PUT", "/api/vendors/gitlab", 422, json=moved)
        detail = body["errors"][0]["detail"]
        assert detail.startswith("token: is required again"), detail
        assert "glpat" not in detail
    assert await dump(etcd) == before
    await call(api, "PUT", "/api/vendors/gitlab", 200, json={"host": "git.corp", "username": "u"})
    await call(
        api, "PUT", "/api/vendors/gitlab", 200, json={"host": "evil.example", "token": "glpat-new"}
    )


async def test_moving_a_registry_account_needs_its_password_again(
    api: Client, etcd: RawEtcd
) -> None:
    account = {"host": "reg.corp:5000", "username": "deploy", "password": "s3cret-Reg-9"}
    await call(api, "POST", "/api/registries", 201, json=account)
    before = await dump(etcd)
    body = await call(api, "PATCH", "/api/registries/reg.corp:5000", 422, json={"host": "evil.io"})
    detail = body["errors"][0]["detail"]
    assert detail.startswith("password: is required again"), detail
    assert await dump(etcd) == before
    await call(api, "PATCH", "/api/registries/reg.corp:5000", 200, json={"username": "ci"})
    moved = {"host": "evil.io", "password": "an0ther-Reg-1"}
    await call(api, "PATCH", "/api/registries/reg.corp:5000", 200, json=moved)


# what processes tell about themselves ------------------------------------------------------------


LEADER = "ctl-host-7/4242/beefcafe"


@pytest.fixture
async def readyz(settings: Settings, etcd: RawEtcd) -> AsyncIterator[Any]:
    made: list[Client] = []

    async def start(etcd_client: Any) -> Client:
        controllers = {"services": {"ready": True, "leading": False, "leader": LEADER}}
        app = make_app(settings, etcd_client, families=False, controllers=lambda: controllers)
        client = TestClient(TestServer(app))
        await client.start_server()
        made.append(client)
        return client

    yield start
    for client in made:
        await client.close()


async def test_readyz_tells_a_caller_without_a_token_only_the_status(
    readyz: Any, etcd: RawEtcd
) -> None:
    client = await readyz(etcd)
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        resp = await client.get("/readyz", headers=headers)
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}
    for headers in (AS_ADMIN, AS_READER):
        body = await (await client.get("/readyz", headers=headers)).json()
        assert body["controllers"]["services"]["leader"] == LEADER
        assert body["etcd"]["revision"] > 0

    port = free_port()
    async with RawEtcd([f"127.0.0.1:{port}"], timeout=0.5) as gone:
        client = await readyz(gone)
        resp = await client.get("/readyz")
        assert resp.status == 503
        assert await resp.json() == {"status": "unavailable"}
        body = await (await client.get("/readyz", headers=AS_READER)).json()
        assert body["status"] == "unavailable"
        assert body["etcd"], "a caller with a token is told why"


def test_the_amqp_forwarder_repr_holds_no_credentials() -> None:
    for url, secret in (
        ("amqp://events:Br0ker-Pa55@broker.corp:5672/lb", "Br0ker-Pa55"),
        ("amqps://sas-T0ken-77@bus.example", "sas-T0ken-77"),
        ("amqp://u:pa/ss-0rd@broker", "ss-0rd"),
    ):
        hub = AmqpHub(None, url)
        shown = repr(hub)
        assert secret not in shown, shown
        assert "broker" in shown or "bus.example" in shown
