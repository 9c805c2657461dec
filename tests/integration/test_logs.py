"""Service logs through the API, proxied from the node agent that runs each container.

Real etcd, the services controller and a node agent on the fake runtime; the API and the node are
two apps on two real ports served as ``lastbackend`` serves them (aiohttp's runner, which does not
cancel a handler when its client leaves), so the API really proxies over HTTP and a client that
goes away must end the upstream streams by itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp import web

from lastbackend import codec, config
from lastbackend.api.app import make_app
from lastbackend.api.middlewares import INFLIGHT
from lastbackend.config import ConfigError, Settings
from lastbackend.controllers.runner import ControllerRunner
from lastbackend.controllers.services import ServicesController
from lastbackend.model.platform import Container
from lastbackend.model.pods import Node
from lastbackend.node.agent import LABEL_NODE, NodeAgent
from lastbackend.runtime.base import ContainerSpec, NodeCapacity
from lastbackend.secrets import Secrets, generate_key
from lastbackend.store import keys
from tests.fakeruntime import FakeRuntime
from tests.support import RawEtcd, eventually, free_port

pytestmark = pytest.mark.etcd

IMAGE = "registry.local/team/web:1"
NODE = "n1"
ADMIN, READ = "admin-token", "read-token"
NODE_TOKEN = "node-token-of-this-test"
NODE_AUTH = {"Authorization": f"Bearer {NODE_TOKEN}"}


class CountingSource:
    """The agent's log source, counting the streams open on the node right now."""

    def __init__(self, agent: NodeAgent) -> None:
        self.agent = agent
        self.open = 0

    async def __call__(self, cid: str, follow: bool, tail: int | None) -> AsyncIterator[bytes]:
        return self._count(await self.agent.open_logs(cid, follow, tail))

    async def _count(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        self.open += 1
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            self.open -= 1
            await chunks.aclose()  # type: ignore[attr-defined]


@attrs.define
class Harness:
    etcd: RawEtcd
    runtime: FakeRuntime
    source: CountingSource
    api: str
    node: str
    http: aiohttp.ClientSession
    servers: tuple[web.AppRunner, web.AppRunner]
    """The API's and the node's."""
    runners: list[Any] = attrs.Factory(list)

    def url(self, service: str = "web", project: str = "demo") -> str:
        return f"{self.api}/api/projects/{project}/services/{service}/logs"

    async def make_service(self, name: str, replicas: int) -> str:
        if (await self.http.get(f"{self.api}/api/projects/demo")).status == 404:
            resp = await self.http.post(f"{self.api}/api/projects", json={"name": "demo"})
            assert resp.status == 201, await resp.text()
        body = {"name": name, "config": {"image": IMAGE, "replicas": replicas}}
        resp = await self.http.post(f"{self.api}/api/projects/demo/services", json=body)
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["id"])

    async def containers(self, service: str, n: int) -> list[str]:
        """The ids of the service's ``n`` running containers, oldest first, once reported."""

        async def reported() -> list[str]:
            resp = await self.http.get(
                f"{self.api}/api/projects/demo/services/{service}/containers"
            )
            items = (await resp.json())["resources"]
            if len(items) != n or any(c["status"] != "running" for c in items):
                return []
            return [c["id"] for c in sorted(items, key=lambda c: c["created"])]

        return list(await eventually(reported))

    async def text(self, url: str, *, as_node: bool = False, **params: str) -> tuple[int, str]:
        """GET ``url`` with the admin token, or with the node token (``as_node``) as an API
        process calls a node."""
        headers = NODE_AUTH if as_node else None
        async with self.http.get(url, params=params, headers=headers) as resp:
            return resp.status, await resp.text()


async def serve(app: web.Application, port: int = 0) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    host, bound = runner.addresses[0][:2]
    return runner, f"http://{host}:{bound}"


