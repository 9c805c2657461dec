"""The router with a real Caddy and real etcd; the "containers" are aiohttp servers on this host.

A router reads nothing but keys, so here the container objects and the node key are written as
the node agent writes them, pointing at small upstream servers this test runs (websockets, SSE,
header echo). ``tests/e2e/test_routing.py`` does the same through real containers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from lastbackend import codec
from lastbackend.api.app import make_app
from lastbackend.config import Settings
from lastbackend.model.common import now
from lastbackend.model.platform import Container
from lastbackend.model.pods import Node, ServiceStatus
from lastbackend.model.routers import Router as Announced
from lastbackend.router.daemon import Router
from lastbackend.secrets import Secrets, generate_key
from lastbackend.store import keys
from tests.conftest import ClientFactory, new_etcd_server
from tests.support import RawEtcd, eventually, free_port, free_ports
from tests.unit.test_certificates_model import Pki

pytestmark = pytest.mark.etcd

NODE = "n1"


def caddy_installed() -> None:
    import shutil

    if shutil.which("caddy") is None:
        pytest.skip("caddy is not installed (Debian: caddy)")


# upstreams ------------------------------------------------------------------------------------


class Upstream:
    """One "container": answers its name, echoes headers, streams SSE, echoes websockets."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self.hits = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> Upstream:
        app = web.Application()
        app.router.add_get("/", self.index)
        app.router.add_get("/headers", self.headers)
        app.router.add_get("/sse", self.sse)
        app.router.add_get("/ws", self.ws)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def index(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(text=self.name)

    async def headers(self, request: web.Request) -> web.Response:
        return web.json_response({k.lower(): v for k, v in request.headers.items()})

    async def sse(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for n in range(3):
            await resp.write(f"data: {n}\n\n".encode())
            await asyncio.sleep(0.3)  # each event must reach the client before the next is sent
        return resp

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for message in sock:
            await sock.send_str(f"{self.name}:{message.data}")
        return sock


# the world ------------------------------------------------------------------------------------


@attrs.define
class World:
    etcd: RawEtcd
    api: TestClient[Any, Any]
    settings: Settings
    secrets: Secrets
    tmp: Path
    routers: list[tuple[Router, asyncio.Task[None]]] = attrs.Factory(list)
    pid: str = ""

    @property
    def http(self) -> int:
        return self.settings.router_http_address[1]

    async def router(self, *, port_offset: int = 0, **overrides: Any) -> Router:
        settings = self.settings
        if port_offset or overrides:
            http, https = free_ports(2)
            settings = attrs.evolve(
                settings,
                router_http=f"127.0.0.1:{http}",
                router_https=f"127.0.0.1:{https}",
                **overrides,
            )
        router = Router(
            self.etcd, self.secrets, settings, data_dir=self.tmp / f"router-{len(self.routers)}"
        )
        task = asyncio.create_task(router.run())
        self.routers.append((router, task))
        await eventually(lambda: _ready(router, task), 20)
        return router

    async def service(self, name: str, domains: dict[str, bool] | None = None) -> str:
        if not self.pid:
            resp = await self.api.post("/api/projects", json={"name": "demo"})
            self.pid = (await resp.json())["id"]
        body: dict[str, Any] = {
            "name": name,
            "config": {"image": "busybox:1.36", "ports": {"8080/TCP": 0}},
            "domains": domains or {},
        }
        resp = await self.api.post("/api/projects/demo/services", json=body)
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["id"])

    async def node(self) -> None:
        node = Node(NODE, NODE, 4096, 2, "test", now(), address="http://127.0.0.1:1")
        await self.etcd.put(keys.node(NODE), codec.dumps(node))

    async def run(self, sid: str, upstream: Upstream, cid: str | None = None) -> str:
        """Report ``upstream`` as a running container of ``sid``, as a node agent would."""
        cid = cid or f"c-{upstream.name}"
        t = now()
        container = Container(cid, "running", t, t, {"8080/TCP": upstream.port}, pod="p", node=NODE)
        await self.etcd.put(keys.container(self.pid, sid, cid), codec.dumps(container))
        return cid

    async def serving(self, upstream: Upstream) -> tuple[str, Router]:
        """``web`` of ``demo`` on ``upstream``, answering through a new router."""
        await self.node()
        sid = await self.service("web")
        await self.run(sid, upstream)
        router = await self.router()
        await eventually(lambda: serves(self.http, "web.demo.lb.localhost", upstream.name))
        return sid, router

    async def stop_container(self, sid: str, cid: str) -> None:
        await self.etcd.delete_prefix(keys.container(self.pid, sid, cid))


async def _ready(router: Router, task: asyncio.Task[None]) -> bool:
    if task.done():
        task.result()  # raise what it died of
    return router.ready


@pytest.fixture
async def world(
    etcd: RawEtcd, make_client: ClientFactory, settings: Settings, tmp_path: Path
) -> AsyncIterator[World]:
    caddy_installed()
    key = generate_key()
    http, https = free_ports(2)
    routed = attrs.evolve(
        settings, secret_key=key, router_http=f"127.0.0.1:{http}", router_https=f"127.0.0.1:{https}"
    )
    api = await make_client(
        secret_key=key, router_http=routed.router_http, router_https=routed.router_https
    )
    w = World(etcd, api, routed, Secrets(key), tmp_path)
    yield w
    for _, task in w.routers:
        task.cancel()
    await asyncio.gather(*(t for _, t in w.routers), return_exceptions=True)


@pytest.fixture
async def upstreams() -> AsyncIterator[list[Upstream]]:
    made = [await Upstream(f"u{n}").start() for n in range(3)]
    yield made
    for upstream in made:
        await upstream.stop()


async def get(port: int, host: str, path: str = "/") -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}{path}", headers={"Host": host}) as resp,
    ):
        return resp.status, await resp.text()


