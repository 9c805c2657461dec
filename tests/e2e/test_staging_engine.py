"""The staging engine on a real Docker engine: apps in, images out that serve what they should.

Buildpack staging runs the shipped buildpacks' scripts in containers of the busybox stack (built
offline by ``ensure_stack``), and each droplet image is started and fetched over HTTP. Docker
staging pulls a private image from the session's registry with right and wrong credentials. The
staging containers carry the test's labels, and every droplet image made here is removed after.
"""

from __future__ import annotations

import io
import json
import tarfile
import uuid
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import docker
import pytest

from lastbackend.lifecycle import descriptor as lifecycle
from lastbackend.lifecycle import stacks, staging
from lastbackend.lifecycle.buildpacks import discover
from lastbackend.lifecycle.staging import (
    BuildpackResult,
    StagingError,
    droplet_image,
    stage_buildpack,
    stage_docker,
)
from lastbackend.runtime.base import ContainerSpec, ImageConfig, RegistryAuth
from lastbackend.runtime.docker import DockerRuntime
from tests.baseimage import INDEX_HTML
from tests.e2e.conftest import Registry
from tests.support import eventually

DESCRIPTOR = lifecycle.load()
PAGE = b"<!doctype html><h1>hello from a static droplet</h1>\n"


def zip_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zipped:
        for name, data in files.items():
            zipped.writestr(name, data)
    return buf.getvalue()


def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Stager:
    """Stages with a fresh droplet id each time, and removes the images it made."""

    def __init__(self, runtime: DockerRuntime, labels: dict[str, str]) -> None:
        self.runtime = runtime
        self.labels = labels
        self.app = f"lb-test-{uuid.uuid4().hex[:8]}"
        self.images: list[str] = []
        self.lines: list[str] = []

    async def clean_up(self) -> None:
        """The containers labelled for the test first (of the droplet images), then the images."""
        for container in await self.runtime.list(self.labels):
            await self.runtime.remove(container.id)
        for image in self.images:
            await self.runtime.remove_image(image)

    async def buildpack(self, archive: bytes, **kwargs: Any) -> BuildpackResult:
        droplet = str(uuid.uuid4())
        self.last_droplet = droplet
        arguments: dict[str, Any] = {
            "droplet": droplet,
            "app": self.app,
            "buildpacks": discover(),
            "descriptor": DESCRIPTOR,
            "environ": {},
            "target": droplet_image("", self.app, droplet),
            "log": self.lines.append,
            "timeout_s": 120,
            "labels": self.labels,
            **kwargs,
        }
        self.images.append(arguments["target"])
        return await stage_buildpack(self.runtime, archive, **arguments)

    async def serve(self, image: str, port: int = 8080, env: dict[str, str] | None = None) -> str:
        """Run ``image`` publishing ``port``; its base URL."""
        state = await self.runtime.run(
            ContainerSpec(
                name=f"lb-test-{uuid.uuid4().hex[:12]}",
                image=image,
                env=env or {},
                ports={f"{port}/TCP": 0},
                labels=self.labels,
            )
        )
        return f"http://127.0.0.1:{state.ports[f'{port}/TCP']}"


@pytest.fixture
async def stager(
    runtime: DockerRuntime, busybox_stack: str, labels: dict[str, str]
) -> AsyncIterator[Stager]:
    made = Stager(runtime, labels)
    try:
        yield made
    finally:
        await made.clean_up()


async def fetch(url: str) -> tuple[int, bytes] | None:
    try:
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            return response.status, await response.read()
    except aiohttp.ClientError:
        return None


async def staging_containers(api: docker.APIClient, droplet: str) -> list[str]:
    by_label = api.containers(all=True, filters={"label": f"{staging.STAGING_LABEL}={droplet}"})
    by_name = api.containers(all=True, filters={"name": f"lb-staging-{droplet}"})
    return [c["Names"][0] for c in [*by_label, *by_name]]


