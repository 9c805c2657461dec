"""The faults, one function each, shared by ``test_process_faults.py`` and ``bench_cluster.py``.

Each breaks one process of a running :class:`~tests.cluster.harness.Cluster` the way a crash
or an operator would, waits for the cluster to heal (bringing a killed process back as a
supervisor would restart it), and returns a :class:`Healed` with the seconds from the fault to
convergence and what the tests check afterwards. The caller runs its load around the call.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tests.baseimage import BASE_IMAGE
from tests.cluster.etcd_cluster import EtcdCluster
from tests.cluster.harness import EVICTION, REPLICAS, Cluster, Engine, answered_by
from tests.e2e.conftest import Registry
from tests.e2e.harness import LABEL_TEMPLATE, eventually
from tests.e2e.test_apps import SITE, V3, zip_of
from tests.e2e.test_builds import TOKEN, USER, Site, dockerfile
from tests.e2e.test_nodes import NODE_TTL, pods_of
from tests.gitserver import GitServer, commit, make_repo
from tests.integration.test_daemon import alive, children
from tests.support import RawEtcd


@dataclass
class Healed:
    """Seconds from the fault until the cluster converged, and what the fault saw."""

    seconds: float
    seen: dict[str, Any] = field(default_factory=dict)


def busiest(c: Cluster) -> Engine:
    """The engine running the most of the app's containers."""
    counts = Counter(con["engine"] for con in c.containers())
    return max(c.engines, key=lambda e: counts[e.node])


async def kill_api(c: Cluster, alone: float = 4) -> Healed:
    """kill -9 the first API process; ``alone`` s later start it again."""
    c.apis[0].kill()
    fault = time.monotonic()
    await asyncio.sleep(alone)  # writes go on, on the other API alone
    c.apis[0] = c.start_api()
    await c.h.ready(c.apis[0], within=60)
    return Healed(await c.converge(30, since=fault))


async def kill_services_leader_mid_rollout(c: Cluster, tag: str) -> Healed:
    """Change the app's env (a rollout) and kill -9 the services leader while it rolls."""
    leader = await eventually(lambda: c.leading("services"), 30, "a services leader")
    before = {con["Labels"][LABEL_TEMPLATE] for con in c.containers()}
    revision = int((await c.rollout()).get("revision", 0)) + 1
    await c.patch({"env": {"VERSION": tag}})
    await eventually(lambda: c.rollout_is("progressing", revision), 10, "the rollout")
    leader.kill()
    fault = time.monotonic()
    c.controllers[c.controllers.index(leader)] = c.start_controller()
    standby = await eventually(
        lambda: c.leading("services", not_pid=leader.pid), 30, "the standby to lead"
    )
    await eventually(lambda: c.rollout_is("complete", revision), 60, "the rollout to complete")
    seconds = await c.converge(60, since=fault)
    after = {con["Labels"][LABEL_TEMPLATE] for con in c.containers()}
    seen = {"leader": leader.pid, "standby": standby.pid, "before": before, "after": after}
    return Healed(seconds, seen)


async def freeze_node(c: Cluster, seconds: float = 10) -> Healed:
    """SIGSTOP the busiest node agent for ``seconds`` (inside its 30 s lease), then SIGCONT."""
    engine = busiest(c)
    before = sorted(con["Id"] for con in c.containers())
    os.kill(c.nodes[engine.node].pid, signal.SIGSTOP)
    fault = time.monotonic()
    await asyncio.sleep(seconds)
    os.kill(c.nodes[engine.node].pid, signal.SIGCONT)
    await asyncio.sleep(5)  # its reports catch up
    healed = await c.converge(30, since=fault)
    return Healed(healed, {"node": engine.node, "before": before})


