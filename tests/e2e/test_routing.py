"""Routing through real containers: ``lastbackend daemon`` with its router, Caddy and Docker.

What a user sees: a service created with a port answers at ``http://web.<project>.lb.localhost``
on the router's port, across all its containers, through scaling and through a container killed
under a steady stream of requests. Each container serves its own hostname at ``/id``, so the
test can tell which one answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from typing import Any

import aiohttp
import pytest

from lastbackend.store.embedded import EmbeddedEtcd
from tests.baseimage import INDEX_HTML
from tests.e2e.harness import LABEL_SERVICE, Harness, Proc, eventually
from tests.e2e.test_containers import App, converged
from tests.support import RawEtcd, free_ports

pytestmark = [pytest.mark.docker, pytest.mark.etcd]

SERVE_ID = "hostname > /www/id; trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait"
"""busybox httpd serving the base image's page at / and the container's hostname at /id."""


def routed_daemon(h: Harness, etcd: str) -> tuple[Proc, int]:
    if shutil.which("caddy") is None:
        pytest.skip("caddy is not installed (Debian: caddy)")
    http, https = free_ports(2)
    proc = h.start(
        "daemon", etcd, "--router-http", f"127.0.0.1:{http}", "--router-https", f"127.0.0.1:{https}"
    )
    return proc, http


async def through(port: int, host: str, path: str = "/") -> tuple[int, bytes]:
    timeout = aiohttp.ClientTimeout(total=5)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.get(f"http://127.0.0.1:{port}{path}", headers={"Host": host}) as resp,
    ):
        return resp.status, await resp.read()


async def answering(port: int, host: str, ids: list[str]) -> bool:
    """Whether the router's answers at ``/id`` come from exactly these containers."""
    wanted = {cid[:12] for cid in ids}
    seen: set[str] = set()
    for _ in range(4 * len(wanted) + 4):
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            status, body = await through(port, host, "/id")
            if status == 200:
                seen.add(body.decode().strip())
    return seen == wanted


async def steady(port: int, host: str, results: list[tuple[int, str]], stop: asyncio.Event) -> None:
    """One client, one request at a time, ~100 a second through the router, until ``stop``:
    each answer's status and body (the container's hostname), or 0 and the error."""
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while not stop.is_set() and len(results) < 5000:
            try:
                async with http.get(f"http://127.0.0.1:{port}/id", headers={"Host": host}) as r:
                    results.append((r.status, (await r.text()).strip()))
            except aiohttp.ClientError as exc:
                results.append((0, str(exc)))
            await asyncio.sleep(0.01)


HOST = "web.shop.lb.localhost"


async def serving(
    h: Harness, etcd: str, image: str, replicas: int
) -> tuple[App, str, int, list[str]]:
    """A routed daemon serving ``web`` of ``shop`` with ``replicas`` containers, every one
    answering through the router: the app, the service id, the router's port, container ids."""
    daemon, port = routed_daemon(h, etcd)
    await h.ready(daemon)
    app = App(h, daemon, "shop")
    await app.create_project()
    sid = await app.create_service("web", image, replicas=replicas, command=SERVE_ID)
    ids = await converged(h, app, "web", sid, replicas)
    await eventually(lambda: answering(port, HOST, ids), 20, "all answer", explain=h.explain)
    return app, sid, port, ids


async def test_a_service_is_served_at_its_name_and_follows_scaling(
    harness: Harness, etcd: RawEtcd, etcd_server: EmbeddedEtcd, base_image: str
) -> None:
    h = harness
    daemon, port = routed_daemon(h, etcd_server.endpoint)
    await h.ready(daemon)
    app = App(h, daemon, "shop")
    await app.create_project()
    sid = await app.create_service("web", base_image, replicas=3, command=SERVE_ID)
    host = "web.shop.lb.localhost"
    _, service = await h.call(daemon, "GET", "/api/projects/shop/services/web", expect=200)
    assert service["urls"][0] == f"http://{host}:{port}/"

    ids = await converged(h, app, "web", sid, 3)

    async def index() -> bool:
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            return await through(port, host) == (200, INDEX_HTML)
        return False

    await eventually(index, 20, f"{host} through the router", explain=h.explain)
    await eventually(lambda: answering(port, host, ids), 20, "all 3 answer", explain=h.explain)

    for replicas in (1, 2):
        await app.patch_config("web", {"replicas": replicas})
        ids = await converged(h, app, "web", sid, replicas)
        await eventually(
            lambda ids=ids: answering(port, host, ids),
            20,
            f"exactly the {replicas} running containers answer",
            explain=h.explain,
        )

    status, body = await through(port, "nobody.shop.lb.localhost")
    assert (status, body) == (404, b"no app is served at nobody.shop.lb.localhost\n")
    await h.call(daemon, "DELETE", "/api/projects/shop/services/web", expect=204)

    async def gone() -> bool:
        return (await through(port, host))[0] == 404

    await eventually(gone, 20, "a deleted service is no longer routed", explain=h.explain)