async def serves(port: int, host: str, expected: str) -> bool:
    with contextlib.suppress(aiohttp.ClientError, OSError):
        return await get(port, host) == (200, expected)
    return False


# routing --------------------------------------------------------------------------------------


async def test_default_and_custom_hosts_route_held_and_unknown_ones_do_not(
    world: World, upstreams: list[Upstream]
) -> None:
    await world.node()
    sid = await world.service(
        "web", {"www.example.com": True, "old.example.com": False, "*.shop.example.com": True}
    )
    other = await world.service("api", {"api.shop.example.com": True})
    await world.run(sid, upstreams[0])
    await world.run(other, upstreams[1])
    await world.router()
    port = world.http
    await eventually(lambda: serves(port, "web.demo.lb.localhost", "u0"))
    assert await get(port, "www.example.com") == (200, "u0")
    assert await get(port, "WWW.Example.COM") == (200, "u0")  # hosts are case-insensitive
    assert await get(port, "a.shop.example.com") == (200, "u0")  # the wildcard
    assert await get(port, "api.shop.example.com") == (200, "u1")  # the exact host wins
    status, body = await get(port, "old.example.com")  # held, not routed
    assert (status, body) == (404, "no app is served at old.example.com\n")
    assert await get(port, "nobody.example.org") == (
        404,
        "no app is served at nobody.example.org\n",
    )
    assert await get(port, "a.b.shop.example.com") == (
        404,
        "no app is served at a.b.shop.example.com\n",
    )  # a wildcard covers one label


async def test_a_service_without_running_containers_says_so(world: World) -> None:
    await world.node()
    await world.service("web")
    await world.router()
    status, body = await get(world.http, "web.demo.lb.localhost")
    assert (status, body) == (503, "web of project demo has no running instance\n")


async def test_upstreams_follow_the_containers_and_balance(
    world: World, upstreams: list[Upstream]
) -> None:
    await world.node()
    sid = await world.service("web")
    cids = [await world.run(sid, u) for u in upstreams]
    await world.router()
    host = "web.demo.lb.localhost"

    async def answered_by(names: set[str]) -> bool:
        seen = {(await get(world.http, host))[1] for _ in range(12)}
        return seen == names

    await eventually(lambda: answered_by({"u0", "u1", "u2"}))
    await world.stop_container(sid, cids[1])
    await world.stop_container(sid, cids[2])
    await eventually(lambda: answered_by({"u0"}))
    await world.run(sid, upstreams[2])
    await eventually(lambda: answered_by({"u0", "u2"}))
    await world.etcd.delete_prefix(keys.service(world.pid, sid))  # the service is deleted
    await eventually(lambda: _status(world.http, host, 404))


async def _status(port: int, host: str, status: int) -> bool:
    return (await get(port, host))[0] == status


