"""Faults of every lastbackend process kind in the whole cluster, under writes and routed load.

One :class:`~tests.cluster.harness.Cluster` for the module, on the 3-member TLS etcd cluster.
Each test breaks one process while :class:`~tests.cluster.harness.Writer` writes through both
API processes and :class:`~tests.cluster.harness.RouterLoad` sends requests through both
routers, then checks what a user would: every acknowledged write is in the tree exactly once and
nothing else is half there, no pod runs twice on the two engines, the containers converge to the
desired count (the time is printed), and >= 99.9% of the requests were answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import docker
import pytest

from tests.baseimage import BASE_IMAGE, NoStaticBusybox, ensure_base_image
from tests.cluster.etcd_cluster import EtcdCluster
from tests.cluster.harness import (
    EVICTION,
    REPLICAS,
    Cluster,
    Engine,
    RouterLoad,
    Writer,
    answered_by,
)
from tests.e2e.conftest import DEFAULT_URL, _answers, api_client, extra_engine
from tests.e2e.harness import LABEL_TEMPLATE, Harness, eventually
from tests.e2e.test_apps import SITE, V3, zip_of
from tests.e2e.test_nodes import NODE_TTL, pods_of
from tests.integration.test_daemon import alive, children
from tests.support import RawEtcd

pytestmark = [pytest.mark.cluster, pytest.mark.docker, pytest.mark.etcd]

BRIDGE, ADDRESS = "lbcl0", "10.213.9.1/24"
AIM = 0.999


@pytest.fixture(scope="module")
def engines(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[tuple[str, docker.APIClient]]]:
    """This machine's engine and one more of the cluster's own, both holding the base image."""
    url = os.environ.get("DOCKER_HOST") or DEFAULT_URL
    if not _answers(url):
        pytest.skip(f"no Docker engine answers at {url}")
    if shutil.which("caddy") is None:
        pytest.skip("caddy is not installed (Debian: caddy)")
    with contextlib.closing(api_client(url)) as first:
        try:
            ensure_base_image(first)
        except NoStaticBusybox as exc:
            pytest.skip(str(exc))
        with (
            extra_engine(url, [BASE_IMAGE], BRIDGE, ADDRESS) as second_url,
            contextlib.closing(api_client(second_url)) as second,
        ):
            yield [(url, first), (second_url, second)]


@pytest.fixture(scope="module")
def cluster(
    etcd_cluster_module: EtcdCluster,
    engines: list[tuple[str, docker.APIClient]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("cluster")
    h = Harness(tmp, engines[0][0], engines[0][1])
    nodes = [Engine(url, api, f"{h.node}-{i}") for i, (url, api) in enumerate(engines)]
    flags = etcd_cluster_module.flags()
    c = Cluster(h, flags[1], nodes, flags[2:])
    try:
        asyncio.run(c.start())
        yield c
    finally:
        c.cleanup()


@pytest.fixture
async def etcd(etcd_cluster: EtcdCluster) -> AsyncIterator[RawEtcd]:
    async with RawEtcd(etcd_cluster.endpoints, tls=etcd_cluster.tls) as client:
        yield client


def report(what: str, load: RouterLoad, writer: Writer | None, converged: float) -> None:
    wrote = f"; {writer.figure()}" if writer is not None else ""
    print(f"\n{what}: {load.figure()}{wrote}; converged in {converged:.1f} s")


def check_load(load: RouterLoad) -> None:
    assert load.sent > 100, "the load was steady"
    assert load.answered >= AIM, f"{load.figure()}: {load.failures[:10]}"


async def test_kill_9_of_an_api_process_mid_writes_loses_no_acknowledged_write(
    cluster: Cluster, etcd: RawEtcd
) -> None:
    c = cluster
    async with RouterLoad(c.router_ports) as load, Writer(c, "api-kill") as writer:
        await asyncio.sleep(3)
        victim = c.apis[0]
        victim.kill()
        fault = time.monotonic()
        await asyncio.sleep(4)  # writes go on, on the other API alone
        c.apis[0] = c.start_api()
        await c.h.ready(c.apis[0], within=60)
        await asyncio.sleep(3)  # and on both again
    await writer.verify(etcd)
    converged = await c.converge(30, since=fault)
    report("kill -9 api", load, writer, converged)
    assert writer.acknowledged > 50, writer.figure()
    assert writer.failovers >= 1, "a write went to the killed API and failed over"
    assert not c.twice()
    check_load(load)


async def test_kill_9_of_the_leading_controller_mid_rollout_the_standby_completes_it(
    cluster: Cluster, etcd: RawEtcd
) -> None:
    c = cluster
    leader = await eventually(lambda: c.leading("services"), 30, "a services leader")
    before = {cid["Labels"][LABEL_TEMPLATE] for cid in c.containers()}
    revision = (await c.rollout()).get("revision", 0)
    async with RouterLoad(c.router_ports) as load, Writer(c, "rollout-kill") as writer:
        await c.patch({"env": {"VERSION": "rollout-kill"}})
        await eventually(lambda: c.rollout_is("progressing", revision + 1), 10, "the rollout")
        leader.kill()
        fault = time.monotonic()
        c.controllers[c.controllers.index(leader)] = c.start_controller()
        standby = await eventually(
            lambda: c.leading("services", not_pid=leader.pid), 30, "the standby to lead"
        )
        await eventually(
            lambda: c.rollout_is("complete", revision + 1), 60, "the rollout to complete"
        )
        converged = await c.converge(60, since=fault)
    await writer.verify(etcd)
    report("kill -9 services leader mid-rollout", load, writer, converged)
    after = {cid["Labels"][LABEL_TEMPLATE] for cid in c.containers()}
    assert len(after) == 1, after
    assert after != before, before
    assert standby.pid != leader.pid
    assert not c.twice()
    check_load(load)


def busiest(c: Cluster) -> Engine:
    """The engine running the most of the app's containers."""
    counts = Counter(con["engine"] for con in c.containers())
    return max(c.engines, key=lambda e: counts[e.node])


