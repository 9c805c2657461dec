"""Every write a leader makes is fenced: a paused ex-leader's writes fail and change nothing.

Each test makes the controller (or node agent) a leader, then takes its term away the way a long
pause does: its lease goes (revoked here, as etcd would expire it while the process sleeps) and a
successor wins the election. The ex-leader still believes its old term; each of its write paths
is then driven directly and must raise :class:`NotLeader` with the key tree untouched.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from lastbackend import codec
from lastbackend.config import Settings
from lastbackend.controllers.builds import BuildsController, _Job
from lastbackend.controllers.gc import GarbageCollector
from lastbackend.controllers.leader import Fenced, LeaderElection, NotLeader
from lastbackend.controllers.queue import WorkQueue
from lastbackend.controllers.runner import Controller, Elected
from lastbackend.controllers.services import ServicesController
from lastbackend.controllers.staging import StagingController
from lastbackend.lifecycle import descriptor
from lastbackend.model.common import now
from lastbackend.model.platform import Build, Container, Meta, ServiceConfig, ServiceSource
from lastbackend.model.pods import Node, Pod, PodSpec
from lastbackend.model.repos import Repo
from lastbackend.node.agent import LABEL_NODE, LABEL_POD, LABEL_PROJECT, LABEL_SERVICE, NodeAgent
from lastbackend.runtime.base import ContainerState
from lastbackend.secrets import Secrets, generate_key
from lastbackend.sources.blobs import BlobStore
from lastbackend.store import keys
from lastbackend.store.builds import Target
from lastbackend.store.etcd import Op
from lastbackend.store.informer import Informer
from lastbackend.store.repos import Repos
from tests.conftest import dump
from tests.fakeruntime import FakeRuntime
from tests.support import RawEtcd

pytestmark = pytest.mark.etcd

PID = "0b3a2f2e-8f5e-4a4b-9a55-5d0b7f7a1c11"
SID = "1c4b3e3f-9a6f-4b5c-8b66-6e1c8a8b2d22"


async def pause_past_the_term(etcd: RawEtcd, elected: Elected) -> LeaderElection:
    """Make ``elected`` lead, then end its term behind its back; returns the successor."""
    old = LeaderElection(etcd, elected.name, identity="paused", ttl=2)
    await old.campaign()
    elected.election = old
    assert old.lease is not None
    await etcd.revoke(old.lease.id)  # what etcd does to the lease of a process that slept too long
    successor = LeaderElection(etcd, elected.name, identity="successor", ttl=2)
    await successor.campaign()
    assert successor.term != old.term
    return successor


async def _seed_service(etcd: RawEtcd) -> None:
    t = now()
    await etcd.txn(
        [],
        [
            Op.put(keys.project_meta(PID), codec.dumps(Meta("demo", t, t))),
            Op.put(keys.service_part(PID, SID, "meta"), codec.dumps(Meta("web", t, t))),
        ],
    )


def _state(cid: str, pod: str) -> ContainerState:
    labels = {LABEL_NODE: "n1", LABEL_POD: pod, LABEL_PROJECT: PID, LABEL_SERVICE: SID}
    return ContainerState(cid, f"lb-{pod}", "busybox", "running", labels, {}, now())


async def test_the_fenced_handle_has_no_write_but_a_fenced_txn(etcd: RawEtcd) -> None:
    election = LeaderElection(etcd, "probe", ttl=2)
    store = Fenced(election)
    for unfenced in ("put", "delete", "delete_prefix", "compact"):
        assert not hasattr(store, unfenced)
    with pytest.raises(NotLeader):  # never led: no term to write in
        await store.txn([], [Op.put(keys.ROOT + "probe", "x")])
    assert await etcd.get(keys.ROOT + "probe") is None


async def test_a_paused_node_agent_cannot_register_report_or_delete(etcd: RawEtcd) -> None:
    await _seed_service(etcd)
    runtime = FakeRuntime()
    agent = NodeAgent(runtime, Secrets(generate_key()), "n1", probe=runtime.probe)
    reported = keys.container(PID, SID, "c-reported")
    t = now()
    await etcd.txn(
        [], [Op.put(reported, codec.dumps(Container("c-reported", "running", t, t, {}, "p1")))]
    )
    successor = await pause_past_the_term(etcd, agent)
    try:
        before = await dump(etcd)

        with pytest.raises(NotLeader):
            await asyncio.wait_for(agent._register_once(), 10)
        pod = Pod("p2", PID, SID, "n1", "t1", PodSpec(image="busybox"), now())
        with pytest.raises(NotLeader):
            await agent._report(pod, _state("c-new", "p2"))
        with pytest.raises(NotLeader):
            await agent._remove(_state("c-reported", "p1"))

        after = await dump(etcd)
        assert after == before
        assert keys.node("n1") not in after
        assert keys.container(PID, SID, "c-new") not in after
        assert reported in after
    finally:
        await successor.resign()


async def test_a_paused_builds_controller_writes_neither_success_nor_the_tag(
    etcd: RawEtcd, tmp_path: Path, settings: Settings
) -> None:
    await _seed_service(etcd)
    target = Target("service", SID, PID)
    t = now()
    build = Build(status="pushing", created=t, updated=t)
    await etcd.txn([], [Op.put(target.key(1), codec.dumps(build))])
    kv = await etcd.get(target.key(1))
    assert kv is not None
    secrets = Secrets(generate_key())
    controller = BuildsController(FakeRuntime(), secrets, BlobStore(tmp_path), settings)
    successor = await pause_past_the_term(etcd, controller)
    try:
        before = await dump(etcd)
        source = ServiceSource(hub="github", owner="acme", repo="site", branch="main")
        job = _Job(target, 1, build, kv)
        tag = controller._tag(job, source, "r.local/demo/web:1", "r.local", "sha", print)
        assert tag is not None
        with pytest.raises(NotLeader):
            await controller._succeed(job, "r.local/demo/web:1", tag, print)
        assert await dump(etcd) == before
        assert not [k for k in before if k.startswith(keys.REPOS)]
        stored = await etcd.get(target.key(1))
        assert stored is not None
        assert codec.loads(stored.value, Build).status == "pushing"
    finally:
        await successor.resign()


async def _with_synced_informers(controller: Controller, etcd: RawEtcd) -> list[asyncio.Task[None]]:
    """Give ``controller`` the caches a runner would, without a runner (so no guard cancels
    its work when the term ends: it stays "paused" mid-term, as a process would)."""
    informers = {w.prefix: Informer(etcd, w.prefix, to_key=w.to_key) for w in controller.watches()}
    tasks = [asyncio.create_task(i.run()) for i in informers.values()]
    for informer in informers.values():
        await informer.synced.wait()
    controller.informers, controller.queue = informers, WorkQueue()
    return tasks


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_paused_services_controller_schedules_no_pod(etcd: RawEtcd) -> None:
    await _seed_service(etcd)
    t = now()
    config = ServiceConfig(image="busybox", replicas=2, memory=32)
    await etcd.txn(
        [],
        [
            Op.put(keys.service_part(PID, SID, "config"), codec.dumps(config)),
            Op.put(keys.service_part(PID, SID, "image"), "busybox"),
            Op.put(keys.node("n1"), codec.dumps(Node("n1", "n1", 4096, 2, "fake", t))),
        ],
    )
    controller = ServicesController()
    tasks = await _with_synced_informers(controller, etcd)
    successor = await pause_past_the_term(etcd, controller)
    try:
        with pytest.raises(NotLeader):
            await controller.reconcile(f"svc:{PID}/{SID}")
        assert (await etcd.range(keys.PODS)).kvs == []
        assert (await etcd.range(keys.HELPER_PODS)).kvs == []
    finally:
        await _stop(tasks)
        await successor.resign()


async def test_a_paused_garbage_collector_deletes_nothing(etcd: RawEtcd) -> None:
    t = now()
    orphan = keys.container(PID, SID, "c-orphan")
    lonely = keys.pod("lonely-pod")
    await etcd.txn(
        [],
        [
            Op.put(orphan, codec.dumps(Container("c-orphan", "running", t, t, {}, "gone-pod"))),
            Op.put(lonely, keys.owner_value(PID, SID)),
        ],
    )
    controller = GarbageCollector()
    tasks = await _with_synced_informers(controller, etcd)
    successor = await pause_past_the_term(etcd, controller)
    try:
        before = await dump(etcd)
        with pytest.raises(NotLeader):
            await controller.reconcile("sweep")
        assert await dump(etcd) == before
        assert orphan in before
        assert lonely in before
    finally:
        await _stop(tasks)
        await successor.resign()


async def test_a_paused_staging_controller_does_not_publish_its_descriptor(
    etcd: RawEtcd, tmp_path: Path, settings: Settings
) -> None:
    await etcd.txn([], [Op.delete(keys.LIFECYCLE_DESCRIPTOR)])
    controller = StagingController(
        FakeRuntime(), Secrets(generate_key()), BlobStore(tmp_path), settings, descriptor.load()
    )
    successor = await pause_past_the_term(etcd, controller)
    try:
        with pytest.raises(NotLeader):
            await controller.started()
        assert await etcd.get(keys.LIFECYCLE_DESCRIPTOR) is None
    finally:
        await successor.resign()


async def test_a_paused_controllers_repository_writes_are_fenced_too(etcd: RawEtcd) -> None:
    """Repositories given the leader's handle (the builds controller's ``Repos``) write fenced."""
    controller = BuildsController(
        FakeRuntime(), Secrets(generate_key()), BlobStore(Path("/nonexistent")), Settings()
    )
    successor = await pause_past_the_term(etcd, controller)
    try:
        before = await dump(etcd)
        with pytest.raises(NotLeader):
            await Repos(controller.store).put(("acme.site",), Repo())
        assert await dump(etcd) == before
    finally:
        await successor.resign()
