"""Service logs end to end on a real engine: API -> node agent -> DockerRuntime -> dockerd.

A service runs the offline busybox image with a command that echoes five lines, waits for a file
and echoes one more, so the test decides when the late line is written (with ``docker exec``).
The node's name is unique to the test, and whatever carries it is force-removed afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import attrs
import docker
import pytest
from aiohttp import web

from lastbackend.api.app import make_app
from lastbackend.config import Settings
from lastbackend.controllers.runner import ControllerRunner
from lastbackend.controllers.services import ServicesController
from lastbackend.node.agent import LABEL_NODE, NodeAgent
from lastbackend.runtime.docker import DockerRuntime
from lastbackend.secrets import Secrets, generate_key
from tests.support import RawEtcd, free_port

pytestmark = [pytest.mark.docker, pytest.mark.etcd]

COMMAND = (
    "for i in 1 2 3 4 5; do echo line $i; done; "
    "while ! test -f /tmp/go; do sleep 0.1; done; echo late line; exec sleep 600"
)


@attrs.frozen
class Setup:
    api: str
    http: aiohttp.ClientSession
    docker: docker.APIClient


@pytest.fixture
async def setup(
    etcd: RawEtcd, settings: Settings, dockerd: str, base_image: str, docker_api: docker.APIClient
) -> AsyncIterator[Setup]:
    node = f"e2e-logs-{uuid.uuid4().hex[:8]}"
    settings = attrs.evolve(settings, node_token=f"node-{uuid.uuid4().hex}")
    port = free_port()
    runtime = DockerRuntime(dockerd)
    agent = NodeAgent(runtime, Secrets(generate_key()), node, address=f"http://127.0.0.1:{port}")
    servers: list[web.AppRunner] = []
    for app, at in (
        (make_app(settings, etcd, families=False, logs=agent.open_logs), port),
        (make_app(settings, etcd), 0),
    ):
        server = web.AppRunner(app, access_log=None, shutdown_timeout=2)
        await server.setup()
        await web.TCPSite(server, "127.0.0.1", at).start()
        servers.append(server)
    host, api_port = servers[1].addresses[0][:2]
    runners = [ControllerRunner(c, etcd, lease_ttl=2) for c in (agent, ServicesController())]
    for runner in runners:
        runner.start()
    http = aiohttp.ClientSession()
    try:
        yield Setup(f"http://{host}:{api_port}", http, docker_api)
    finally:
        await http.close()
        for runner in reversed(runners):
            await runner.stop(grace=1)
        for server in servers:
            await server.cleanup()
        await runtime.close()
        for container in docker_api.containers(all=True, filters={"label": f"{LABEL_NODE}={node}"}):
            with contextlib.suppress(docker.errors.NotFound):
                docker_api.remove_container(container["Id"], force=True)


async def _running_container(s: Setup, image: str) -> str:
    resp = await s.http.post(f"{s.api}/api/projects", json={"name": "demo"})
    assert resp.status == 201, await resp.text()
    body = {"name": "echo", "config": {"image": image, "replicas": 1, "command": COMMAND}}
    resp = await s.http.post(f"{s.api}/api/projects/demo/services", json=body)
    assert resp.status == 201, await resp.text()
    deadline = asyncio.get_running_loop().time() + 60
    while asyncio.get_running_loop().time() < deadline:
        resp = await s.http.get(f"{s.api}/api/projects/demo/services/echo/containers")
        items: list[dict[str, Any]] = (await resp.json())["resources"]
        if len(items) == 1 and items[0]["status"] == "running":
            return str(items[0]["id"])
        await asyncio.sleep(0.2)
    raise AssertionError(f"no running container in 60 s: {items}")


def log_threads() -> int:
    """DockerRuntime reads each log stream in a thread named after it."""
    return sum(t.name.startswith("lastbackend-docker-logs") for t in threading.enumerate())


async def test_tail_and_follow_through_the_api(setup: Setup, base_image: str) -> None:
    cid = await _running_container(setup, base_image)
    url = f"{setup.api}/api/projects/demo/services/echo/logs"
    prefix = f"[{cid[:12]}] "

    async def text(**params: str) -> str:
        async with setup.http.get(url, params=params) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.text()

    deadline = asyncio.get_running_loop().time() + 10
    while prefix + "line 5\n" not in await text():  # echoed as soon as it starts
        assert asyncio.get_running_loop().time() < deadline, await text()
        await asyncio.sleep(0.1)
    assert await text() == "".join(f"{prefix}line {i}\n" for i in range(1, 6))
    assert await text(tail="2") == f"{prefix}line 4\n{prefix}line 5\n"

    async with setup.http.get(url, params={"follow": "true", "tail": "1"}) as resp:
        assert resp.status == 200
        assert await asyncio.wait_for(resp.content.readline(), 10) == f"{prefix}line 5\n".encode()
        run = setup.docker.exec_create(cid, ["touch", "/tmp/go"])
        setup.docker.exec_start(run["Id"])
        line = await asyncio.wait_for(resp.content.readline(), 10)
        assert line == f"{prefix}late line\n".encode()
        assert log_threads() == 1

    # the client left: the API cancels its request, the node closes the engine's stream
    deadline = asyncio.get_running_loop().time() + 10
    while log_threads():
        assert asyncio.get_running_loop().time() < deadline, "the docker log stream is still open"
        await asyncio.sleep(0.1)
