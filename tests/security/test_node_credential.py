"""API processes and node agents trust each other through the node token only (issue 13, s. 4).

The API reads a container's logs from the node that runs it, at the address the node wrote into
``nodes/<name>``: whoever can write that key chooses where the request goes. It used to carry
the API's first admin token, for any caller, to any address. Here a fake node (an aiohttp server
that records the ``Authorization`` it receives) is registered in ``nodes/<name>`` of the real
etcd and the real API proxies to it: it must be sent the node token and nothing else, and an
address that is more than ``http(s)://host[:port]`` must get no request at all. The node's side
is the real app with a log source standing in for the agent: it takes the node token, not a user
token; the user routes do not take the node token. A node that would expose its routes with no
node token refuses to start.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from lastbackend import cli, codec, config
from lastbackend.api.app import make_app
from lastbackend.cli.options import settings_from
from lastbackend.config import ConfigError, Settings
from lastbackend.model.platform import Container
from lastbackend.model.pods import Node
from lastbackend.store import keys
from tests.conftest import ClientFactory
from tests.support import RawEtcd, eventually, free_port

pytestmark = pytest.mark.etcd

Client = TestClient[Any, Any]
ADMIN, READ = "admin-token-of-this-test", "read-token-of-this-test"
NODE_TOKEN = "node-token-of-this-test"
NODE = "fake"
CID = "c0ffee" + "0" * 58


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@attrs.define
class FakeNode:
    """An HTTP server standing in for a node agent: what it was asked, with which credential."""

    url: str
    seen: list[tuple[str, str | None]] = attrs.Factory(list)
    """(path, Authorization header) of every request, in order."""


async def fake_node(redirect_to: str | None = None) -> AsyncIterator[FakeNode]:
    node = FakeNode("")

    async def anything(request: web.Request) -> web.StreamResponse:
        node.seen.append((request.path, request.headers.get("Authorization")))
        if redirect_to is not None:
            raise web.HTTPTemporaryRedirect(redirect_to + request.path_qs)
        return web.Response(body=b"hello from the node\n")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    node.url = f"http://127.0.0.1:{server.port}"
    try:
        yield node
    finally:
        await server.close()


@pytest.fixture
async def node() -> AsyncIterator[FakeNode]:
    async for served in fake_node():
        yield served


@attrs.define
class World:
    etcd: RawEtcd
    make_client: ClientFactory
    pid: str = ""
    sid: str = ""

    async def api(self, **overrides: Any) -> Client:
        """The API with user tokens on and, unless overridden, the node token."""
        settings: dict[str, Any] = {
            "admin_tokens": (ADMIN,),
            "read_tokens": (READ,),
            "node_token": NODE_TOKEN,
        }
        return await self.make_client(**(settings | overrides))

    async def service(self, api: Client) -> None:
        """A project and a service with one container, reported as running on ``NODE``."""
        resp = await api.post("/api/projects", json={"name": "demo"}, headers=bearer(ADMIN))
        assert resp.status == 201, await resp.text()
        self.pid = (await resp.json())["id"]
        body = {"name": "web", "config": {"image": "registry.local/web:1"}}
        resp = await api.post(
            f"/api/projects/{self.pid}/services", json=body, headers=bearer(ADMIN)
        )
        assert resp.status == 201, await resp.text()
        self.sid = (await resp.json())["id"]
        t = datetime.now(UTC)
        container = Container(id=CID, status="running", created=t, updated=t, node=NODE)
        await self.etcd.put(keys.container(self.pid, self.sid, CID), codec.dumps(container))

    async def register(self, address: str) -> None:
        """``nodes/<NODE>`` as an agent (or anyone who may write the key) would write it."""
        t = datetime.now(UTC)
        entry = Node(NODE, "fake-host", 1024, 1, "fake", t, address=address)
        await self.etcd.put(keys.node(NODE), codec.dumps(entry))

    async def logs(self, api: Client, token: str = ADMIN) -> tuple[int, str]:
        resp = await api.get(
            f"/api/projects/{self.pid}/services/{self.sid}/logs", headers=bearer(token)
        )
        return resp.status, await resp.text()


@pytest.fixture
async def world(etcd: RawEtcd, make_client: ClientFactory) -> World:
    return World(etcd, make_client)


# the API's side: what it sends, and where ------------------------------------------------------


async def test_the_api_sends_nodes_the_node_token_never_the_callers_or_an_admin_token(
    world: World, node: FakeNode
) -> None:
    api = await world.api()
    await world.service(api)
    await world.register(node.url)
    for caller in (ADMIN, READ):
        status, body = await world.logs(api, caller)
        assert status == 200, body
        assert body == f"[{CID[:12]}] hello from the node\n"
    assert [auth for _, auth in node.seen] == [f"Bearer {NODE_TOKEN}"] * 2
    assert all(path == f"/node/containers/{CID}/logs" for path, _ in node.seen)
    assert not any(ADMIN in str(auth) or READ in str(auth) for _, auth in node.seen)


async def test_an_api_without_a_node_token_sends_nodes_nothing(
    world: World, node: FakeNode
) -> None:
    api = await world.api(node_token="")
    await world.service(api)
    await world.register(node.url)
    status, body = await world.logs(api)
    assert status == 503, body
    assert "no node token configured" in body
    assert ADMIN not in body
    assert node.seen == [], "no request reached the node, with a user's token or without one"


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("http://ops:hunter2@{host}", "has userinfo"),
        ("http://ops@{host}", "has userinfo"),
        ("http://{host}/prefix", "has a path"),
        ("http://{host}/node/containers/other/logs", "has a path"),
        ("http://{host}?x=1", "has a query or fragment"),
        ("http://{host}#x", "has a query or fragment"),
        ("file:///etc/passwd", "is not an http:// or https:// URL"),
        ("ftp://{host}", "is not an http:// or https:// URL"),
        ("http://{host}\\@evil.example", "backslash"),
        ("http://{host}\n", "control"),
    ],
    ids=[
        "userinfo",
        "user",
        "path",
        "route-path",
        "query",
        "fragment",
        "file",
        "ftp",
        "backslash",
        "newline",
    ],
)
async def test_an_invalid_node_address_gets_no_request_and_a_line_saying_why(
    world: World, node: FakeNode, address: str, reason: str
) -> None:
    api = await world.api()
    await world.service(api)
    await world.register(address.format(host=node.url.removeprefix("http://")))
    status, body = await world.logs(api)
    assert status == 503, body
    assert f"node {NODE} advertises an invalid address: " in body
    assert reason in body
    assert "hunter2" not in body
    assert node.seen == []


async def test_a_valid_address_beside_an_invalid_one_still_streams(
    world: World, node: FakeNode, etcd: RawEtcd
) -> None:
    """The refusal is per container: the other container's logs come, with a line for this."""
    api = await world.api()
    await world.service(api)
    await world.register(f"{node.url}/")  # a trailing slash is fine
    t = datetime.now(UTC)
    other = Container(id="b" * 64, status="running", created=t, updated=t, node="bad")
    await etcd.put(keys.container(world.pid, world.sid, other.id), codec.dumps(other))
    bad = Node("bad", "bad-host", 1024, 1, "fake", t, address="http://ops:pw@evil.example")
    await etcd.put(keys.node("bad"), codec.dumps(bad))
    status, body = await world.logs(api)
    assert status == 200, body
    assert f"[{CID[:12]}] hello from the node\n" in body
    assert f"[{'b' * 12}] -- logs unavailable: node bad advertises an invalid address: " in body
    assert len(node.seen) == 1