async def test_config_loads_under_steady_traffic_drop_no_request(
    world: World, upstreams: list[Upstream]
) -> None:
    sid, router = await world.serving(upstreams[0])
    host = "web.demo.lb.localhost"
    loads = router._loads.labels("loaded")._value.get()
    results: list[int | str] = []
    done = asyncio.Event()

    async def client() -> None:
        async with aiohttp.ClientSession() as http:  # keep-alive, as browsers do
            while not done.is_set():
                try:
                    async with http.get(
                        f"http://127.0.0.1:{world.http}/", headers={"Host": host}
                    ) as r:
                        await r.read()
                        results.append(r.status)
                except aiohttp.ClientError as exc:
                    results.append(str(exc))

    clients = [asyncio.create_task(client()) for _ in range(4)]
    for n in range(20):  # a container comes and goes: a new config each time
        cid = await world.run(sid, upstreams[1], cid=f"churn-{n}")
        await asyncio.sleep(0.1)
        await world.stop_container(sid, cid)
        await asyncio.sleep(0.1)
    done.set()
    await asyncio.gather(*clients)
    assert router._loads.labels("loaded")._value.get() - loads >= 20, "configs were loaded"
    assert len(results) > 200
    answered = [s for s in results if isinstance(s, int)]
    assert [s for s in answered if s != 200] == [], "a load never turns a request into an error"
    # Caddy re-binds its listeners on every load (SO_REUSEPORT) and the kernel resets a
    # connection caught in the old socket's accept queue as it closes: measured here at about
    # one per eight runs of this test (40 loads each). Keep-alive connections are not affected.
    resets = [s for s in results if isinstance(s, str)]
    assert len(resets) <= 2, resets


async def test_a_dead_upstream_is_retried_on_another(
    world: World, upstreams: list[Upstream]
) -> None:
    await world.node()
    sid = await world.service("web")
    for upstream in upstreams[:2]:
        await world.run(sid, upstream)
    await world.router()
    await eventually(lambda: serves(world.http, "web.demo.lb.localhost", "u0"))
    await upstreams[0].stop()  # gone without its container object being updated yet
    results = [await get(world.http, "web.demo.lb.localhost") for _ in range(20)]
    assert results == [(200, "u1")] * 20, results


async def test_headers_sse_and_websockets_pass_through(
    world: World, upstreams: list[Upstream]
) -> None:
    await world.serving(upstreams[0])
    host = "web.demo.lb.localhost"

    _, text = await get(world.http, host, "/headers")
    headers = json.loads(text)
    assert headers["x-forwarded-host"] == host
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert len(headers["x-request-id"]) == 36  # a UUID per request
    again = json.loads((await get(world.http, host, "/headers"))[1])
    assert again["x-request-id"] != headers["x-request-id"]

    loop = asyncio.get_running_loop()
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{world.http}/sse", headers={"Host": host}) as resp,
    ):
        arrivals = []
        async for line in resp.content:
            if line.startswith(b"data:"):
                arrivals.append((line.strip(), loop.time()))
    assert [a for a, _ in arrivals] == [b"data: 0", b"data: 1", b"data: 2"]
    assert arrivals[1][1] - arrivals[0][1] > 0.2, "events arrive as sent, not buffered"

    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"http://127.0.0.1:{world.http}/ws", headers={"Host": host}) as ws,
    ):
        await ws.send_str("hello")
        assert (await ws.receive()).data == "u0:hello"
        await ws.send_str("again")
        assert (await ws.receive()).data == "u0:again"


# TLS ------------------------------------------------------------------------------------------


def handshake(port: int, host: str, ca: str) -> x509.Certificate:
    """A verified TLS handshake with ``host`` (SNI); the certificate it was served."""
    context = ssl.create_default_context(cadata=ca)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


async def test_https_with_the_internal_ca_and_a_users_own_certificate(
    world: World, upstreams: list[Upstream]
) -> None:
    await world.node()
    sid = await world.service("web", {"shop.example.com": True})
    await world.run(sid, upstreams[0])
    pki = Pki("User")
    issued = pki.leaf("shop.example.com")
    resp = await world.api.put("/api/certificates/shop.example.com", json=issued.body())
    assert resp.status == 201, await resp.text()
    await world.router()
    resp = await world.api.get("/api/router/ca.pem")
    assert resp.status == 200
    ca = await resp.text()
    https = world.settings.router_https_address[1]

    async def internal() -> x509.Certificate | None:
        with contextlib.suppress(OSError, ssl.SSLError):
            return await asyncio.to_thread(handshake, https, "web.demo.lb.localhost", ca)
        return None

    served = await eventually(internal, 20)
    sans = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["web.demo.lb.localhost"]

    user_ca = pki.root.public_bytes(serialization.Encoding.PEM).decode()
    own = await asyncio.to_thread(handshake, https, "shop.example.com", user_ca)
    assert own.serial_number == issued.cert.serial_number  # the user's, not one Caddy made
    assert own.subject == issued.cert.subject
    with pytest.raises(ssl.SSLError):  # and not trusted through the internal root
        await asyncio.to_thread(handshake, https, "shop.example.com", ca)

    context = ssl.create_default_context(cadata=ca)
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"https://127.0.0.1:{https}/",
            headers={"Host": "web.demo.lb.localhost"},
            ssl=context,
            server_hostname="web.demo.lb.localhost",
        ) as got,
    ):
        assert (got.status, await got.text()) == (200, "u0")