async def freeze_node_past_eviction(c: Cluster, etcd: RawEtcd) -> Healed:
    """SIGSTOP the busiest node agent until its pods moved to the other engine, then SIGCONT:
    the agent back removes what it no longer owns."""
    engine = busiest(c)
    other = next(e for e in c.engines if e is not engine)
    stranded = sorted(con["Id"] for con in c.containers() if con["engine"] == engine.node)
    os.kill(c.nodes[engine.node].pid, signal.SIGSTOP)
    fault = time.monotonic()

    async def moved() -> bool:
        there = [x for x in c.containers() if x["engine"] == other.node]
        return len(there) == REPLICAS and not await pods_of(etcd, engine.node)

    # the node lease (30 s) runs out, then the eviction timeout: the pods are made again on the
    # other engine, and the lost ones deleted once those serve (a node back before then keeps
    # its pods, and the newest extra ones go: not what this fault is about)
    await eventually(moved, NODE_TTL + EVICTION + 45, "the pods on the other engine")
    moved_after = time.monotonic() - fault
    still = sorted(con["Id"] for con in c.containers() if con["engine"] == engine.node)
    os.kill(c.nodes[engine.node].pid, signal.SIGCONT)
    thawed = time.monotonic()
    cleaned = await c.converge(60, since=thawed)
    seen = {"node": engine.node, "other": other.node, "stranded": stranded, "still": still}
    seen |= {"moved_after": moved_after, "cleaned_after": cleaned}
    return Healed(time.monotonic() - fault, seen)


async def kill_caddy(c: Cluster, index: int = 0) -> Healed:
    """kill -9 the Caddy of router ``index``; the router starts it again."""
    router, port = c.routers[index], c.router_ports[index]
    (caddy,) = children(router.pid, "caddy")
    wanted = {con["Id"][:12] for con in c.containers()}
    os.kill(caddy, signal.SIGKILL)
    fault = time.monotonic()
    again = await eventually(
        lambda: [p for p in children(router.pid, "caddy") if p != caddy], 30, "a new Caddy"
    )

    async def serving() -> bool:
        return await answered_by(port) == wanted

    await eventually(serving, 30, "the router to serve again", explain=router.tail)
    return Healed(time.monotonic() - fault, {"caddy": again, "router_alive": router.alive})


async def kill_router(c: Cluster, index: int = 1, alone: float = 3) -> Healed:
    """kill -9 router ``index`` (its Caddy goes with it); ``alone`` s later start it again."""
    router, port = c.routers[index], c.router_ports[index]
    (caddy,) = children(router.pid, "caddy")
    wanted = {con["Id"][:12] for con in c.containers()}
    router.kill()
    fault = time.monotonic()
    await eventually(lambda: not alive(caddy), 10, "its Caddy to go with it")
    await asyncio.sleep(alone)
    other = c.router_ports[1 - index]
    answered_alone = await answered_by(other)
    c.routers[index] = c.start_router(index)
    await c.h.ready(c.routers[index], within=60)

    async def serving() -> bool:
        return await answered_by(port) == wanted

    await eventually(serving, 30, "the restarted router to serve", explain=c.routers[index].tail)
    return Healed(time.monotonic() - fault, {"alone": answered_alone, "wanted": wanted})


async def kill_staging_leader_mid_staging(c: Cluster, name: str) -> Healed:
    """Upload a static site, stage it, and kill -9 the staging leader while it stages."""
    v3 = V3(c.h, c.api())
    _, app = await v3.app(name)
    body = {"type": "bits", "relationships": {"app": {"guid": app}}}
    package = await v3.call("POST", "/v3/packages", body, 201)
    await v3.upload(package["guid"], zip_of({"index.html": SITE}))
    leader = await eventually(lambda: c.leading("staging"), 30, "a staging leader")
    droplet = await v3.call("POST", f"/v3/packages/{package['guid']}/droplets", {}, 201)
    path = f"/v3/droplets/{droplet['guid']}"

    async def staging() -> bool:
        return bool((await v3.call("GET", path))["state"] == "STAGING")

    await eventually(staging, 30, "the droplet staging", interval=0.02)
    leader.kill()
    fault = time.monotonic()
    c.controllers[c.controllers.index(leader)] = c.start_controller()
    staged = await v3.staged(droplet["guid"], within=120)
    seconds = time.monotonic() - fault
    standby = await c.leading("staging")
    seen = {"staged": staged, "log": await v3.logs(droplet["guid"]), "leader": leader.pid}
    seen["standby"] = standby.pid if standby is not None else None
    return Healed(seconds, seen)


