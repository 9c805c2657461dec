"""Apps end to end: ``lastbackend daemon`` stages uploaded bits and docker images, then runs them.

What a dashboard does through ``/v3``: create an app, create a package, upload a zip, stage a
droplet, assign it, start the app, and fetch the page from the port the containers API reports.
Staging runs for real: the default stack is built offline from busybox-static, the buildpacks
run in containers of its build image, and the droplet image is exported and run by the node
agent. The docker lifecycle pulls a private image from a local htpasswd registry.
"""

from __future__ import annotations

import contextlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lastbackend.store.embedded import EmbeddedEtcd
from tests.e2e.conftest import Registry
from tests.e2e.harness import Harness, Proc, eventually, push_served_image
from tests.gitserver import GitServer, commit, make_repo
from tests.support import RawEtcd

pytestmark = [pytest.mark.docker, pytest.mark.etcd]

SITE = b"<h1>hello from a static site</h1>\n"


def zip_of(files: dict[str, bytes | str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


class V3:
    """The /v3 calls of one test, against one daemon."""

    def __init__(self, h: Harness, proc: Proc) -> None:
        self.h = h
        self.proc = proc

    async def call(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        _, data = await self.h.call(self.proc, method, path, body, expect=expect)
        return data

    async def app(self, name: str, lifecycle: dict[str, Any] | None = None) -> tuple[str, str]:
        project = await self.call("POST", "/api/projects", {"name": f"p-{name}"}, 201)
        body: dict[str, Any] = {"name": name, "relationships": {"space": {"guid": project["id"]}}}
        if lifecycle is not None:
            body["lifecycle"] = lifecycle
        app = await self.call("POST", "/v3/apps", body, 201)
        assert app["desired_state"] == "STOPPED"
        return project["id"], app["guid"]

    async def upload(self, package: str, archive: bytes, expect: int = 200) -> dict[str, Any]:
        form = aiohttp.FormData()
        form.add_field("bits", archive, filename="app.zip", content_type="application/zip")
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{self.proc.url}/v3/packages/{package}/upload", data=form) as resp,
        ):
            text = await resp.text()
            self.h.responses.append(text)
            assert resp.status == expect, f"upload -> {resp.status} {text}"
            return dict(json.loads(text))

    async def staged(self, droplet: str, within: float = 90) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            body = await self.call("GET", f"/v3/droplets/{droplet}")
            return body if body["state"] in ("STAGED", "FAILED") else None

        result: dict[str, Any] = await eventually(
            probe, within, f"droplet {droplet} staged", explain=self.h.explain, interval=0.2
        )
        if result.get("image") and "@" not in result["image"]:
            self.h.images.append(result["image"])  # a local droplet image: removed afterwards
        return result

    async def logs(self, droplet: str) -> str:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.proc.url}/v3/droplets/{droplet}/logs") as resp,
        ):
            assert resp.status == 200
            text = await resp.text()
            self.h.responses.append(text)
            return text

    async def start(self, app: str, droplet: str) -> None:
        await self.call(
            "PATCH",
            f"/v3/apps/{app}/relationships/current_droplet",
            {"data": {"guid": droplet}},
        )
        started = await self.call("POST", f"/v3/apps/{app}/actions/start")
        assert started["desired_state"] == "STARTED"

    async def answering(self, project: str, app: str, port_spec: str = "8080/TCP") -> bytes:
        path = f"/api/projects/{project}/services/{app}/containers"

        async def probe() -> bytes | None:
            body = await self.call("GET", path)
            for container in body["resources"]:
                port = container["ports"].get(port_spec)
                if container["status"] != "running" or not port:
                    continue
                timeout = aiohttp.ClientTimeout(total=3)
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with (
                        aiohttp.ClientSession(timeout=timeout) as http,
                        http.get(f"http://127.0.0.1:{port}/") as resp,
                    ):
                        if resp.status == 200:
                            return await resp.read()
            return None

        body: bytes = await eventually(probe, 45, f"app {app} answering", explain=self.h.explain)
        return body


async def test_static_site_zip_is_detected_staged_started_and_served(
    harness: Harness, etcd: RawEtcd, etcd_server: EmbeddedEtcd
) -> None:
    h = harness
    daemon = h.start("daemon", etcd_server.endpoint)
    await h.ready(daemon)
    v3 = V3(h, daemon)
    project, app = await v3.app("site")

    package = await v3.call(
        "POST", "/v3/packages", {"type": "bits", "relationships": {"app": {"guid": app}}}, 201
    )
    assert package["state"] == "AWAITING_UPLOAD"
    archive = zip_of({"index.html": SITE, "css/site.css": "h1 { color: red }"})
    uploaded = await v3.upload(package["guid"], archive)
    assert uploaded["state"] == "READY"

    droplet = await v3.call("POST", f"/v3/packages/{package['guid']}/droplets", {}, 201)
    assert droplet["state"] == "PENDING"
    staged = await v3.staged(droplet["guid"])
    assert staged["state"] == "STAGED", staged
    response = staged["staging_response"]
    assert response["buildpack"] == "static"
    assert response["stack"] == "busybox"
    assert "web" in response["process_types"]
    assert response["hash"] == {"type": "sha1", "value": uploaded["hash"]["value"]}
    assert "commit" not in response
    log = await v3.logs(droplet["guid"])
    assert "static" in log
    descriptor = await etcd.get("/lastbackend/lifecycle/descriptor")  # published by staging
    assert descriptor is not None
    assert json.loads(descriptor.value)["lifecycle"]["version"]

    await v3.start(app, droplet["guid"])
    assert await v3.answering(project, app) == SITE