# announcing: what `lastbackend push` waits for -------------------------------------------------


async def _routing(world: World, service: str) -> dict[str, Any]:
    resp = await world.api.get(f"/api/projects/demo/services/{service}/routing")
    assert resp.status == 200, await resp.text()
    return dict(await resp.json())


async def test_a_router_announces_the_revision_its_config_reflects_and_leaves_with_its_lease(
    world: World, upstreams: list[Upstream]
) -> None:
    sid, router = await world.serving(upstreams[0])
    ready = await world.etcd.get(keys.container(world.pid, sid, "c-u0"))
    assert ready is not None

    async def announced() -> Announced | None:
        kv = await world.etcd.get(keys.router(router.name))
        return None if kv is None else codec.loads(kv.value, Announced)

    async def passed(revision: int) -> bool:
        found = await announced()
        return found is not None and found.revision >= revision

    await eventually(lambda: passed(ready.mod_revision))
    shown = await announced()
    assert shown is not None
    assert (shown.http, shown.routes, shown.error) == (world.settings.router_http, 1, None)
    body = await _routing(world, "web")
    assert body["routed"] is True
    assert [(r["name"], r["current"]) for r in body["routers"]] == [(router.name, True)]
    listed = await (await world.api.get("/api/routers")).json()
    assert [r["name"] for r in listed["resources"]] == [router.name]

    # A write the table does not read (a rollout's status) reloads nothing, yet the announced
    # revision follows it: the config Caddy serves is still the one a build now would give.
    loads = router._loads.labels("loaded")._value.get()
    status = keys.service_part(world.pid, sid, "status")
    written = await world.etcd.put(status, codec.dumps(ServiceStatus()))
    await eventually(lambda: passed(written))
    assert (await _routing(world, "web"))["routed"] is True
    assert router._loads.labels("loaded")._value.get() == loads

    # Stopping revokes the lease: nobody waits for a router that is gone.
    for made, task in world.routers:
        if made is router:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert await world.etcd.get(keys.router(router.name)) is None
    body = await _routing(world, "web")
    assert (body["routed"], body["routers"]) == (True, [])


async def _refused_config(world: World, upstream: Upstream) -> None:
    """A certificate corrupted behind the API's back (Caddy cannot load it), then a new service
    ``api`` on ``upstream``: the config that would route it is refused."""
    issued = Pki("Broken").leaf("bad.example.com")
    resp = await world.api.put("/api/certificates/bad.example.com", json=issued.body())
    assert resp.status == 201, await resp.text()
    kv = await world.etcd.get(keys.certificate("bad.example.com"))
    assert kv is not None
    stored = json.loads(kv.value)
    stored["certificate"] = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    await world.etcd.put(kv.key, json.dumps(stored))
    other = await world.service("api")
    await world.run(other, upstream)


async def test_a_router_whose_config_is_refused_stays_behind_and_says_why(
    world: World, upstreams: list[Upstream]
) -> None:
    await world.serving(upstreams[0])
    await _refused_config(world, upstreams[1])

    async def behind() -> bool:
        body = await _routing(world, "api")
        [shown] = body["routers"]
        return not body["routed"] and not shown["current"] and "refused" in (shown["error"] or "")

    await eventually(behind)
    await asyncio.sleep(0.6)  # three announcements later it is still behind: nothing passed it
    assert await behind()
    assert (await get(world.http, "api.demo.lb.localhost"))[0] == 404
    await world.etcd.delete_prefix(keys.certificate("bad.example.com"))

    async def routed() -> bool:
        return bool((await _routing(world, "api"))["routed"])

    await eventually(routed)
    assert await serves(world.http, "api.demo.lb.localhost", "u1")


# faults ---------------------------------------------------------------------------------------


async def test_a_killed_caddy_is_restarted_and_serves_again(
    world: World, upstreams: list[Upstream]
) -> None:
    _, router = await world.serving(upstreams[0])
    host = "web.demo.lb.localhost"
    assert router.caddy.proc is not None
    os.kill(router.caddy.proc.pid, signal.SIGKILL)
    await eventually(lambda: _restarted(router), 20)
    await eventually(lambda: serves(world.http, host, "u0"), 20)