@pytest.fixture
async def harness(etcd: RawEtcd, settings: Settings) -> AsyncIterator[Harness]:
    """The API, and a node with its agent; tokens on, so the API's upstream requests need one."""
    settings = attrs.evolve(
        settings, admin_tokens=(ADMIN,), read_tokens=(READ,), node_token=NODE_TOKEN
    )
    runtime = FakeRuntime(images=[IMAGE], capacity=NodeCapacity(4096, 2, NODE, "fake"))
    port = free_port()
    address = f"http://127.0.0.1:{port}"
    agent = NodeAgent(runtime, Secrets(generate_key()), NODE, address=address, probe=runtime.probe)
    source = CountingSource(agent)
    node_runner, node_url = await serve(make_app(settings, etcd, families=False, logs=source), port)
    api_runner, api_url = await serve(make_app(settings, etcd))
    http = aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN}"})
    h = Harness(etcd, runtime, source, api_url, node_url, http, (api_runner, node_runner))
    for controller in (agent, ServicesController()):
        runner = ControllerRunner(controller, etcd, lease_ttl=2)
        runner.start()
        h.runners.append(runner)
    try:
        yield h
    finally:
        await http.close()
        for runner in reversed(h.runners):
            await runner.stop(grace=1)
        await api_runner.cleanup()
        await node_runner.cleanup()


async def test_the_agent_registers_its_address(harness: Harness) -> None:
    async def registered() -> Node | None:
        kv = await harness.etcd.get(keys.node(NODE))
        return codec.loads(kv.value, Node) if kv else None

    node = await eventually(registered)
    assert node.address == harness.node