async def test_a_nodes_redirect_is_not_followed(world: World) -> None:
    """A node (or whoever wrote its key) cannot bounce the request, token and all, elsewhere."""
    async for elsewhere in fake_node():
        async for node in fake_node(redirect_to=elsewhere.url):
            api = await world.api()
            await world.service(api)
            await world.register(node.url)
            status, body = await world.logs(api)
            assert status == 503, body
            assert f"node {NODE} answered 307" in body
            assert len(node.seen) == 1
            assert elsewhere.seen == []


# the node's side: which token it takes -----------------------------------------------------------


async def _one_line(cid: str, follow: bool, tail: int | None) -> AsyncIterator[bytes]:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"node output\n"

    return chunks()


async def node_app(
    etcd: RawEtcd, settings: Settings, **overrides: Any
) -> tuple[Client, Callable[..., Awaitable[int]]]:
    """A node process's app (system and node routes) on the real etcd, with a log source."""
    values: dict[str, Any] = {"admin_tokens": (ADMIN,), "read_tokens": (READ,)}
    app = make_app(
        attrs.evolve(settings, **(values | overrides)), etcd, families=False, logs=_one_line
    )
    client = TestClient(TestServer(app))
    await client.start_server()

    async def status(headers: dict[str, str] | None = None) -> int:
        resp = await client.get(f"/node/containers/{CID}/logs", headers=headers)
        await resp.read()
        return resp.status

    return client, status


async def test_node_routes_take_the_node_token_and_no_user_token(
    etcd: RawEtcd, settings: Settings
) -> None:
    client, status = await node_app(etcd, settings, node_token=NODE_TOKEN)
    try:
        assert await status(bearer(ADMIN)) == 401
        assert await status(bearer(READ)) == 401
        assert await status() == 401
        assert await status(bearer(NODE_TOKEN + "x")) == 401
        assert await status({"Authorization": f"Basic {NODE_TOKEN}"}) == 401
        resp = await client.get(f"/node/containers/{CID}/logs", headers=bearer(NODE_TOKEN))
        assert (resp.status, await resp.read()) == (200, b"node output\n")
        resp = await client.get(f"/node/containers/{CID}/logs", headers=bearer(ADMIN))
        assert "node" in (await resp.json())["errors"][0]["detail"]
    finally:
        await client.close()