async def kill_builds_leader_mid_build(c: Cluster, git: GitServer) -> Healed:
    """Build a service from git with a slow RUN step, kill -9 the builds leader while the step
    runs: the next leader ends the build ``failed`` (interrupted), and a build after it works."""
    site = Site(c.h, c.api(), git, NO_REGISTRY)  # type: ignore[arg-type]  # any Harness does
    marker = f"lb-kill-{uuid.uuid4().hex[:8]}"
    files = {"Dockerfile": dockerfile(BASE_IMAGE, f"RUN sleep 120 && true # {marker}\n")}
    make_repo(git.root / "acme", site.repo, {**files, "index.html": "x\n"})
    vendor = {"host": f"127.0.0.1:{git.port}", "scheme": "http", "username": USER, "token": TOKEN}
    status, _ = await c.h.call(site.proc, "PUT", "/api/vendors/github", vendor)
    assert status in (200, 201), status
    await site.call("POST", "/api/projects", {"name": site.project}, 201)
    service = {
        "name": "web",
        "source": {"hub": "github", "owner": "acme", "repo": site.repo, "branch": "main"},
        "config": {"replicas": 0, "memory": 32},  # built, never run: the fault is the build's
    }
    await site.call("POST", f"/api/projects/{site.project}/services", service, 201)
    number = await site.start()
    await eventually(lambda: site.step_containers(marker), 60, "the RUN step running")
    leader = await eventually(lambda: c.leading("builds"), 30, "a builds leader")
    leader.kill()
    fault = time.monotonic()
    c.controllers[c.controllers.index(leader)] = c.start_controller()
    await eventually(lambda: not site.step_containers(marker), 30, "the step to stop")
    interrupted = await site.ended(number, within=90)  # after the dead leader's lease expires
    seconds = time.monotonic() - fault
    commit(git.root / "acme", site.repo, {"Dockerfile": dockerfile(BASE_IMAGE)}, "fast")
    again = await site.ended(await site.start())
    c.h.images.append(f"lastbackend-builds/{site.project}/web:2")
    seen = {"interrupted": interrupted, "again": again, "leader": leader.pid}
    seen["log"] = await site.logs(number)
    return Healed(seconds, seen)


NO_REGISTRY = Registry(host="", username="", password="")
"""Builds here are tagged locally (no ``registry.platform``), so no registry is needed."""


async def kill_etcd_leader(c: Cluster, etcd: EtcdCluster, down: float = 5) -> Healed:
    """kill -9 the etcd leader member; ``down`` s later start it again (its data kept)."""
    leader = await asyncio.to_thread(etcd.leader)
    etcd.kill(leader)
    fault = time.monotonic()
    await asyncio.sleep(down)
    await asyncio.to_thread(etcd.start, leader)
    return Healed(await c.converge(60, since=fault), {"member": leader.name})


async def freeze_etcd_leader(c: Cluster, etcd: EtcdCluster, seconds: float = 20) -> Healed:
    """SIGSTOP the etcd leader member for ``seconds``, then SIGCONT."""
    leader = await asyncio.to_thread(etcd.leader)
    etcd.freeze(leader)
    fault = time.monotonic()
    await asyncio.sleep(seconds)
    etcd.thaw(leader)
    return Healed(await c.converge(60, since=fault), {"member": leader.name})


async def all_ready(c: Cluster, within: float = 60) -> list[str]:
    """Every lastbackend process alive with ``/readyz`` 200 again; the names of those that
    exited (none, if no process crashed on the fault)."""
    procs = [*c.apis, *c.controllers, *c.routers, *c.nodes.values()]
    dead = [p.log.name for p in procs if not p.alive]
    for proc in procs:
        if proc.alive:
            await c.h.ready(proc, within=within)
    return dead