async def test_tail_returns_the_last_lines_prefixed(harness: Harness) -> None:
    await harness.make_service("web", 1)
    (cid,) = await harness.containers("web", 1)
    harness.runtime.write_log(cid, b"".join(b"line %d\n" % i for i in range(1, 151)))

    async with harness.http.get(harness.url(), params={"tail": "2"}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert len(resp.headers["X-Request-ID"]) == 32
        body = await resp.text()
    assert body == f"[{cid[:12]}] line 149\n[{cid[:12]}] line 150\n"

    status, body = await harness.text(harness.url())  # default tail: 100
    lines = body.splitlines()
    assert status == 200
    assert len(lines) == 100
    assert lines[0] == f"[{cid[:12]}] line 51"
    status, body = await harness.text(harness.url(), tail="0")
    assert (status, body) == (200, "")


async def test_a_read_token_may_read_logs_and_no_token_may_not(harness: Harness) -> None:
    await harness.make_service("web", 1)
    (cid,) = await harness.containers("web", 1)
    harness.runtime.write_log(cid, b"hello\n")
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.get(harness.url()) as resp:
            assert resp.status == 401
        async with anonymous.get(f"{harness.node}/node/containers/{cid}/logs") as resp:
            assert resp.status == 401
        headers = {"Authorization": f"Bearer {READ}"}
        async with anonymous.get(harness.url(), headers=headers) as resp:
            assert resp.status == 200
            assert await resp.text() == f"[{cid[:12]}] hello\n"


async def test_follow_streams_lines_written_later_and_stops_upstream_on_disconnect(
    harness: Harness,
) -> None:
    await harness.make_service("web", 1)
    (cid,) = await harness.containers("web", 1)
    harness.runtime.write_log(cid, b"before\n")
    prefix = f"[{cid[:12]}] ".encode()

    resp = await harness.http.get(harness.url(), params={"follow": "true", "tail": "1"})
    assert resp.status == 200
    assert await asyncio.wait_for(resp.content.readline(), 5) == prefix + b"before\n"
    harness.runtime.write_log(cid, b"after the request started\n")
    line = await asyncio.wait_for(resp.content.readline(), 5)
    assert line == prefix + b"after the request started\n"
    harness.runtime.write_log(cid, b"partial ")
    harness.runtime.write_log(cid, b"line\n")
    assert await asyncio.wait_for(resp.content.readline(), 5) == prefix + b"partial line\n"
    assert harness.source.open == 1

    resp.close()  # the client goes away: the API must cancel its request to the node

    async def closed_on_the_node() -> bool:
        return harness.source.open == 0

    await eventually(closed_on_the_node, within=5)


async def test_a_followed_stream_does_not_hold_up_shutdown(harness: Harness) -> None:
    """Draining waits for requests in flight; a followed log never ends, so it is not one, and
    shutdown ends it instead of waiting out ``api.shutdown_timeout``."""
    await harness.make_service("web", 1)
    (cid,) = await harness.containers("web", 1)
    harness.runtime.write_log(cid, b"x\n")
    async with harness.http.get(harness.url(), params={"follow": "true"}) as resp:
        await asyncio.wait_for(resp.content.readline(), 5)
        for server in harness.servers:
            assert server.app[INFLIGHT].count == 0
        api, _ = harness.servers
        started = asyncio.get_running_loop().time()
        await api.cleanup()
        assert asyncio.get_running_loop().time() - started < 1.5  # its shutdown_timeout is 2
        assert await asyncio.wait_for(resp.content.read(), 5) == b""

    async def closed_on_the_node() -> bool:
        return harness.source.open == 0

    await eventually(closed_on_the_node, within=5)


async def test_follow_ends_when_the_container_stops(harness: Harness) -> None:
    await harness.make_service("web", 1)
    (cid,) = await harness.containers("web", 1)
    harness.runtime.write_log(cid, b"last words\n")
    async with harness.http.get(harness.url(), params={"follow": "true"}) as resp:
        assert await asyncio.wait_for(resp.content.readline(), 5) == b"[%s] last words\n" % (
            cid[:12].encode()
        )
        await harness.runtime.stop(cid)
        assert await asyncio.wait_for(resp.content.read(), 5) == b""


async def test_two_containers_are_merged_with_prefixes(harness: Harness) -> None:
    await harness.make_service("web", 2)
    first, second = await harness.containers("web", 2)
    for i in range(3):
        harness.runtime.write_log(first, b"first %d\n" % i)
        harness.runtime.write_log(second, b"second %d\n" % i)

    status, body = await harness.text(harness.url())
    assert status == 200
    lines = body.splitlines()
    assert sorted(lines) == sorted(
        [f"[{first[:12]}] first {i}" for i in range(3)]
        + [f"[{second[:12]}] second {i}" for i in range(3)]
    )
    # each container's lines keep their order, however the two interleave
    assert [x for x in lines if x.startswith(f"[{first[:12]}]")] == [
        f"[{first[:12]}] first {i}" for i in range(3)
    ]
    assert [x for x in lines if x.startswith(f"[{second[:12]}]")] == [
        f"[{second[:12]}] second {i}" for i in range(3)
    ]

    # followed, a line from either arrives as it is written
    async with harness.http.get(harness.url(), params={"follow": "1", "tail": "0"}) as resp:
        harness.runtime.write_log(second, b"from second\n")
        line = await asyncio.wait_for(resp.content.readline(), 5)
        assert line == f"[{second[:12]}] from second\n".encode()
        harness.runtime.write_log(first, b"from first\n")
        line = await asyncio.wait_for(resp.content.readline(), 5)
        assert line == f"[{first[:12]}] from first\n".encode()


async def test_the_container_parameter_picks_one(harness: Harness) -> None:
    await harness.make_service("web", 2)
    first, second = await harness.containers("web", 2)
    harness.runtime.write_log(first, b"one\n")
    harness.runtime.write_log(second, b"two\n")

    for chosen in (second, second[:12]):
        status, body = await harness.text(harness.url(), container=chosen)
        assert (status, body) == (200, f"[{second[:12]}] two\n")
    status, body = await harness.text(harness.url(), container="f" * 64)
    assert status == 404
    assert "not found" in body
    status, body = await harness.text(harness.url(), container="")
    assert status == 404


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"tail": "-1"}, "tail"),
        ({"tail": "abc"}, "tail"),
        ({"tail": "1.5"}, "tail"),
        ({"tail": "10001"}, "tail"),
        ({"tail": "9" * 5000}, "tail"),
        ({"tail": "\u00b2"}, "tail"),
        ({"follow": "yes"}, "follow"),
    ],
)
async def test_bad_parameters_are_400(harness: Harness, params: dict[str, str], name: str) -> None:
    await harness.make_service("web", 0)
    async with harness.http.get(harness.url(), params=params) as resp:
        assert resp.status == 400
        error = (await resp.json())["errors"][0]
        assert error["title"] == "CF-BadQueryParameter"
        assert f"query parameter {name}" in error["detail"]
    node_url = f"{harness.node}/node/containers/x/logs"
    async with harness.http.get(node_url, params=params, headers=NODE_AUTH) as resp:
        assert resp.status == 400