async def test_a_node_without_a_node_token_serves_its_logs_to_nobody(
    etcd: RawEtcd, settings: Settings
) -> None:
    """Not even to an admin token: there is no other credential it could fall back on."""
    for overrides in ({}, {"admin_tokens": (), "read_tokens": ()}):
        client, status = await node_app(etcd, settings, **overrides)
        try:
            assert await status(bearer(ADMIN)) == 401
            assert await status() == 401
        finally:
            await client.close()


async def test_user_routes_do_not_take_the_node_token(world: World) -> None:
    api = await world.api()
    assert (await api.get("/api/projects", headers=bearer(NODE_TOKEN))).status == 401
    resp = await api.post("/api/projects", json={"name": "x"}, headers=bearer(NODE_TOKEN))
    assert resp.status == 401
    assert (await api.get("/api/projects", headers=bearer(ADMIN))).status == 200
    assert await world.etcd.get(keys.project_name("x")) is None


# starting: refusals and defaults ---------------------------------------------------------------


def lastbackend(*argv: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    script = Path(sys.executable).parent / "lastbackend"
    return subprocess.Popen(
        [str(script), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
    )


def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LB_")}
    env["LB_DATA_DIR"] = str(tmp_path / "data")
    return env


@pytest.mark.parametrize("listen", ["0.0.0.0", "10.255.255.1"])
def test_a_node_on_a_non_loopback_address_without_a_node_token_refuses_to_start(
    tmp_path: Path, settings: Settings, listen: str
) -> None:
    env = clean_env(tmp_path)
    endpoint = settings.etcd_endpoints[0]
    argv = ("node", "--etcd", endpoint, "--listen", f"{listen}:{free_port()}", "--token", ADMIN)
    proc = lastbackend(*argv, env=env)
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.decode(errors="replace")
    assert proc.returncode == 2, text
    assert "no node token is configured" in text
    assert "LB_NODE_TOKEN" in text
    # the same address is fine for an API process, and for a node that has a node token
    exposed = Settings(listen=f"{listen}:2967", admin_tokens=(ADMIN,))
    exposed.check(frozenset({"api"}))
    attrs.evolve(exposed, node_token=NODE_TOKEN).check(frozenset({"node"}))


async def test_the_daemon_makes_its_own_node_token_and_its_node_routes_refuse_user_tokens(
    tmp_path: Path, settings: Settings
) -> None:
    """No node token configured: the daemon starts (loopback or not) with one in memory, so its
    own API reads its own node's logs, and no user token opens its node routes."""
    env = clean_env(tmp_path)
    env["LB_DOCKER_HOST"] = f"unix://{tmp_path}/no-docker.sock"  # the agent never gets to run
    port = free_port()
    argv = (
        "daemon",
        "--no-router",
        "--etcd",
        settings.etcd_endpoints[0],
        "--listen",
        f"0.0.0.0:{port}",
        "--token",
        ADMIN,
        "--name",
        "daemon-node",
    )
    proc = lastbackend(*argv, env=env)
    try:
        async with aiohttp.ClientSession() as http:

            async def answers() -> int | None:
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                try:
                    async with http.get(
                        f"http://127.0.0.1:{port}/node/containers/{CID}/logs", headers=bearer(ADMIN)
                    ) as resp:
                        return resp.status
                except aiohttp.ClientError:
                    return None

            assert await eventually(answers, 30) == 401
    finally:
        proc.terminate()
        try:
            out, _ = await asyncio.to_thread(proc.communicate, timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    text = out.decode(errors="replace")
    assert "generated one in memory" in text
    assert NODE_TOKEN not in text


def test_the_node_token_setting_is_read_like_the_other_tokens_and_never_shown(
    tmp_path: Path,
) -> None:
    file = tmp_path / "lb.toml"
    file.write_text(f'[auth]\nnode_token = "{NODE_TOKEN}-file"\n')
    assert config.load(file=file, environ={}).node_token == f"{NODE_TOKEN}-file"
    env = {"LB_NODE_TOKEN": f"{NODE_TOKEN}-env"}
    assert config.load(file=file, environ=env).node_token == f"{NODE_TOKEN}-env"
    _, params = cli.parse(["node", "--node-token", f"{NODE_TOKEN}-flag"])
    assert settings_from(params).node_token == f"{NODE_TOKEN}-flag"
    shown = repr(Settings(node_token=NODE_TOKEN))
    assert NODE_TOKEN not in shown
    assert "node_token='***'" in shown
    for bad, why in (
        (ADMIN, "differ from every admin"),
        ("short", "16 to 512"),
        ("a b" * 9, "no spaces"),
    ):
        with pytest.raises(ConfigError, match=why):
            Settings(admin_tokens=(ADMIN,), node_token=bad).check()
