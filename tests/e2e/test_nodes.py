"""Node agents that go away, through the router under load: real Docker engines and Caddy.

The daemon runs the API, the controllers and the router (``--no-node``); each Docker host's
agent is its own ``lastbackend node`` process, killed with SIGKILL as a crashed host would be.
Its containers go on running in Docker. Within ``node.eviction_timeout`` an agent that comes back
keeps them (same ids, no restart); past it (made short here, with a second engine as the second
host) the pods move and the returning agent removes what it no longer owns. The load never
fails meanwhile, because the routers keep dialling a lost node's containers while their objects
last.
"""

from __future__ import annotations

import docker
import pytest

from lastbackend.store import keys
from lastbackend.store.embedded import EmbeddedEtcd
from tests.e2e.harness import LABEL_NODE, LABEL_SERVICE, Harness, Proc, eventually
from tests.e2e.test_containers import App, keys_under
from tests.e2e.test_deploys import Load
from tests.e2e.test_routing import HOST, SERVE_ID, answering
from tests.support import RawEtcd, free_ports

pytestmark = [pytest.mark.docker, pytest.mark.etcd]

NODE_TTL = 30  # node.agent.NODE_TTL: how long a killed agent's node key outlives it


async def platform(h: Harness, etcd: str, **env: str) -> tuple[Proc, int]:
    """The daemon without a node agent, with a router: the process and the router's port."""
    http, https = free_ports(2)
    daemon = h.start(
        "daemon",
        etcd,
        "--no-node",
        "--router-http",
        f"127.0.0.1:{http}",
        "--router-https",
        f"127.0.0.1:{https}",
        env=env,
    )
    await h.ready(daemon)
    return daemon, http


async def agent(h: Harness, etcd: str, name: str, **env: str) -> Proc:
    node = h.start("node", etcd, "--name", name, env=env)
    await h.ready(node)
    return node


async def node_key(etcd: RawEtcd, name: str) -> bool:
    return bool(await keys_under(etcd, keys.node(name)))


async def node_gone(etcd: RawEtcd, name: str) -> bool:
    return not await node_key(etcd, name)


async def pods_of(etcd: RawEtcd, name: str) -> set[str]:
    return set(await keys_under(etcd, keys.node_pods(name)))


def running(api: docker.APIClient, node: str, sid: str) -> list[str]:
    selector = {"label": [f"{LABEL_NODE}={node}", f"{LABEL_SERVICE}={sid}"]}
    return sorted(c["Id"] for c in api.containers(filters=selector))


async def test_an_agent_back_within_the_eviction_timeout_keeps_its_containers(
    harness: Harness, etcd: RawEtcd, etcd_server: EmbeddedEtcd, base_image: str
) -> None:
    h = harness
    daemon, port = await platform(h, etcd_server.endpoint)
    node = await agent(h, etcd_server.endpoint, h.node)
    app = App(h, daemon, "shop")
    await app.create_project()
    sid = await app.create_service("web", base_image, replicas=2, command=SERVE_ID)

    async def two() -> list[str] | None:
        ids = running(h.docker, h.node, sid)
        return ids if len(ids) == 2 and await answering(port, HOST, ids) else None

    ids = await eventually(two, 45, "two containers answering", explain=h.explain)
    pods = await pods_of(etcd, h.node)
    async with Load(port) as load:
        node.kill()  # a crash: the lease is not revoked, the containers keep running
        await eventually(lambda: node_gone(etcd, h.node), NODE_TTL + 15, "the key to expire")
        assert await pods_of(etcd, h.node) == pods, "its pods wait out the eviction timeout"
        await agent(h, etcd_server.endpoint, h.node)
        await eventually(lambda: node_key(etcd, h.node), 30, "the agent to register again")
        reported = await eventually(lambda: _reported(app, ids), 20, "its report of them")
    load.check(served_only_by=set(ids))
    assert running(h.docker, h.node, sid) == ids, "the same containers, never restarted"
    assert all(c["restarts"] == 0 for c in reported), reported
    assert await pods_of(etcd, h.node) == pods


async def test_past_the_eviction_timeout_pods_move_and_the_returning_agent_removes_its_own(
    harness: Harness,
    etcd: RawEtcd,
    etcd_server: EmbeddedEtcd,
    base_image: str,
    second_dockerd: str,
    second_engine: docker.APIClient,
) -> None:
    h = harness
    first, second = h.node, f"{h.node}-b"
    daemon, port = await platform(h, etcd_server.endpoint, LB_NODE_EVICTION_TIMEOUT="3")
    node = await agent(h, etcd_server.endpoint, first)
    app = App(h, daemon, "shop")
    await app.create_project()
    sid = await app.create_service("web", base_image, replicas=2, command=SERVE_ID)

    async def two_on_first() -> list[str] | None:
        ids = running(h.docker, first, sid)
        return ids if len(ids) == 2 and await answering(port, HOST, ids) else None

    old = await eventually(two_on_first, 45, "two containers on the first node")
    await agent(h, etcd_server.endpoint, second, LB_DOCKER_HOST=second_dockerd)
    async with Load(port) as load:
        node.kill()

        async def moved() -> list[str] | None:
            ids = running(second_engine, second, sid)
            return ids if len(ids) == 2 and await answering(port, HOST, ids) else None

        # the key expires (30 s), the eviction timeout passes (3 s), the pods are made again on
        # the second engine, and only once they are ready do the first node's stop being routed
        new = await eventually(
            moved, NODE_TTL + 60, "the pods on the second node", explain=h.explain
        )
        assert await pods_of(etcd, first) == set()
        assert len(await pods_of(etcd, second)) == 2
        assert running(h.docker, first, sid) == old, "nobody stopped the lost node's containers"

        # the first host comes back: it owns no pod now, so it removes its containers
        await agent(h, etcd_server.endpoint, first)
        await eventually(
            lambda: _empty(running(h.docker, first, sid)), 30, "the returning agent to clean up"
        )
        await eventually(lambda: answering(port, HOST, new), 20, "only the moved pods answer")
    load.check(served_only_by={*old, *new})


async def _empty(found: list[str]) -> bool:
    return not found


async def _reported(app: App, ids: list[str]) -> list[dict[str, object]] | None:
    found = await app.reported("web")
    ok = sorted(c["id"] for c in found) == ids and all(c["ready"] for c in found)
    return found if ok else None