async def test_tail_at_the_maximum_is_accepted(harness: Harness) -> None:
    await harness.make_service("web", 0)
    assert await harness.text(harness.url(), tail="10000") == (200, "")


async def test_missing_service_or_project_is_404(harness: Harness) -> None:
    await harness.make_service("web", 0)
    for url in (harness.url("nope"), harness.url("web", "nope")):
        async with harness.http.get(url) as resp:
            assert resp.status == 404
            assert (await resp.json())["errors"][0]["title"] == "CF-ResourceNotFound"


async def test_a_service_without_containers_has_empty_logs(harness: Harness) -> None:
    await harness.make_service("web", 0)
    assert await harness.text(harness.url()) == (200, "")
    assert await harness.text(harness.url(), follow="true") == (200, "")


async def test_the_node_refuses_containers_not_labelled_for_it(harness: Harness) -> None:
    await harness.make_service("web", 1)
    (mine,) = await harness.containers("web", 1)
    harness.runtime.write_log(mine, b"ok\n")
    other = await harness.runtime.run(
        ContainerSpec(name="other-node", image=IMAGE, labels={LABEL_NODE: "n2"})
    )
    foreign = await harness.runtime.run(ContainerSpec(name="not-lastbackend", image=IMAGE))
    for state in (other, foreign):
        harness.runtime.write_log(state.id, b"secret\n")

    async def node_logs(cid: str) -> tuple[int, str]:
        return await harness.text(f"{harness.node}/node/containers/{cid}/logs", as_node=True)

    assert await node_logs(mine) == (200, "ok\n")
    for cid in (other.id, other.name, foreign.id, foreign.name, "no-such-container"):
        status, body = await node_logs(cid)
        assert status == 404, cid
        assert "secret" not in body

    # a process without a node agent has no logs to give
    status, body = await harness.text(f"{harness.api}/node/containers/{mine}/logs", as_node=True)
    assert status == 503
    assert "no node agent" in body


async def test_a_container_on_an_unreachable_node(harness: Harness) -> None:
    sid = await harness.make_service("web", 1)
    (cid,) = await harness.containers("web", 1)
    harness.runtime.write_log(cid, b"alive\n")
    pid = str((await (await harness.http.get(f"{harness.api}/api/projects/demo")).json())["id"])
    t = datetime.now(UTC)
    ghost = Container(id="0" * 64, status="running", created=t, updated=t, node="ghost")
    await harness.etcd.put(keys.container(pid, sid, ghost.id), codec.dumps(ghost))

    # one of two unavailable: the other's logs, and a line saying what is missing
    status, body = await harness.text(harness.url())
    assert status == 200
    assert f"[{cid[:12]}] alive\n" in body
    assert f"[{'0' * 12}] -- logs unavailable: node ghost is not registered" in body

    # the only one unavailable: nothing to stream, 503 with the reason
    status, body = await harness.text(harness.url(), container="0" * 12)
    assert status == 503
    assert "node ghost is not registered" in body


def test_the_advertised_address_setting() -> None:
    assert Settings().node_address == "http://127.0.0.1:2967"
    assert Settings(listen="[::1]:80").node_address == "http://[::1]:80"
    env = {"LB_NODE_ADVERTISE": "http://10.0.0.5:2967/"}
    settings = config.load(environ=env)
    settings.check()
    assert settings.node_address == "http://10.0.0.5:2967"
    for bad in ("10.0.0.5:2967", "ftp://h", "http://", "http://h:99999", "http://h/prefix"):
        with pytest.raises(ConfigError, match=r"node\.advertise"):
            Settings(node_advertise=bad).check()