@pytest.mark.docker
async def test_a_static_site_is_staged_into_an_image_that_serves_it(
    stager: Stager, docker_api: docker.APIClient
) -> None:
    archive = zip_of({"index.html": PAGE, "css/site.css": b"body { color: teal }\n"})
    result = await stager.buildpack(archive, env={"GREETING": "hi"})
    assert result.buildpack == "static"
    assert result.stack == "busybox"
    assert set(result.process_types) == {"web"}
    assert result.ports == ("8080/TCP",)
    assert result.image == droplet_image("", stager.app, stager.last_droplet)  # kept local
    assert stager.lines[:5] == [
        f"-----> Detecting (platform API {DESCRIPTOR.platform.latest()}, stack busybox)",
        "       python: skip",
        "       node: skip",
        "       procfile: skip",
        "       static: pass",
    ]
    assert "-----> Building with static 0.2.0 (buildpack API 0.10)" in stager.lines
    assert "       Serving /workspace with busybox httpd on $PORT" in stager.lines
    assert await staging_containers(docker_api, stager.last_droplet) == []

    base = await stager.serve(result.image)
    assert await eventually(lambda: fetch(f"{base}/")) == (200, PAGE)
    assert await fetch(f"{base}/css/site.css") == (200, b"body { color: teal }\n")

    labels = docker_api.inspect_image(result.image)["Config"]["Labels"]
    assert json.loads(labels[staging.LABEL_PROCESS_TYPES]) == result.process_types
    assert labels["io.buildpacks.stack.id"] == "busybox"
    assert labels[lifecycle.LABEL_VERSION] == DESCRIPTOR.version
    assert json.loads(labels[lifecycle.LABEL_APIS]) == lifecycle.apis_label(DESCRIPTOR)
    metadata = json.loads(labels[staging.LABEL_BUILD_METADATA])
    assert metadata["buildpacks"][0]["id"] == "static"
    assert not any(key.startswith("io.lastbackend.test") for key in labels)  # nothing leaked

    builder = docker_api.inspect_image(stacks.build_image("busybox"))["Config"]["Labels"]
    assert builder == stacks.builder_labels("busybox", DESCRIPTOR)
    old_style = json.loads(builder[lifecycle.LABEL_BUILDER])["lifecycle"]
    assert old_style["api"] == {"buildpack": "0.7", "platform": "0.12"}  # supported minimums


@pytest.mark.docker
async def test_a_procfile_app_runs_its_web_command_on_port(stager: Stager) -> None:
    procfile = (
        "web: while true; do printf 'HTTP/1.1 200 OK\\r\\nContent-Length: 12\\r\\n"
        "Connection: close\\r\\n\\r\\nprocfile app' | nc -l -p $PORT; done\n"
        "worker: echo working; sleep 600\n"
    )
    result = await stager.buildpack(tar_of({"Procfile": procfile.encode(), "index.html": b"x"}))
    assert result.buildpack == "procfile"  # before static, though there is an index.html
    assert set(result.process_types) == {"web", "worker"}
    assert result.start_command.startswith("while true; do printf 'HTTP/1.1 200 OK")
    base = await stager.serve(result.image, port=9000, env={"PORT": "9000"})
    assert await eventually(lambda: fetch(f"{base}/")) == (200, b"procfile app")


@pytest.mark.docker
async def test_a_requested_buildpack_that_does_not_detect_fails_and_cleans_up(
    stager: Stager, docker_api: docker.APIClient
) -> None:
    with pytest.raises(StagingError) as failed:
        await stager.buildpack(tar_of({"Procfile": b"web: sleep 600\n"}), requested="static")
    assert str(failed.value) == (
        "no buildpack detected the app (tried: static). "
        "What each looked for: static: index.html or a Staticfile."
    )
    assert failed.value.exit_code == 20
    assert "       static: skip" in stager.lines
    assert await staging_containers(docker_api, stager.last_droplet) == []


@pytest.mark.docker
async def test_nothing_detected_says_what_each_looked_for_and_what_the_stack_lacks(
    stager: Stager,
) -> None:
    app = tar_of({"requirements.txt": b"flask\n", "package.json": b"{}", "app.py": b""})
    with pytest.raises(StagingError) as failed:
        await stager.buildpack(app, stack="busybox")
    assert failed.value.exit_code == 20
    assert str(failed.value) == (
        "no buildpack detected the app (tried: python, node, procfile, static). What each "
        "looked for: python: requirements.txt, pyproject.toml or setup.py (the app has Python "
        "dependencies, but stack busybox has no python3 (Debian package python3; the debian "
        "stack has it)); node: package.json (the app has a package.json, but stack busybox "
        "lacks the Debian package nodejs and npm (the debian stack has them)); procfile: a "
        "Procfile; static: index.html or a Staticfile. Add a Procfile with a line like "
        "'web: <command>', or an index.html for a static site."
    )
    assert "       python: skip" in stager.lines


@pytest.mark.docker
async def test_an_unsupported_buildpack_api_fails_with_exit_12(
    stager: Stager, tmp_path: Path
) -> None:
    root = tmp_path / "ancient"
    (root / "bin").mkdir(parents=True)
    (root / "buildpack.toml").write_text(
        'api = "0.2"\n[buildpack]\nid = "ancient"\nversion = "0.0.1"\nname = "Ancient"\n'
    )
    (root / "bin" / "detect").write_text("#!/bin/sh\nexit 0\n")
    (root / "bin" / "build").write_text("#!/bin/sh\necho must not run\nexit 1\n")
    with pytest.raises(StagingError) as failed:
        await stager.buildpack(tar_of({"index.html": PAGE}), buildpacks=discover(tmp_path))
    assert failed.value.exit_code == 12
    assert str(failed.value).startswith("buildpack ancient: buildpack API 0.2 is not supported")
    assert "       ancient: pass" in stager.lines  # detected in a container, then refused
    assert "must not run" not in stager.lines