async def test_procfile_app_runs_its_web_process(
    harness: Harness, etcd: RawEtcd, etcd_server: EmbeddedEtcd
) -> None:
    h = harness
    daemon = h.start("daemon", etcd_server.endpoint)
    await h.ready(daemon)
    v3 = V3(h, daemon)
    project, app = await v3.app("worker")
    await v3.call("PATCH", f"/v3/apps/{app}", {"environment_variables": {"GREETING": "procfile"}})
    package = await v3.call("POST", f"/v3/apps/{app}/packages", {"type": "bits"}, 201)
    procfile = (
        'web: mkdir -p /tmp/www && echo "hello from $GREETING" > /tmp/www/index.html'
        " && exec httpd -f -p $PORT -h /tmp/www\n"
        "worker: sleep 3600\n"
    )
    await v3.upload(package["guid"], zip_of({"Procfile": procfile}))
    droplet = await v3.call("POST", f"/v3/packages/{package['guid']}/droplets", {}, 201)
    staged = await v3.staged(droplet["guid"])
    assert staged["state"] == "STAGED", staged
    response = staged["staging_response"]
    assert response["buildpack"] == "procfile"
    assert set(response["process_types"]) == {"web", "worker"}

    await v3.start(app, droplet["guid"])
    assert await v3.answering(project, app) == b"hello from procfile\n"

    stopped = await v3.call("POST", f"/v3/apps/{app}/actions/stop")
    assert stopped["desired_state"] == "STOPPED"

    async def gone() -> bool:
        body = await v3.call("GET", f"/api/projects/{project}/services/{app}/containers")
        return not body["resources"]

    await eventually(gone, 30, "containers gone after stop", explain=h.explain)


async def test_private_docker_image_staged_with_credentials_and_started(
    harness: Harness, etcd: RawEtcd, etcd_server: EmbeddedEtcd, registry: Registry, base_image: str
) -> None:
    h = harness
    served = push_served_image(h, registry, base_image, "apps/served")
    daemon = h.start("daemon", etcd_server.endpoint)
    await h.ready(daemon)
    v3 = V3(h, daemon)
    project, app = await v3.app("dock", {"type": "docker", "data": {}})

    wrong = await v3.call(
        "POST",
        f"/v3/apps/{app}/packages",
        {
            "type": "docker",
            "image": served,
            "credentials": {"user": registry.username, "password": "wrong-" + registry.password},
        },
        201,
    )
    failed = await v3.staged(
        (await v3.call("POST", f"/v3/packages/{wrong['guid']}/droplets", {}, 201))["guid"]
    )
    assert failed["state"] == "FAILED"
    assert failed["error"]

    package = await v3.call(
        "POST",
        f"/v3/apps/{app}/packages",
        {
            "type": "docker",
            "image": served,
            "credentials": {"user": registry.username, "password": registry.password},
        },
        201,
    )
    assert package["credentials"]["password"] == "***"
    droplet = await v3.call("POST", f"/v3/packages/{package['guid']}/droplets", {}, 201)
    staged = await v3.staged(droplet["guid"])
    assert staged["state"] == "STAGED", staged
    assert staged["staging_response"] == {
        "start_command": "httpd -f -p 8080 -h /www",
        "image_path": served,
        "cached": False,
    }
    await v3.start(app, droplet["guid"])
    assert (await v3.answering(project, app)).startswith(b"hello from lastbackend")

    for text in h.responses:
        assert registry.password not in text
    for proc in h.procs:
        assert registry.password not in proc.output()
    for kv in (await etcd.range("/lastbackend/")).kvs:
        assert registry.password.encode() not in kv.value, kv.key


async def test_git_package_is_cloned_with_its_credentials_and_staged_with_the_commit(
    harness: Harness, etcd: RawEtcd, etcd_server: EmbeddedEtcd, tmp_path: Path
) -> None:
    h = harness
    root = tmp_path / "repos"
    root.mkdir()
    token = "git-token-" + "x" * 12
    server = GitServer(root, "ci", token)
    await server.start()
    try:
        make_repo(root, "site", {"index.html": "first\n"}, branch="live")
        sha = commit(root, "site", {"index.html": "from git\n"}, "second")
        daemon = h.start("daemon", etcd_server.endpoint)
        await h.ready(daemon)
        v3 = V3(h, daemon)
        project, app = await v3.app("gitsite")
        url = f"{server.repo_url('site')}:live"
        package = await v3.call(
            "POST",
            f"/v3/apps/{app}/packages",
            {"type": "git", "url": url, "credentials": {"user": "ci", "password": token}},
            201,
        )
        assert package["state"] == "READY"
        assert package["credentials"]["password"] == "***"
        droplet = await v3.call("POST", f"/v3/packages/{package['guid']}/droplets", {}, 201)
        staged = await v3.staged(droplet["guid"])
        assert staged["state"] == "STAGED", staged
        response = staged["staging_response"]
        assert response["commit"] == sha
        assert response["buildpack"] == "static"
        assert response["hash"]["type"] == "sha1"
        assert response["hash"]["value"]

        bad = await v3.call(
            "POST",
            f"/v3/apps/{app}/packages",
            {"type": "git", "url": f"{server.repo_url('site')}:no-such-branch"},
            201,
        )
        failed = await v3.staged(
            (await v3.call("POST", f"/v3/packages/{bad['guid']}/droplets", {}, 201))["guid"]
        )
        assert failed["state"] == "FAILED"
        assert failed["error"].startswith("clone repo failed")

        await v3.start(app, droplet["guid"])
        assert await v3.answering(project, app) == b"from git\n"
    finally:
        await server.stop()
    for text in h.responses:
        assert token not in text
    for proc in h.procs:
        assert token not in proc.output()