async def _restarted(router: Router) -> bool:
    return router.caddy.restarts >= 1 and router.ready


async def test_two_routers_serve_the_same_routes(world: World, upstreams: list[Upstream]) -> None:
    await world.node()
    sid = await world.service("web", {"www.example.com": True})
    await world.run(sid, upstreams[0])
    first = await world.router()
    second = await world.router(port_offset=1)
    ports = [first.settings.router_http_address[1], second.settings.router_http_address[1]]
    for port in ports:
        await eventually(lambda port=port: serves(port, "www.example.com", "u0"))
    await world.run(sid, upstreams[1])  # a change reaches both
    for port in ports:

        async def both(port: int = port) -> bool:
            return {(await get(port, "www.example.com"))[1] for _ in range(8)} == {"u0", "u1"}

        await eventually(both)


async def test_a_config_caddy_refuses_leaves_the_last_one_serving(
    world: World, upstreams: list[Upstream]
) -> None:
    _, router = await world.serving(upstreams[0])
    await _refused_config(world, upstreams[1])

    async def refused() -> bool:
        return router.error is not None and "refused" in router.error

    await eventually(refused)
    assert await get(world.http, "web.demo.lb.localhost") == (200, "u0")  # the last config
    assert (await get(world.http, "api.demo.lb.localhost"))[0] == 404  # the new one not loaded
    status = router.status()
    assert status["error"] is not None
    await world.etcd.delete_prefix(keys.certificate("bad.example.com"))
    await eventually(lambda: serves(world.http, "api.demo.lb.localhost", "u1"))
    assert router.error is None


async def test_without_etcd_the_router_keeps_serving_and_readyz_says_so(
    tmp_path: Path, upstreams: list[Upstream]
) -> None:
    caddy_installed()
    server = new_etcd_server(tmp_path)
    server.start()
    key = generate_key()
    http, https = free_ports(2)
    settings = Settings(
        etcd_endpoints=(server.endpoint,),
        secret_key=key,
        router_http=f"127.0.0.1:{http}",
        router_https=f"127.0.0.1:{https}",
    )
    try:
        async with RawEtcd([server.endpoint], timeout=1.0) as etcd:
            router = Router(etcd, Secrets(key), settings, data_dir=tmp_path / "router")
            api = TestClient(TestServer(make_app(settings, etcd, router=router.status)))
            await api.start_server()
            task = asyncio.create_task(router.run())
            try:
                world = World(etcd, api, settings, Secrets(key), tmp_path)
                await world.node()
                sid = await world.service("web")
                await world.run(sid, upstreams[0])
                await eventually(lambda: serves(world.http, "web.demo.lb.localhost", "u0"), 20)
                assert (await api.get("/readyz")).status == 200

                server.stop()
                ready = await api.get("/readyz")
                body = await ready.json()
                assert ready.status == 503
                assert body["router"]["serving"] == "the last config loaded"
                assert await get(world.http, "web.demo.lb.localhost") == (200, "u0")

                server.start()
                await world.run(sid, upstreams[1])  # changes flow again once etcd is back
                names = {"u0", "u1"}

                async def both() -> bool:
                    seen = {(await get(world.http, "web.demo.lb.localhost"))[1] for _ in range(8)}
                    return seen == names

                await eventually(both, 30)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await api.close()
    finally:
        server.stop()


async def test_lastbackend_routes_prints_what_the_routers_serve(
    world: World, upstreams: list[Upstream]
) -> None:
    await world.node()
    sid = await world.service("web", {"www.example.com": True})
    await world.run(sid, upstreams[0])
    await world.service("idle")
    lb = str(Path(sys.executable).with_name("lastbackend"))
    etcd = world.settings.etcd_endpoints[0]
    proc = await asyncio.create_subprocess_exec(
        lb, "routes", "--json", "--etcd", etcd, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    dial = f"127.0.0.1:{upstreams[0].port}"
    assert json.loads(out) == [
        {"host": "idle.demo.lb.localhost", "project": "demo", "service": "idle", "upstreams": []},
        {"host": "web.demo.lb.localhost", "project": "demo", "service": "web", "upstreams": [dial]},
        {"host": "www.example.com", "project": "demo", "service": "web", "upstreams": [dial]},
    ]
    proc = await asyncio.create_subprocess_exec(
        lb, "routes", "--etcd", etcd, stdout=asyncio.subprocess.PIPE
    )
    text = (await proc.communicate())[0].decode()
    assert f"www.example.com  ->  {dial}    # web of demo" in text
    assert "idle.demo.lb.localhost  ->  (no running instance: 503)" in text