async def test_sigstop_of_a_node_agent_within_its_lease_restarts_nothing(
    cluster: Cluster, etcd: RawEtcd
) -> None:
    c = cluster
    engine = busiest(c)
    before = sorted(con["Id"] for con in c.containers())
    async with RouterLoad(c.router_ports) as load, Writer(c, "node-pause") as writer:
        os.kill(c.nodes[engine.node].pid, signal.SIGSTOP)
        fault = time.monotonic()
        await asyncio.sleep(10)  # well inside the node lease (30 s): the node is never lost
        os.kill(c.nodes[engine.node].pid, signal.SIGCONT)
        await asyncio.sleep(5)
        converged = await c.converge(30, since=fault)
    await writer.verify(etcd)
    report(f"SIGSTOP node {engine.node} 10 s", load, writer, converged)
    assert sorted(con["Id"] for con in c.containers()) == before, "the same containers"
    reported = await c.reported()
    assert all(con["restarts"] == 0 for con in reported), reported
    assert not c.twice()
    check_load(load)


async def test_sigstop_past_the_eviction_timeout_moves_pods_and_the_agent_back_removes_its_own(
    cluster: Cluster, etcd: RawEtcd
) -> None:
    c = cluster
    engine = busiest(c)
    other = next(e for e in c.engines if e is not engine)
    stranded = sorted(con["Id"] for con in c.containers() if con["engine"] == engine.node)
    assert stranded, c.explain()
    async with RouterLoad(c.router_ports) as load, Writer(c, "node-lost") as writer:
        os.kill(c.nodes[engine.node].pid, signal.SIGSTOP)
        fault = time.monotonic()

        async def moved() -> bool:
            there = [x for x in c.containers() if x["engine"] == other.node]
            return len(there) == REPLICAS and not await pods_of(etcd, engine.node)

        # the node lease (30 s) runs out, then the eviction timeout: the pods are made again
        # on the other engine, and the lost ones deleted once those serve (a node back before
        # then keeps its pods, and the newest extra ones go: not what this test is about)
        await eventually(moved, NODE_TTL + EVICTION + 45, "the pods on the other engine")
        moved_after = time.monotonic() - fault
        still = sorted(con["Id"] for con in c.containers() if con["engine"] == engine.node)
        assert still == stranded, "nobody stopped the frozen node's containers"
        os.kill(c.nodes[engine.node].pid, signal.SIGCONT)
        thawed = time.monotonic()
        converged = await c.converge(60, since=thawed)
    await writer.verify(etcd)
    report(
        f"SIGSTOP node {engine.node} past eviction (moved after {moved_after:.1f} s)",
        load,
        writer,
        converged,
    )
    assert all(con["engine"] == other.node for con in c.containers()), c.explain()
    assert not c.twice()
    check_load(load)


