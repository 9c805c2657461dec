"""Services on real containers: ``lastbackend`` processes, a real etcd and a real Docker engine.

Every test starts the console script as subprocesses (``lastbackend daemon``, or ``api``,
``controller`` and ``node`` separately) on free ports with a node name of its own, drives them
through the REST API, and checks what a user would notice: what ``docker ps`` shows, what the
published ports answer, what the containers API reports and what is left in etcd. Conditions are
polled with deadlines; the only sleeps are actions (an etcd outage) or the observation window of
a negative check (a container that must never start).

The ``harness`` fixture kills every process a test started and then force-removes every container
and volume labelled ``io.lastbackend.node=<the test's node>``, so nothing leaks between tests even
when one fails half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import docker
import docker.errors
import pytest

from lastbackend.store.embedded import EmbeddedEtcd
from tests.baseimage import INDEX_HTML
from tests.conftest import new_etcd_server
from tests.e2e.conftest import Registry, api_client
from tests.e2e.harness import (
    LABEL_NODE,
    LABEL_POD,
    LABEL_SERVICE,
    LABEL_TEMPLATE,
    LEASE_TTL,
    ROOT,
    SERVE,
    Harness,
    Proc,
    docker_time,
    eventually,
    push,
)
from tests.support import RawEtcd

pytestmark = [pytest.mark.docker, pytest.mark.etcd]


# --- the API, as a dashboard uses it -------------------------------------------------------------


class App:
    """One project with services, through the API of ``proc``."""

    def __init__(self, h: Harness, proc: Proc, project: str) -> None:
        self.h = h
        self.proc = proc
        self.project = project
        self.pid = ""

    async def create_project(self) -> None:
        _, body = await self.h.call(
            self.proc, "POST", "/api/projects", {"name": self.project}, expect=201
        )
        self.pid = body["id"]

    async def create_service(self, name: str, image: str, **config: Any) -> str:
        body = {
            "name": name,
            "config": {
                "image": image,
                "replicas": 1,
                "memory": 32,
                "command": SERVE,
                "ports": {"8080/TCP": 0},
                **config,
            },
        }
        _, service = await self.h.call(
            self.proc, "POST", f"/api/projects/{self.project}/services", body, expect=201
        )
        return str(service["id"])

    async def patch_config(self, service: str, changes: dict[str, Any]) -> None:
        path = f"/api/projects/{self.project}/services/{service}/config"
        await self.h.call(self.proc, "PATCH", path, changes, expect=200)

    async def reported(self, service: str) -> list[dict[str, Any]]:
        """The containers API: what the node agent reports for the service."""
        path = f"/api/projects/{self.project}/services/{service}/containers?per_page=100"
        _, body = await self.h.call(self.proc, "GET", path, expect=200)
        return list(body["resources"])


async def converged(h: Harness, app: App, service: str, sid: str, replicas: int) -> list[str]:
    """Wait for exactly ``replicas`` containers of the service, all running in Docker and
    running and ready in the containers API; their ids."""

    async def probe() -> list[str] | None:
        mine = h.containers(f"{LABEL_SERVICE}={sid}")
        running = sorted(c["Id"] for c in mine if c["State"] == "running")
        if len(mine) != replicas or len(running) != replicas:
            return None
        reported = await app.reported(service)
        serving = [c["id"] for c in reported if c["status"] == "running" and c["ready"]]
        if sorted(serving) != running:  # running, and passing its health check
            return None
        if len(reported) != replicas:
            return None
        return running

    ids: list[str] = await eventually(
        probe, 45, f"{replicas} running containers of {service}", explain=h.explain
    )
    return ids


async def page(port: int) -> tuple[int, bytes]:
    timeout = aiohttp.ClientTimeout(total=3)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.get(f"http://127.0.0.1:{port}/") as resp,
    ):
        return resp.status, await resp.read()


async def keys_under(etcd: RawEtcd, prefix: str) -> list[str]:
    return [kv.key for kv in (await etcd.range(prefix, keys_only=True)).kvs]


async def orphans(h: Harness, etcd: RawEtcd) -> list[str]:
    """lb- containers of this node whose pod has no ``pods/<node>/<pod>`` key."""
    pods = set(await keys_under(etcd, f"{ROOT}pods/{h.node}/"))
    return [
        f"{c['Names'][0]} pod={c['Labels'].get(LABEL_POD)}"
        for c in h.containers()
        if c["Names"][0].lstrip("/").startswith("lb-")
        and f"{ROOT}pods/{h.node}/{c['Labels'].get(LABEL_POD)}" not in pods
    ]


def templates(containers: list[dict[str, Any]]) -> set[str]:
    return {c["Labels"].get(LABEL_TEMPLATE, "") for c in containers}


# --- 1. serving ----------------------------------------------------------------------------------


async def test_three_replicas_answer_on_their_published_ports(
    harness: Harness, etcd: RawEtcd, etcd_server: EmbeddedEtcd, base_image: str
) -> None:
    h = harness
    daemon = h.start("daemon", etcd_server.endpoint)
    await h.ready(daemon)
    app = App(h, daemon, "shop")
    await app.create_project()
    sid = await app.create_service("web", base_image, replicas=3)

    ids = await converged(h, app, "web", sid, 3)
    reported = await app.reported("web")
    assert {c["id"] for c in reported} == set(ids)
    ports = [c["ports"]["8080/TCP"] for c in reported]
    assert len(set(ports)) == 3, f"each container has a host port of its own: {reported}"
    for c in reported:
        assert c["node"] == h.node

    for port in ports:

        async def serves(port: int = port) -> bytes | None:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                status, body = await page(port)
                if status == 200:
                    return body
            return None

        body = await eventually(serves, 10, f"HTTP 200 on port {port}", explain=h.explain)
        assert body == INDEX_HTML


# --- 2. scaling ----------------------------------------------------------------------------------


async def test_scale_three_to_one_to_two_keeps_the_oldest(
    harness: Harness, etcd: RawEtcd, etcd_server: EmbeddedEtcd, base_image: str
) -> None:
    h = harness
    daemon = h.start("daemon", etcd_server.endpoint)
    await h.ready(daemon)
    app = App(h, daemon, "shop")
    await app.create_project()
    sid = await app.create_service("web", base_image, replicas=1)
    [first] = await converged(h, app, "web", sid, 1)
    # Pod and container times are RFC 3339 to the second: let the first container be
    # unambiguously the oldest before the others are made.
    created = docker_time(h.docker.inspect_container(first)["Created"])
    await eventually(
        lambda: datetime.now(UTC).replace(microsecond=0) > created, 2, "the next second"
    )

    await app.patch_config("web", {"replicas": 3})
    three = await converged(h, app, "web", sid, 3)
    assert first in three

    await app.patch_config("web", {"replicas": 1})
    one = await converged(h, app, "web", sid, 1)
    assert one == [first], (
        f"scaling down removes the newest: expected the oldest container {first[:12]} kept, "
        f"kept {[c[:12] for c in one]} of {[c[:12] for c in three]}"
    )

    await app.patch_config("web", {"replicas": 2})
    two = await converged(h, app, "web", sid, 2)
    assert first in two, "scaling up adds containers, the running one stays"
    assert len(h.running()) == 2


# --- 3. a killed container is replaced -----------------------------------------------------------


async def test_docker_kill_is_replaced_within_seconds(
    harness: Harness, etcd: RawEtcd, etcd_server: EmbeddedEtcd, base_image: str
) -> None:
    h = harness
    daemon = h.start("daemon", etcd_server.endpoint)
    await h.ready(daemon)
    app = App(h, daemon, "shop")
    await app.create_project()
    sid = await app.create_service("web", base_image, replicas=3)
    before = await converged(h, app, "web", sid, 3)

    victim = before[1]
    killed_at = time.monotonic()
    h.docker.kill(victim)

    def replaced() -> list[str] | None:
        running = {c["Id"] for c in h.running(f"{LABEL_SERVICE}={sid}")}
        return sorted(running) if len(running) == 3 and victim not in running else None

    after = await eventually(
        replaced, 6, "a replacement running after docker kill", interval=0.05, explain=h.explain
    )
    elapsed = time.monotonic() - killed_at
    assert set(before) - {victim} < set(after), "the other containers were left alone"

    async def reported_replacement() -> bool:
        ids = {c["id"] for c in await app.reported("web") if c["status"] == "running"}
        return ids == set(after)

    await eventually(
        reported_replacement, 5, "the containers API reports the replacement", explain=h.explain
    )
    ids = {c["id"] for c in await app.reported("web")}
    assert victim not in ids, "the dead container is no longer reported"
    with pytest.raises(docker.errors.NotFound):
        h.docker.inspect_container(victim)
    assert elapsed < 6


# --- 4. rollouts never drop to zero --------------------------------------------------------------


class DockerSampler(threading.Thread):
    """Samples ``docker ps`` of one node every ``interval`` s on its own client."""

    def __init__(self, dockerd: str, node: str, interval: float = 0.05) -> None:
        super().__init__(daemon=True, name="docker-sampler")
        self.api = api_client(dockerd)
        self.node = node
        self.interval = interval
        self.samples: list[tuple[float, int, tuple[str, ...]]] = []
        self.stopped = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        start = time.monotonic()
        try:
            while not self.stopped.is_set():
                found = self.api.containers(
                    filters={"label": [f"{LABEL_NODE}={self.node}"], "status": "running"}
                )
                tpl = tuple(sorted(c["Labels"].get(LABEL_TEMPLATE, "") for c in found))
                self.samples.append((round(time.monotonic() - start, 3), len(found), tpl))
                self.stopped.wait(self.interval)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.api.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join(10)

    def timeline(self) -> str:
        """The samples where something changed, one line each."""
        lines, last = [], None
        for t, n, tpl in self.samples:
            if (n, tpl) != last:
                lines.append(f"{t:7.3f}s running={n} templates={sorted(set(tpl))}")
                last = (n, tpl)
        return "\n".join(lines)


@pytest.mark.parametrize("change", ["image", "env"])
async def test_config_change_rolls_without_dropping_below_replicas(
    harness: Harness, etcd: RawEtcd, etcd_server: EmbeddedEtcd, base_image: str, change: str
) -> None:
    h = harness
    repository, _, _ = base_image.rpartition(":")
    new_image = f"{repository}:rollout-2"
    h.docker.tag(base_image, repository, "rollout-2")  # the same bits under a second tag
    daemon = h.start("daemon", etcd_server.endpoint)
    await h.ready(daemon)
    app = App(h, daemon, "shop")
    await app.create_project()
    sid = await app.create_service("web", base_image, replicas=3, env={"VERSION": "1"})
    before = await converged(h, app, "web", sid, 3)
    [old] = templates(h.running())

    sampler = DockerSampler(h.dockerd, h.node)
    sampler.start()
    try:
        if change == "image":
            await app.patch_config("web", {"image": new_image})
        else:
            await app.patch_config("web", {"env": {"VERSION": "2"}})

        def rolled() -> bool:
            mine = h.containers()
            return (
                len(mine) == 3
                and all(c["State"] == "running" for c in mine)
                and len(templates(mine)) == 1
                and old not in templates(mine)
            )

        await eventually(rolled, 60, "the rollout to finish", explain=h.explain)
        after = await converged(h, app, "web", sid, 3)
    finally:
        sampler.stop()
    assert sampler.error is None, sampler.error
    assert not set(before) & set(after), "every container was replaced"
    for cid in after:
        config = h.docker.inspect_container(cid)["Config"]
        if change == "image":
            assert config["Image"] == new_image, config["Image"]
        else:
            assert "VERSION=2" in config["Env"], config["Env"]

    counts = [n for _, n, _ in sampler.samples]
    timeline = sampler.timeline()
    assert any(len(set(tpl)) == 2 for _, _, tpl in sampler.samples), (
        f"the sampler saw the rollout under way:\n{timeline}"
    )
    assert min(counts) > 0, f"never zero running during the rollout:\n{timeline}"
    assert min(counts) >= 3, f"never fewer than the 3 replicas running:\n{timeline}"
    assert max(counts) <= 4, f"surge of one at most:\n{timeline}"


# --- 5. kill -9 of the daemon mid-rollout --------------------------------------------------------


async def test_daemon_killed_mid_rollout_converges_without_orphans(
    harness: Harness, etcd: RawEtcd, etcd_server: EmbeddedEtcd, base_image: str
) -> None:
    h = harness
    daemon = h.start("daemon", etcd_server.endpoint)
    await h.ready(daemon)
    app = App(h, daemon, "shop")
    await app.create_project()
    sid = await app.create_service("web", base_image, replicas=3, env={"VERSION": "1"})
    await converged(h, app, "web", sid, 3)
    [old] = templates(h.running())

    await app.patch_config("web", {"env": {"VERSION": "2"}})
    await eventually(
        lambda: templates(h.containers()) - {old},
        20,
        "a container of the new template",
        interval=0.02,
        explain=h.explain,
    )
    daemon.kill()
    at_kill = h.containers()
    assert old in templates(at_kill), "killed in the middle of the rollout"
    assert templates(at_kill) - {old}, "killed in the middle of the rollout"

    restarted = h.start("daemon", etcd_server.endpoint)
    await h.ready(restarted, within=LEASE_TTL + 30)
    app.proc = restarted

    def done() -> bool:
        mine = h.containers()
        return (
            len(mine) == 3
            and all(c["State"] == "running" for c in mine)
            and len(templates(mine)) == 1
            and old not in templates(mine)
        )

    await eventually(done, LEASE_TTL + 45, "3 containers of the new template", explain=h.explain)
    after = await converged(h, app, "web", sid, 3)
    for cid in after:
        assert "VERSION=2" in h.docker.inspect_container(cid)["Config"]["Env"]
    assert await orphans(h, etcd) == [], h.explain()
    pods = await keys_under(etcd, f"{ROOT}pods/")
    assert len(pods) == 3, pods
    assert len(await keys_under(etcd, f"{ROOT}helper/pods/")) == 3
    assert {c["Labels"][LABEL_POD] for c in h.containers()} == {k.rsplit("/", 1)[1] for k in pods}


async def test_graceful_daemon_restart_adopts_running_containers(
    harness: Harness, etcd: RawEtcd, etcd_server: EmbeddedEtcd, base_image: str
) -> None:
    """A restart (an upgrade: SIGTERM, start again with the same name) keeps what runs."""
    h = harness
    daemon = h.start("daemon", etcd_server.endpoint)
    await h.ready(daemon)
    app = App(h, daemon, "shop")
    await app.create_project()
    sid = await app.create_service("web", base_image, replicas=2)
    before = await converged(h, app, "web", sid, 2)

    sampler = DockerSampler(h.dockerd, h.node)
    sampler.start()
    try:
        assert daemon.terminate() == 0, daemon.tail()
        restarted = h.start("daemon", etcd_server.endpoint)
        await h.ready(restarted)
        app.proc = restarted
        await converged(h, app, "web", sid, 2)
        # The new controllers act within moments of syncing: watch a while, then look again.
        await asyncio.sleep(3)
        after = await converged(h, app, "web", sid, 2)
    finally:
        sampler.stop()
    timeline = sampler.timeline()
    assert after == before, (
        "the restarted agent adopts the running containers instead of replacing them: "
        f"{[c[:12] for c in before]} -> {[c[:12] for c in after]}\n{timeline}\n{h.explain()}"
    )
    assert min(n for _, n, _ in sampler.samples) > 0, (
        f"never zero running across a restart of the daemon:\n{timeline}"
    )


# --- 6. etcd restarted under the daemon ----------------------------------------------------------


async def test_change_applied_after_etcd_restart(
    harness: Harness, tmp_path: Path, base_image: str
) -> None:
    h = harness
    (tmp_path / "private").mkdir()
    server = new_etcd_server(tmp_path / "private")
    h.etcd_servers.append(server)
    server.start()
    daemon = h.start("daemon", server.endpoint)
    await h.ready(daemon)
    app = App(h, daemon, "shop")
    await app.create_project()
    sid = await app.create_service("web", base_image, replicas=1)
    await converged(h, app, "web", sid, 1)

    server.stop()
    await asyncio.sleep(2)  # the outage
    server.start()

    async def patched() -> bool:
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            path = f"/api/projects/shop/services/{sid}/config"
            status, _ = await h.call(daemon, "PATCH", path, {"replicas": 2})
            return status == 200
        return False

    await eventually(patched, 20, "PATCH accepted after etcd came back", explain=h.explain)
    await converged(h, app, "web", sid, 2)
    assert daemon.alive, daemon.tail()

    await app.patch_config("web", {"replicas": 1})
    await converged(h, app, "web", sid, 1)


# --- 7. two controller processes -----------------------------------------------------------------


async def test_controller_failover_within_the_lease_ttl(
    harness: Harness, etcd: RawEtcd, etcd_server: EmbeddedEtcd, base_image: str
) -> None:
    h = harness
    endpoint = etcd_server.endpoint
    api = h.start("api", endpoint)
    node = h.start("node", endpoint)
    controllers = [h.start("controller", endpoint), h.start("controller", endpoint)]
    for proc in (api, node, *controllers):
        await h.ready(proc)

    async def leader_pid() -> int | None:
        kv = await etcd.get(f"{ROOT}system/leader/services")
        return int(kv.value.decode().split("/")[1]) if kv is not None else None

    async def views() -> list[bool]:
        found = []
        for proc in controllers:
            _, body = await h.call(proc, "GET", "/readyz", record=False)
            found.append(bool(body["controllers"]["services"]["leading"]))
        return found

    leading = await views()
    assert sum(leading) == 1, f"exactly one controller process leads services: {leading}"
    first = controllers[leading.index(True)]
    other = controllers[leading.index(False)]
    assert await leader_pid() == first.pid

    app = App(h, api, "shop")
    await app.create_project()
    sid = await app.create_service("web", base_image, replicas=1)
    await converged(h, app, "web", sid, 1)

    stopped_at = time.monotonic()
    assert first.terminate() == 0, first.tail()

    async def other_leads() -> bool:
        if await leader_pid() != other.pid:
            return False
        _, body = await h.call(other, "GET", "/readyz", record=False)
        return bool(body["controllers"]["services"]["leading"])

    await eventually(other_leads, LEASE_TTL, "the other controller leads", explain=h.explain)
    took = time.monotonic() - stopped_at
    assert took < LEASE_TTL

    await app.patch_config("web", {"replicas": 2})
    await converged(h, app, "web", sid, 2)


# --- 8. a private registry -----------------------------------------------------------------------


async def test_private_image_pulled_with_a_registry_account(
    harness: Harness,
    etcd: RawEtcd,
    etcd_server: EmbeddedEtcd,
    base_image: str,
    registry: Registry,
) -> None:
    h = harness
    tag = uuid.uuid4().hex[:8]
    good_image = f"{registry.host}/e2e/web:{tag}"
    denied_image = f"{registry.host}/e2e/denied:{tag}"
    push(h, base_image, good_image, registry)
    push(h, base_image, denied_image, registry)
    wrong = "wrong-" + uuid.uuid4().hex

    daemon = h.start("daemon", etcd_server.endpoint)
    await h.ready(daemon)
    account = {
        "host": registry.host,
        "username": registry.username,
        "password": registry.password,
        "email": "ci@example.com",
    }
    _, created = await h.call(daemon, "POST", "/api/registries", account, expect=201)
    assert created["password"] == "***"

    app = App(h, daemon, "shop")
    await app.create_project()
    sid = await app.create_service("private", good_image)
    [cid] = await converged(h, app, "private", sid, 1)
    assert h.docker.inspect_container(cid)["Config"]["Image"] == good_image

    # the same account with a wrong password: a new image from it never runs
    await h.call(
        daemon, "PATCH", f"/api/registries/{registry.host}", {"password": wrong}, expect=200
    )
    denied = await app.create_service("denied", denied_image)
    await eventually(
        lambda: denied_image in daemon.output(),
        20,
        "the agent tried (and failed) to pull the denied image",
        explain=h.explain,
    )
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:  # the observation window of a negative check
        assert h.running(f"{LABEL_SERVICE}={denied}") == [], h.explain()
        await asyncio.sleep(0.2)
    with pytest.raises(docker.errors.ImageNotFound):
        h.docker.inspect_image(denied_image)
    assert [c["status"] for c in await app.reported("denied")] == []
    assert [c["Id"] for c in h.running(f"{LABEL_SERVICE}={sid}")] == [cid], "the other one runs"

    # the password is never shown
    await h.call(daemon, "GET", "/api/registries", expect=200)
    await h.call(daemon, "GET", f"/api/registries/{registry.host}", expect=200)
    await h.call(daemon, "GET", "/api/projects/shop/services", expect=200)
    stored = await etcd.get(f"{ROOT}registries/{registry.host}")
    assert stored is not None
    for secret in (registry.password, wrong):
        assert secret.encode() not in stored.value, "the password is encrypted at rest"
        for text in h.responses:
            assert secret not in text, f"a password in an API response: {text}"
        assert secret not in daemon.output(), "a password in the daemon's log"


# --- 9. deleting leaves nothing behind -----------------------------------------------------------


@pytest.mark.parametrize("what", ["service", "project"])
async def test_delete_leaves_nothing_in_docker_or_etcd(
    harness: Harness, etcd: RawEtcd, etcd_server: EmbeddedEtcd, base_image: str, what: str
) -> None:
    h = harness
    daemon = h.start("daemon", etcd_server.endpoint)
    await h.ready(daemon)
    app = App(h, daemon, "shop")
    await app.create_project()
    sid = await app.create_service("web", base_image, replicas=2, volumes={"data": "/data"})
    await converged(h, app, "web", sid, 2)
    assert h.volumes(), "the service's named volume exists"
    assert await keys_under(etcd, f"{ROOT}pods/")

    path = "/api/projects/shop" + ("/services/web" if what == "service" else "")
    await h.call(daemon, "DELETE", path, expect=204)

    await eventually(lambda: not h.containers(), 20, "no container left", explain=h.explain)

    async def etcd_clean() -> bool:
        left = await keys_under(etcd, ROOT)
        return not [
            k
            for k in left
            if k.startswith((f"{ROOT}pods/", f"{ROOT}helper/pods/")) or "/containers/" in k
        ]

    await eventually(etcd_clean, 10, "no pod, helper/pods or container key left")
    assert daemon.alive
    await eventually(
        lambda: not h.volumes(), 10, "no volume of the deleted service left", explain=h.explain
    )
