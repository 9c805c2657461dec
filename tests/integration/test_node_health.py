"""Health checks and crash-loop backoff in the node agent: real etcd, the fake engine.

The agent and the services controller run as in production; the fake engine's programs decide
what a container does, and its ``unhealthy`` set which containers fail their checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from typing import Any

import pytest

from lastbackend.controllers.services import ServicesController
from lastbackend.node.agent import NodeAgent
from lastbackend.router.daemon import route_table
from lastbackend.store import keys
from tests.fakeruntime import FakeProcess
from tests.integration.test_services_controller import Cluster, cluster, make_service
from tests.support import RawEtcd, eventually

pytestmark = pytest.mark.etcd
__all__ = ["cluster"]  # the fixture, shared with test_services_controller


async def containers(api: Any) -> list[dict[str, Any]]:
    resp = await api.get("/api/projects/demo/services/web/containers")
    return list((await resp.json())["resources"])


async def test_a_crash_loop_backs_off_and_says_so(cluster: Cluster, api: Any) -> None:
    _, runtime = cluster.node("n1")
    starts: list[float] = []

    def crash(process: FakeProcess) -> int:
        starts.append(time.monotonic())
        return 1

    runtime.on_start(crash)
    cluster.start(ServicesController())
    await make_service(api, 1, ports={"8080/TCP": 0})

    async def backing_off() -> dict[str, Any] | None:
        found = await containers(api)
        return found[0] if found and found[0]["reason"] == "CrashLoopBackOff" else None

    first = await eventually(backing_off, 10)
    assert first["ready"] is False
    assert first["exit_code"] == 1
    assert first["status"] == "exited"
    began = starts[0]
    await eventually(lambda: _at_least(starts, 4), 15)  # at 0, 1, 3 and 7 s
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps[0] >= 0.9
    assert gaps[1] >= 1.9
    assert gaps[2] >= 3.9, gaps
    assert len([s for s in starts if s - began < 7.5]) <= 4
    last = await eventually(backing_off, 10)
    assert last["restarts"] >= 3


async def _at_least(items: list[float], n: int) -> bool:
    return len(items) >= n


async def test_only_containers_that_pass_their_check_are_routed(
    cluster: Cluster, api: Any, etcd: RawEtcd
) -> None:
    _, runtime = cluster.node("n1")

    def unhealthy(process: FakeProcess) -> None:  # keeps running, fails its checks
        runtime.unhealthy.add(process.id)

    runtime.on_start(unhealthy)
    cluster.start(ServicesController())
    check = {"type": "http", "data": {"endpoint": "/healthz", "timeout": 30}}
    await make_service(api, 1, ports={"8080/TCP": 0}, health_check=check)

    async def starting() -> dict[str, Any] | None:
        found = await containers(api)
        return found[0] if found and found[0]["status"] == "running" else None

    container = await eventually(starting, 10)
    assert container["ready"] is False
    assert container["reason"] == "Starting"
    [route] = await route_table(etcd, "lb.localhost")
    assert route.upstreams == ()  # the router answers 503 rather than send it traffic

    runtime.unhealthy.clear()

    async def ready() -> bool:
        found = await containers(api)
        return bool(found) and found[0]["ready"] is True and found[0]["reason"] == ""

    await eventually(ready, 10)
    [route] = await route_table(etcd, "lb.localhost")
    assert [u.container for u in route.upstreams] == [container["id"]]


async def test_a_retired_container_is_drained_then_stopped_with_its_stop_timeout(
    cluster: Cluster, api: Any
) -> None:
    _, runtime = cluster.node("n1")
    cluster.start(ServicesController())
    await make_service(api, 1, ports={"8080/TCP": 0}, stop_timeout=7)
    [container] = await eventually(lambda: _ready_containers(api), 10)
    resp = await api.patch("/api/projects/demo/services/web/config", json={"replicas": 0})
    assert resp.status == 200, await resp.text()

    async def terminating() -> bool:
        found = await containers(api)
        return bool(found) and found[0]["reason"] == "Terminating" and not found[0]["ready"]

    await eventually(terminating, 5)  # first out of the routers' upstreams...
    assert runtime.stops == []
    await eventually(lambda: _stopped(runtime), 5)  # ...then SIGTERM, with 7 s to go
    assert runtime.stops == [(container["id"], 7.0)]


async def _ready_containers(api: Any) -> list[dict[str, Any]] | None:
    found = [c for c in await containers(api) if c["ready"]]
    return found or None


async def _stopped(runtime: Any) -> bool:
    return bool(runtime.stops)


async def test_a_restarted_agent_keeps_its_running_containers_ready_and_routed(
    cluster: Cluster, api: Any, etcd: RawEtcd
) -> None:
    runner, runtime = cluster.node("n1")
    cluster.start(ServicesController())
    await make_service(api, 1, ports={"8080/TCP": 0})

    async def ready() -> dict[str, Any] | None:
        found = await containers(api)
        return found[0] if found and found[0]["ready"] else None

    before = await eventually(ready, 10)
    since = (await etcd.range(keys.PROJECTS)).revision
    await runner.stop(grace=1)  # the agent goes (a crash, an upgrade); the container runs on
    again = NodeAgent(runtime, cluster.secrets, "n1", probe=runtime.probe)
    cluster.start(again)

    # what the new agent writes about the container, from its first report on: never a
    # "not ready" (which would take the only container out of the routers until its check ran)
    writes: list[dict[str, Any]] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(3):
            async for batch in etcd.watch(keys.PROJECTS, start_revision=since + 1):
                writes += [json.loads(e.kv.value) for e in batch if keys.container_of(e.kv.key)]
    assert writes, "the new agent reported the container it adopted"
    assert all(w["id"] == before["id"] and w["ready"] is True for w in writes), writes
    assert writes[-1]["ready_since"] == before["ready_since"]
    assert [s.id for s in await cluster.running()] == [before["id"]], "nothing was restarted"
