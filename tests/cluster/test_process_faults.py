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
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker
import pytest

from tests.baseimage import BASE_IMAGE, NoStaticBusybox, ensure_base_image
from tests.cluster import faults
from tests.cluster.etcd_cluster import EtcdCluster
from tests.cluster.harness import (
    Cluster,
    Engine,
    RouterLoad,
    Writer,
)
from tests.e2e.conftest import DEFAULT_URL, _answers, api_client, extra_engine
from tests.e2e.harness import Harness
from tests.e2e.test_builds import INTERRUPTED, TOKEN, USER
from tests.gitserver import GitServer
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


def report(what: str, load: RouterLoad, writer: Writer, healed: faults.Healed) -> None:
    print(f"\n{what}: {load.figure()}; {writer.figure()}; converged in {healed.seconds:.1f} s")


def check_load(load: RouterLoad) -> None:
    assert load.sent > 100, "the load was steady"
    assert load.answered >= AIM, f"{load.figure()}: {load.failures[:10]}"


async def test_kill_9_of_an_api_process_mid_writes_loses_no_acknowledged_write(
    cluster: Cluster, etcd: RawEtcd
) -> None:
    c = cluster
    async with RouterLoad(c.router_ports) as load, Writer(c, "api-kill") as writer:
        await asyncio.sleep(3)
        healed = await faults.kill_api(c)
        await asyncio.sleep(3)  # and on both again
    await writer.verify(etcd)
    report("kill -9 api", load, writer, healed)
    assert writer.acknowledged > 50, writer.figure()
    assert writer.failovers >= 1, "a write went to the killed API and failed over"
    assert not c.twice()
    check_load(load)


async def test_kill_9_of_the_leading_controller_mid_rollout_the_standby_completes_it(
    cluster: Cluster, etcd: RawEtcd
) -> None:
    c = cluster
    async with RouterLoad(c.router_ports) as load, Writer(c, "rollout-kill") as writer:
        healed = await faults.kill_services_leader_mid_rollout(c, "rollout-kill")
    await writer.verify(etcd)
    report("kill -9 services leader mid-rollout", load, writer, healed)
    seen = healed.seen
    assert len(seen["after"]) == 1, seen
    assert seen["after"] != seen["before"], "the containers run the new template"
    assert seen["standby"] != seen["leader"]
    assert not c.twice()
    check_load(load)


async def test_kill_9_of_the_staging_leader_mid_staging_the_standby_stages_it_again(
    cluster: Cluster, etcd: RawEtcd
) -> None:
    c = cluster
    async with RouterLoad(c.router_ports) as load, Writer(c, "staging-kill") as writer:
        healed = await faults.kill_staging_leader_mid_staging(c, "stage-kill")
    await writer.verify(etcd)
    report("kill -9 staging leader mid-staging", load, writer, healed)
    seen = healed.seen
    assert seen["staged"]["state"] == "STAGED", seen["staged"]
    assert "Staging restarted (the previous run was cut off)" in seen["log"]
    assert seen["standby"] not in (None, seen["leader"]), seen
    check_load(load)


@pytest.fixture
async def git(tmp_path: Path) -> AsyncIterator[GitServer]:
    server = GitServer(tmp_path / "git", USER, TOKEN)
    await server.start()
    yield server
    await server.stop()


async def test_kill_9_of_the_builds_leader_mid_build_ends_it_failed_and_the_next_one_builds(
    cluster: Cluster, etcd: RawEtcd, git: GitServer
) -> None:
    c = cluster
    async with RouterLoad(c.router_ports) as load, Writer(c, "build-kill") as writer:
        healed = await faults.kill_builds_leader_mid_build(c, git)
    await writer.verify(etcd)
    report("kill -9 builds leader mid-build", load, writer, healed)
    seen = healed.seen
    assert (seen["interrupted"]["status"], seen["interrupted"]["message"]) == (
        "failed",
        INTERRUPTED,
    )
    assert "Build failed: interrupted" in seen["log"]
    assert seen["again"]["status"] == "success", seen["again"]
    check_load(load)