# -- the docker lifecycle -----------------------------------------------------------------------


@pytest.fixture
async def private_image(
    runtime: DockerRuntime, base_image: str, registry: Registry, labels: dict[str, str]
) -> str:
    """An image in the registry only (not local), serving /www with ENTRYPOINT + CMD."""
    image = f"{registry.host}/team/private-{uuid.uuid4().hex[:8]}:1"
    maker = ContainerSpec(name=f"lb-test-{uuid.uuid4().hex[:12]}", image=base_image, labels=labels)
    await runtime.create(maker)
    await runtime.commit(
        maker.name,
        image,
        ImageConfig(
            entrypoint=("httpd", "-f"),
            cmd=("-p", "8080", "-h", "/www"),
            exposed_ports=("8080/TCP",),
        ),
    )
    await runtime.remove(maker.name)
    await runtime.push(image, registry.auth)
    await runtime.remove_image(image)
    return image


@pytest.mark.docker
async def test_a_private_image_is_staged_with_its_credentials_and_runs(
    stager: Stager, private_image: str, registry: Registry
) -> None:
    wrong = RegistryAuth(registry.username, "not-" + registry.password, "")
    with pytest.raises(StagingError) as failed:
        await stage_docker(stager.runtime, private_image, auth=wrong, log=stager.lines.append)
    message = str(failed.value)
    assert message.startswith(f"cannot pull {private_image}: {registry.host} refused the cred")
    assert wrong.password not in message
    assert registry.password not in message
    with pytest.raises(StagingError, match="requires credentials"):
        await stage_docker(stager.runtime, private_image)

    auth = RegistryAuth(registry.username, registry.password, "")
    result = await stage_docker(stager.runtime, private_image, auth=auth, log=stager.lines.append)
    stager.images += [result.image, private_image]
    assert result.start_command == "httpd -f -p 8080 -h /www"
    assert result.image_path == private_image
    assert not result.cached
    assert result.ports == ("8080/TCP",)
    repository = private_image.rsplit(":", 1)[0]
    assert result.image == f"{repository}@{result.digest}"  # pinned: never a moving tag
    assert not any(registry.password in line for line in stager.lines)

    base = await stager.serve(result.image)
    assert await eventually(lambda: fetch(f"{base}/")) == (200, INDEX_HTML)


@pytest.mark.docker
async def test_use_caching_copies_the_image_into_the_platform_registry(
    stager: Stager, private_image: str, registry: Registry
) -> None:
    droplet = str(uuid.uuid4())
    cache = droplet_image(registry.host, stager.app, droplet)
    result = await stage_docker(
        stager.runtime,
        private_image,
        auth=registry.auth,
        use_caching=True,
        cache_target=cache,
        push_auth=registry.auth,
        log=stager.lines.append,
    )
    stager.images.append(result.image)
    assert result.cached
    assert result.image_path == cache
    assert result.image == f"{registry.host}/droplets/{stager.app}@{result.digest}"
    assert f"-----> Caching {private_image} as {cache}" in stager.lines
    # the copy is in the registry: gone locally, it pulls back by its digest
    await stager.runtime.remove_image(cache)
    await stager.runtime.remove_image(result.image)
    await stager.runtime.remove_image(private_image)
    await stager.runtime.ensure_image(result.image, registry.auth)
    pulled = await stager.runtime.inspect_image(result.image)
    assert pulled is not None
    assert pulled.exposed_ports == ("8080/TCP",)


# -- the stack commands -------------------------------------------------------------------------


@pytest.mark.docker
def test_stack_build_and_inspect_commands(
    busybox_stack: str, dockerd: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from lastbackend import cli

    assert cli.main(["stack", "build", "--docker", dockerd]) == 0  # there already: nothing built
    built = capsys.readouterr().out
    assert cli.main(["stack", "inspect", "--name", busybox_stack, "--docker", dockerd]) == 0
    shown = capsys.readouterr().out
    assert shown == built
    assert "Build image: lastbackend/stack-build:busybox (sha256:" in shown
    assert f"Lifecycle:\n  Version: {DESCRIPTOR.version}\n  Buildpack APIs:\n" in shown
    assert f"  io.buildpacks.lifecycle.version={DESCRIPTOR.version}\n" in shown

    assert cli.main(["stack", "inspect", "--name", "absent", "--docker", dockerd]) == 1
    assert "Build image: lastbackend/stack-build:absent (missing)" in capsys.readouterr().out
    assert cli.main(["stack", "build", "--name", "absent", "--docker", dockerd]) == 2
    assert "tag its images as lastbackend/stack-build:absent" in capsys.readouterr().err