async def test_kill_9_of_a_routers_caddy_the_router_starts_it_again(
    cluster: Cluster, etcd: RawEtcd
) -> None:
    c = cluster
    router, port = c.routers[0], c.router_ports[0]
    (caddy,) = children(router.pid, "caddy")
    wanted = {con["Id"][:12] for con in c.containers()}
    async with RouterLoad(c.router_ports) as load, Writer(c, "caddy-kill") as writer:
        await asyncio.sleep(2)
        os.kill(caddy, signal.SIGKILL)
        fault = time.monotonic()
        again = await eventually(
            lambda: [p for p in children(router.pid, "caddy") if p != caddy], 30, "a new Caddy"
        )

        async def serving() -> bool:
            return await answered_by(port) == wanted

        await eventually(serving, 30, "the router to serve again", explain=router.tail)
        back = time.monotonic() - fault
        await asyncio.sleep(2)
    await writer.verify(etcd)
    report(f"kill -9 caddy (back after {back:.1f} s)", load, writer, back)
    assert again, "the router started Caddy again"
    assert router.alive
    check_load(load)


async def test_kill_9_of_a_router_process_the_other_router_answers(
    cluster: Cluster, etcd: RawEtcd
) -> None:
    c = cluster
    router, port = c.routers[1], c.router_ports[1]
    (caddy,) = children(router.pid, "caddy")
    wanted = {con["Id"][:12] for con in c.containers()}
    async with RouterLoad(c.router_ports) as load, Writer(c, "router-kill") as writer:
        await asyncio.sleep(2)
        router.kill()
        fault = time.monotonic()
        await eventually(lambda: not alive(caddy), 10, "its Caddy to go with it")
        await asyncio.sleep(3)  # the other router alone
        alone = await answered_by(c.router_ports[0])
        c.routers[1] = c.start_router(1)
        await c.h.ready(c.routers[1], within=60)

        async def serving() -> bool:
            return await answered_by(port) == wanted

        await eventually(serving, 30, "the restarted router to serve", explain=c.routers[1].tail)
        back = time.monotonic() - fault
        await asyncio.sleep(2)
    await writer.verify(etcd)
    report(f"kill -9 router (back after {back:.1f} s)", load, writer, back)
    assert alone == wanted, "the other router answered from every container meanwhile"
    assert load.retried > 0, "requests sent to the killed router were retried"
    check_load(load)


async def test_kill_9_of_the_staging_leader_mid_staging_the_standby_stages_it_again(
    cluster: Cluster, etcd: RawEtcd
) -> None:
    c = cluster
    v3 = V3(c.h, c.api())
    _, app = await v3.app("stage-kill")
    body = {"type": "bits", "relationships": {"app": {"guid": app}}}
    package = await v3.call("POST", "/v3/packages", body, 201)
    await v3.upload(package["guid"], zip_of({"index.html": SITE}))
    leader = await eventually(lambda: c.leading("staging"), 30, "a staging leader")
    async with RouterLoad(c.router_ports) as load, Writer(c, "staging-kill") as writer:
        droplet = await v3.call("POST", f"/v3/packages/{package['guid']}/droplets", {}, 201)
        path = f"/v3/droplets/{droplet['guid']}"

        async def staging() -> bool:
            return bool((await v3.call("GET", path))["state"] == "STAGING")

        await eventually(staging, 30, "the droplet staging", interval=0.02)
        leader.kill()
        fault = time.monotonic()
        c.controllers[c.controllers.index(leader)] = c.start_controller()
        staged = await v3.staged(droplet["guid"], within=120)
        took = time.monotonic() - fault
    await writer.verify(etcd)
    report(f"kill -9 staging leader mid-staging (staged after {took:.1f} s)", load, writer, took)
    assert staged["state"] == "STAGED", staged
    assert "Staging restarted (the previous run was cut off)" in await v3.logs(droplet["guid"])
    standby = await c.leading("staging")
    assert standby is not None
    assert standby.pid != leader.pid
    check_load(load)