async def test_sigstop_of_a_node_agent_within_its_lease_restarts_nothing(
    cluster: Cluster, etcd: RawEtcd
) -> None:
    c = cluster
    async with RouterLoad(c.router_ports) as load, Writer(c, "node-pause") as writer:
        healed = await faults.freeze_node(c, 10)
    await writer.verify(etcd)
    report(f"SIGSTOP node {healed.seen['node']} 10 s", load, writer, healed)
    assert sorted(con["Id"] for con in c.containers()) == healed.seen["before"], "the same ones"
    reported = await c.reported()
    assert all(con["restarts"] == 0 for con in reported), reported
    assert not c.twice()
    check_load(load)


async def test_sigstop_past_the_eviction_timeout_moves_pods_and_the_agent_back_removes_its_own(
    cluster: Cluster, etcd: RawEtcd
) -> None:
    c = cluster
    async with RouterLoad(c.router_ports) as load, Writer(c, "node-lost") as writer:
        healed = await faults.freeze_node_past_eviction(c, etcd)
    await writer.verify(etcd)
    seen = healed.seen
    what = f"SIGSTOP node past eviction (moved after {seen['moved_after']:.1f} s, "
    what += f"cleaned {seen['cleaned_after']:.1f} s after SIGCONT)"
    report(what, load, writer, healed)
    assert seen["stranded"], "the frozen node ran some of the app"
    assert seen["still"] == seen["stranded"], "nobody stopped the frozen node's containers"
    assert all(con["engine"] == seen["other"] for con in c.containers()), c.explain()
    assert not c.twice()
    check_load(load)


async def test_kill_9_of_a_routers_caddy_the_router_starts_it_again(
    cluster: Cluster, etcd: RawEtcd
) -> None:
    c = cluster
    async with RouterLoad(c.router_ports) as load, Writer(c, "caddy-kill") as writer:
        await asyncio.sleep(2)
        healed = await faults.kill_caddy(c, 0)
        await asyncio.sleep(2)
    await writer.verify(etcd)
    report("kill -9 caddy", load, writer, healed)
    assert healed.seen["caddy"], "the router started Caddy again"
    assert healed.seen["router_alive"]
    check_load(load)


async def test_kill_9_of_a_router_process_the_other_router_answers(
    cluster: Cluster, etcd: RawEtcd
) -> None:
    c = cluster
    async with RouterLoad(c.router_ports) as load, Writer(c, "router-kill") as writer:
        await asyncio.sleep(2)
        healed = await faults.kill_router(c, 1)
        await asyncio.sleep(2)
    await writer.verify(etcd)
    report("kill -9 router", load, writer, healed)
    assert healed.seen["alone"] == healed.seen["wanted"], "the other router answered meanwhile"
    assert load.retried > 0, "requests sent to the killed router were retried"
    check_load(load)


async def test_kill_9_of_the_etcd_leader_under_the_whole_cluster(
    cluster: Cluster, etcd: RawEtcd, etcd_cluster: EtcdCluster
) -> None:
    c = cluster
    async with RouterLoad(c.router_ports) as load, Writer(c, "etcd-kill") as writer:
        await asyncio.sleep(2)
        healed = await faults.kill_etcd_leader(c, etcd_cluster)
        await asyncio.sleep(2)
    await writer.verify(etcd)
    report(f"kill -9 etcd leader {healed.seen['member']}", load, writer, healed)
    assert await faults.all_ready(c) == [], "no process exited"
    assert writer.acknowledged > 50, writer.figure()
    assert not c.twice()
    check_load(load)


async def test_sigstop_of_the_etcd_leader_for_20_s_under_the_whole_cluster(
    cluster: Cluster, etcd: RawEtcd, etcd_cluster: EtcdCluster
) -> None:
    c = cluster
    async with RouterLoad(c.router_ports) as load, Writer(c, "etcd-freeze") as writer:
        await asyncio.sleep(2)
        healed = await faults.freeze_etcd_leader(c, etcd_cluster)
        await asyncio.sleep(2)
    await writer.verify(etcd)
    report(f"SIGSTOP etcd leader {healed.seen['member']} 20 s", load, writer, healed)
    assert await faults.all_ready(c) == [], "no process exited"
    assert writer.acknowledged > 100, writer.figure()
    assert not c.twice()
    check_load(load)
