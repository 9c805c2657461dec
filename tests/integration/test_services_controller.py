"""The services controller and node agents together, on real etcd, with the fake runtime.

The fake runtime stands behind the runtime seam only (the e2e tests drive real Docker); etcd,
the API, the controllers, their elections and informers are all real.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from lastbackend import codec
from lastbackend.controllers.leader import LeaderElection
from lastbackend.controllers.queue import WorkQueue
from lastbackend.controllers.runner import ControllerRunner
from lastbackend.controllers.services import ServicesController
from lastbackend.model.pods import Node, Pod
from lastbackend.node.agent import LABEL_POD, NodeAgent
from lastbackend.runtime.base import NodeCapacity
from lastbackend.secrets import Secrets
from lastbackend.store import keys
from lastbackend.store.informer import Informer
from tests.fakeruntime import FakeRuntime
from tests.support import TEST_KEY, RawEtcd, eventually

pytestmark = pytest.mark.etcd

IMAGE = "registry.local/team/web:1"


class Cluster:
    def __init__(self, etcd: RawEtcd) -> None:
        self.etcd = etcd
        self.runners: list[ControllerRunner] = []
        self.runtimes: dict[str, FakeRuntime] = {}
        self.secrets = Secrets(TEST_KEY)

    def start(self, controller: Any) -> ControllerRunner:
        runner = ControllerRunner(controller, self.etcd, lease_ttl=2)
        runner.start()
        self.runners.append(runner)
        return runner

    def node(
        self, name: str, memory: int = 4096, *, ttl: int = 30
    ) -> tuple[ControllerRunner, FakeRuntime]:
        runtime = FakeRuntime(
            images=[IMAGE, "registry.local/team/web:2"],
            capacity=NodeCapacity(memory, 2, name, "fake"),
        )
        self.runtimes[name] = runtime
        agent = NodeAgent(runtime, self.secrets, name, node_ttl=ttl, probe=runtime.probe)
        return self.start(agent), runtime

    async def stop(self) -> None:
        for runner in reversed(self.runners):
            await runner.stop(grace=1)

    async def pods(self) -> list[Pod]:
        found = await self.etcd.range(keys.PODS)
        return [codec.loads(kv.value, Pod) for kv in found.kvs]

    async def running(self) -> list[Any]:
        out = []
        for runtime in self.runtimes.values():
            out += [s for s in await runtime.list({}) if s.running]
        return out


@pytest.fixture
async def cluster(etcd: RawEtcd) -> AsyncIterator[Cluster]:
    c = Cluster(etcd)
    yield c
    await c.stop()


async def make_service(api: TestClient[Any, Any], replicas: int, **config: Any) -> str:
    assert (await api.post("/api/projects", json={"name": "demo"})).status == 201
    body = {"name": "web", "config": {"image": IMAGE, "replicas": replicas, **config}}
    resp = await api.post("/api/projects/demo/services", json=body)
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["id"])


async def test_replicas_become_pods_and_running_containers(cluster: Cluster, api: Any) -> None:
    cluster.node("n1")
    cluster.start(ServicesController())
    sid = await make_service(api, 3, ports={"8080/TCP": 0})

    async def three_running() -> bool:
        return len(await cluster.running()) == 3

    await eventually(three_running)
    pods = await cluster.pods()
    assert {p.service for p in pods} == {sid}
    for p in pods:  # helper/pods/<pod id> -> <pid>:<sid>
        helper = await cluster.etcd.get(keys.pod(p.id))
        assert helper is not None
        assert helper.value.decode() == f"{p.project}:{sid}"

    async def containers_reported() -> list[Any]:
        resp = await api.get("/api/projects/demo/services/web/containers")
        items = (await resp.json())["resources"]
        return items if len(items) == 3 and all(c["status"] == "running" for c in items) else []

    items = await eventually(containers_reported)
    assert {c["pod"] for c in items} == {p.id for p in pods}
    assert all(c["ports"]["8080/TCP"] > 0 for c in items)


async def test_scale_down_and_up(cluster: Cluster, api: Any) -> None:
    cluster.node("n1")
    cluster.start(ServicesController())
    await make_service(api, 3)
    await eventually(lambda: _count(cluster, 3))
    before = {p.id: p.created for p in await cluster.pods()}
    await api.patch("/api/projects/demo/services/web/config", json={"replicas": 1})
    await eventually(lambda: _count(cluster, 1))
    (kept,) = await cluster.pods()
    assert kept.created == min(before.values())  # the newest went first
    await api.patch("/api/projects/demo/services/web/config", json={"replicas": 2})
    await eventually(lambda: _count(cluster, 2))


async def _count(cluster: Cluster, n: int) -> bool:
    return len(await cluster.pods()) == n and len(await cluster.running()) == n


async def test_a_killed_container_is_replaced(cluster: Cluster, api: Any) -> None:
    _, runtime = cluster.node("n1")
    cluster.start(ServicesController())
    await make_service(api, 1)
    (first,) = await eventually(cluster.running)
    runtime.kill(first.id)

    async def replaced() -> list[Any]:
        now = await cluster.running()
        return now if now and now[0].id != first.id else []

    (second,) = await eventually(replaced)
    assert second.labels[LABEL_POD] == first.labels[LABEL_POD]  # same pod, new container


async def test_image_change_rolls_without_dropping_below_replicas(
    cluster: Cluster, api: Any
) -> None:
    cluster.node("n1")
    cluster.start(ServicesController())
    await make_service(api, 2)
    await eventually(lambda: _count(cluster, 2))
    floor = 2
    seen: list[int] = []
    resp = await api.patch(
        "/api/projects/demo/services/web/config", json={"image": "registry.local/team/web:2"}
    )
    assert resp.status == 200

    async def rolled() -> bool:
        running = await cluster.running()
        seen.append(len(running))
        images = {s.image for s in running}
        return len(running) == 2 and images == {"registry.local/team/web:2"}

    await eventually(rolled, within=15)
    assert min(seen) >= floor, seen


async def test_pods_of_a_lost_node_move_to_a_live_one(cluster: Cluster, api: Any) -> None:
    runner1, _ = cluster.node("n1", memory=4096, ttl=2)
    cluster.start(ServicesController(eviction_timeout=1))
    await make_service(api, 2)
    await eventually(lambda: _count(cluster, 2))
    cluster.node("n2", memory=4096)
    await runner1.stop(grace=0)  # the agent goes; its node key expires with its lease (2 s)

    async def moved() -> bool:
        pods = await cluster.pods()
        return len(pods) == 2 and {p.node for p in pods} == {"n2"}

    await eventually(moved, within=20)


async def test_a_node_back_within_the_eviction_timeout_keeps_its_containers(
    cluster: Cluster, api: Any
) -> None:
    runner1, runtime = cluster.node("n1", memory=4096, ttl=2)
    cluster.start(ServicesController(eviction_timeout=60))
    await make_service(api, 2)
    await eventually(lambda: _count(cluster, 2))
    pods = {p.id for p in await cluster.pods()}
    containers = {s.id for s in await runtime.list({}) if s.running}
    cluster.node("n2", memory=4096)
    await runner1.stop(grace=0)  # the agent goes; its node key expires with its lease (2 s)

    async def key_gone() -> bool:
        return await cluster.etcd.get(keys.node("n1")) is None

    await eventually(key_gone, within=10)
    await asyncio.sleep(1.0)  # the controller has seen the node go
    assert {p.id for p in await cluster.pods()} == pods, "the pods wait for their node"
    agent = NodeAgent(runtime, cluster.secrets, "n1", node_ttl=2, probe=runtime.probe)
    cluster.start(agent)  # back, on the same engine

    async def back() -> bool:
        return await cluster.etcd.get(keys.node("n1")) is not None

    await eventually(back, within=10)
    await asyncio.sleep(1.0)
    assert {p.id for p in await cluster.pods()} == pods
    assert {s.id for s in await runtime.list({}) if s.running} == containers, "untouched"


async def test_deleting_the_service_removes_pods_and_containers(cluster: Cluster, api: Any) -> None:
    cluster.node("n1")
    cluster.start(ServicesController())
    await make_service(api, 2)
    await eventually(lambda: _count(cluster, 2))
    assert (await api.delete("/api/projects/demo")).status == 204

    async def gone() -> bool:
        left = await cluster.etcd.range(keys.ROOT)
        kept = (keys.NODES, keys.LEADERS, keys.INSTALLATION)  # the platform's, not the service's
        stray = [kv.key for kv in left.kvs if not kv.key.startswith(kept)]
        return not stray and not await cluster.running()

    await eventually(gone)


async def test_memory_decides_the_node(cluster: Cluster, api: Any) -> None:
    cluster.node("small", memory=256)
    cluster.node("big", memory=2048)
    cluster.start(ServicesController())
    await make_service(api, 3, memory=512)
    await eventually(lambda: _count(cluster, 3))
    assert {p.node for p in await cluster.pods()} == {"big"}


async def test_a_reconcile_ahead_of_the_pods_cache_waits_instead_of_doubling(
    etcd: RawEtcd, api: Any
) -> None:
    """Freeze the pods informer after the first pod is written: the next reconcile of the
    service sees a cache without that pod, and must wait for it rather than make another."""
    controller = ServicesController()
    election = LeaderElection(etcd, "services", ttl=5)
    await election.campaign()
    informers = {w.prefix: Informer(etcd, w.prefix, to_key=w.to_key) for w in controller.watches()}
    tasks = {p: asyncio.create_task(i.run()) for p, i in informers.items()}
    try:
        node = Node("n1", "n1", 4096, 2, "fake", datetime.now(UTC))
        await etcd.put(keys.node("n1"), codec.dumps(node))
        sid = await make_service(api, 1)
        pid = (await (await api.get("/api/projects/demo")).json())["id"]
        for informer in informers.values():
            await informer.synced.wait()
        await eventually(
            lambda: _has(informers[keys.PROJECTS], keys.service_part(pid, sid, "image"))
        )
        await eventually(lambda: _has(informers[keys.NODES], keys.node("n1")))
        controller.informers, controller.queue, controller.election = (
            informers, WorkQueue(), election,
        )  # fmt: skip
        tasks[keys.PODS].cancel()  # from now on the pods cache trails etcd
        first = await controller.reconcile(f"svc:{pid}/{sid}")
        assert first is not None
        assert first > 60  # the rollout's deadline, nothing sooner
        assert len((await etcd.range(keys.PODS)).kvs) == 1
        again = await controller.reconcile(f"svc:{pid}/{sid}")
        assert again is not None
        assert again < 1  # asked to be looked at again soon: the pods cache is behind
        assert len((await etcd.range(keys.PODS)).kvs) == 1, "a second pod was made"
    finally:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        await election.resign()


async def _has(informer: Informer, key: str) -> bool:
    return informer.get(key) is not None