async def test_a_container_killed_under_load_loses_no_request_but_the_one_in_it(
    harness: Harness, etcd: RawEtcd, etcd_server: EmbeddedEtcd, base_image: str
) -> None:
    h = harness
    _, sid, port, ids = await serving(h, etcd_server.endpoint, base_image, 2)
    host = HOST

    results: list[tuple[int, str]] = []
    stop = asyncio.Event()
    load = asyncio.create_task(steady(port, host, results, stop))
    await asyncio.sleep(1.0)
    victim = ids[0]
    h.docker.kill(victim)  # SIGKILL: no goodbye, connections just fail
    await asyncio.sleep(3.0)  # the router retries on the other until the agent reports
    stop.set()
    await load
    failed: list[Any] = [r for r in results if r[0] != 200]
    assert len(results) > 100, "the stream was steady"
    # One client, one request at a time: at most one can be inside the victim when SIGKILL
    # lands, and Caddy (2.6) retries a request on another upstream only when the dial fails,
    # never once the upstream has taken it. Every other request must succeed.
    assert len(failed) <= 1, f"{len(failed)} of {len(results)} requests failed: {failed[:5]}"
    assert all(status == 502 for status, _ in failed), failed
    served_by = {body for _, body in results}
    assert victim[:12] in served_by, "the killed container served before it died"
    survivors = [c["Id"] for c in h.containers(f"{LABEL_SERVICE}={sid}") if c["Id"] != victim]
    assert any(s[:12] in served_by for s in survivors)


async def test_a_rolling_deploy_through_the_router_drops_no_request(
    harness: Harness, etcd: RawEtcd, etcd_server: EmbeddedEtcd, base_image: str
) -> None:
    h = harness
    app, sid, port, before = await serving(h, etcd_server.endpoint, base_image, 3)
    host = HOST

    results: list[tuple[int, str]] = []
    stop = asyncio.Event()
    load = asyncio.create_task(steady(port, host, results, stop))
    try:
        await app.patch_config("web", {"env": {"VERSION": "2"}})

        async def rolled() -> list[str] | None:
            mine = h.containers(f"{LABEL_SERVICE}={sid}")
            ids = [c["Id"] for c in mine if c["State"] == "running"]
            if len(mine) == 3 and len(ids) == 3 and not set(ids) & set(before):
                return ids
            return None

        after = await eventually(rolled, 90, "the rollout to finish", explain=h.explain)
        await eventually(lambda: answering(port, host, after), 20, "new ones answer")
    finally:
        stop.set()
        await load
    failed = [r for r in results if r[0] != 200]
    assert len(results) > 100, "the stream was steady"
    assert failed == [], f"{len(failed)} of {len(results)} requests failed: {failed[:5]}"
    served_by = {body for _, body in results}
    assert {c[:12] for c in before} <= served_by
    assert {c[:12] for c in after} & served_by


async def test_an_http_check_that_fails_keeps_the_container_out_and_restarts_it(
    harness: Harness, etcd: RawEtcd, etcd_server: EmbeddedEtcd, base_image: str
) -> None:
    h = harness
    daemon, port = routed_daemon(h, etcd_server.endpoint)
    await h.ready(daemon)
    app = App(h, daemon, "shop")
    await app.create_project()
    check = {"type": "http", "data": {"endpoint": "/healthz", "timeout": 3}}
    await app.create_service("web", base_image, command=SERVE_ID, health_check=check)
    host = "web.shop.lb.localhost"

    async def restarted() -> dict[str, Any] | None:
        found = await app.reported("web")
        return found[0] if found and found[0]["restarts"] >= 1 else None

    # the port is open and / answers, but /healthz is a 404: never ready, so never routed
    container = await eventually(restarted, 30, "a restart for the failed check", explain=h.explain)
    assert container["ready"] is False
    assert container["reason"] in ("HealthCheckFailed", "CrashLoopBackOff", "Starting")
    status, body = await through(port, host)
    assert (status, body) == (503, b"web of project shop has no running instance\n")
