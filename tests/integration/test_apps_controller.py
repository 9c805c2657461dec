"""Starting and stopping an app drives the services controller (real etcd, fake runtime).

The droplet is written straight into etcd as the staging controller leaves it; the API, the
services controller and a node agent are real, the container runtime is the fake one.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from lastbackend import codec
from lastbackend.controllers.runner import ControllerRunner
from lastbackend.controllers.services import ServicesController
from lastbackend.model.apps import BuildpackLifecycle, Droplet
from lastbackend.model.pods import Pod
from lastbackend.node.agent import NodeAgent
from lastbackend.runtime.base import NodeCapacity
from lastbackend.secrets import Secrets, generate_key
from lastbackend.store import keys
from tests.fakeruntime import FakeRuntime
from tests.support import RawEtcd, eventually

pytestmark = pytest.mark.etcd

Client = TestClient[Any, Any]
IMAGE = "registry.local/droplets/web:1"
NEXT = "registry.local/droplets/web:2"


@pytest.fixture
async def runtime(etcd: RawEtcd) -> AsyncIterator[FakeRuntime]:
    """One node agent on the fake runtime and the services controller, both leading."""
    fake = FakeRuntime(images=[IMAGE, NEXT], capacity=NodeCapacity(4096, 2, "n1", "fake"))
    runners = [
        ControllerRunner(
            NodeAgent(fake, Secrets(generate_key()), "n1", probe=fake.probe), etcd, lease_ttl=2
        ),
        ControllerRunner(ServicesController(), etcd, lease_ttl=2),
    ]
    for runner in runners:
        runner.start()
    yield fake
    for runner in reversed(runners):
        await runner.stop(grace=1)


async def staged_droplet(etcd: RawEtcd, pid: str, sid: str, image: str) -> str:
    guid = str(uuid.uuid4())
    when = datetime(2026, 1, 1, tzinfo=UTC)
    droplet = Droplet(
        when, when, str(uuid.uuid4()), BuildpackLifecycle(), state="STAGED", image=image
    )
    await etcd.put(keys.droplet(pid, sid, guid), codec.dumps(droplet))
    await etcd.put(keys.droplet_owner(guid), f"{pid}:{sid}")
    return guid


async def pods(etcd: RawEtcd) -> list[Pod]:
    return [codec.loads(kv.value, Pod) for kv in (await etcd.range(keys.PODS)).kvs]


async def running(runtime: FakeRuntime) -> list[Any]:
    return [s for s in await runtime.list({}) if s.running]


async def test_stop_removes_the_pods_and_start_brings_them_back(
    runtime: FakeRuntime, api: Client, etcd: RawEtcd
) -> None:
    resp = await api.post("/api/projects", json={"name": "demo"})
    pid = (await resp.json())["id"]
    body = {"name": "web", "relationships": {"space": {"guid": pid}}}
    guid = (await (await api.post("/v3/apps", json=body)).json())["guid"]
    await api.patch(f"/api/projects/{pid}/services/{guid}/config", json={"replicas": 2})
    droplet = await staged_droplet(etcd, pid, guid, IMAGE)
    resp = await api.patch(
        f"/v3/apps/{guid}/relationships/current_droplet", json={"data": {"guid": droplet}}
    )
    assert resp.status == 200, await resp.text()
    assert await pods(etcd) == []  # created STOPPED: nothing runs

    async def serving(image: str) -> list[Any]:
        found = await running(runtime)
        ok = len(found) == 2 and {s.image for s in found} == {image}
        return found if ok and len(await pods(etcd)) == 2 else []

    assert (await api.post(f"/v3/apps/{guid}/actions/start")).status == 200
    first = await eventually(lambda: serving(IMAGE))
    for pod in await pods(etcd):
        assert pod.spec.ports == {"8080/TCP": 0}
        assert pod.spec.command == ""

    async def gone() -> bool:
        return not await pods(etcd) and not await running(runtime)

    assert (await api.post(f"/v3/apps/{guid}/actions/stop")).status == 200
    await eventually(gone)

    assert (await api.post(f"/v3/apps/{guid}/actions/start")).status == 200
    again = await eventually(lambda: serving(IMAGE))
    assert {s.id for s in again}.isdisjoint({s.id for s in first})

    # A new current droplet for a started app rolls the pods onto its image.
    second = await staged_droplet(etcd, pid, guid, NEXT)
    resp = await api.patch(
        f"/v3/apps/{guid}/relationships/current_droplet", json={"data": {"guid": second}}
    )
    assert resp.status == 200
    await eventually(lambda: serving(NEXT), within=15)
