"""The debian stack, built by lastbackend with mmdebstrap from this machine's apt sources.

One build serves the session (``debian_stack``, a few minutes the first time on an engine). The
images are checked from the outside (labels, what each holds: the run image has no compiler),
then a spec buildpack that targets Debian stages on it and its app is served by Python.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import docker
import pytest

from lastbackend.lifecycle import descriptor as lifecycle
from lastbackend.lifecycle import stacks
from lastbackend.lifecycle.buildpacks import discover
from lastbackend.runtime.base import ContainerSpec
from lastbackend.runtime.docker import DockerRuntime
from tests.e2e.test_staging_engine import PAGE, Stager, fetch, tar_of, zip_of
from tests.support import eventually

DESCRIPTOR = lifecycle.load()


@pytest.fixture
async def stager(
    runtime: DockerRuntime, debian_stack: str, busybox_stack: str, labels: dict[str, str]
) -> AsyncIterator[Stager]:
    made = Stager(runtime, labels)
    try:
        yield made
    finally:
        for container in await runtime.list(labels):
            await runtime.remove(container.id)
        for image in made.images:
            await runtime.remove_image(image)


async def run(runtime: DockerRuntime, image: str, command: str, labels: dict[str, str]) -> str:
    """``command``'s exit code and output in a container of ``image``, as ``"<code> <output>"``."""
    name = f"lb-test-{uuid.uuid4().hex[:12]}"
    await runtime.create(ContainerSpec(name=name, image=image, command=command, labels=labels))
    try:
        await runtime.start(name)
        code = await runtime.wait(name)
        output = b"".join([chunk async for chunk in runtime.logs(name)])
        return f"{code} {output.decode().strip()}"
    finally:
        await runtime.remove(name)


@pytest.mark.docker
async def test_the_images_are_labelled_and_the_run_image_has_no_compiler(
    runtime: DockerRuntime, debian_stack: str, docker_api: docker.APIClient, labels: dict[str, str]
) -> None:
    build = docker_api.inspect_image(stacks.build_image(debian_stack))["Config"]
    run_config = docker_api.inspect_image(stacks.run_image(debian_stack))["Config"]
    for config in (build, run_config):
        assert config["Labels"]["io.buildpacks.stack.id"] == "debian"
        assert config["Labels"]["io.buildpacks.base.distro.name"] == "debian"
        assert config["Labels"]["io.buildpacks.base.distro.version"] == "12"
        assert config["User"] == "lb"
    assert json.loads(build["Labels"][lifecycle.LABEL_APIS]) == lifecycle.apis_label(DESCRIPTOR)
    assert build["Labels"][lifecycle.LABEL_VERSION] == DESCRIPTOR.version

    probe = "for t in python3 node npm pip3 gcc cc make; do command -v $t || echo no-$t; done"
    have_run = await run(runtime, stacks.run_image(debian_stack), probe, labels)
    assert have_run.startswith("0 ")
    assert "/usr/bin/python3" in have_run
    assert "/usr/bin/node" in have_run
    for missing in ("no-gcc", "no-cc", "no-make", "no-npm", "no-pip3"):
        assert missing in have_run
    have_build = await run(runtime, stacks.build_image(debian_stack), probe, labels)
    assert "no-" not in have_build, have_build
    certs = "test -s /etc/ssl/certs/ca-certificates.crt && id -un && pwd"
    assert await run(runtime, stacks.run_image(debian_stack), certs, labels) == "0 lb\n/workspace"


BUILDPACK = {
    "buildpack.toml": (
        'api = "0.10"\n[buildpack]\nid = "py-http"\nversion = "1.0.0"\nname = "py-http"\n'
        '[[targets]]\nos = "linux"\n[[targets.distros]]\nname = "debian"\nversion = "12"\n'
    ),
    "bin/detect": "#!/bin/sh\n[ -f hello.txt ] || exit 100\n",
    "bin/build": (
        "#!/bin/sh\nset -eu\n"
        'echo "seen distro=$CNB_TARGET_DISTRO_NAME/$CNB_TARGET_DISTRO_VERSION"\n'
        "cat > \"$CNB_LAYERS_DIR/launch.toml\" <<'TOML'\n"
        '[[processes]]\ntype = "web"\n'
        'command = ["python3", "-m", "http.server", "--bind", "0.0.0.0"]\n'
        'args = ["8080"]\ndefault = true\n'
        "TOML\n"
    ),
}


@pytest.mark.docker
async def test_a_buildpack_targeting_debian_stages_on_it_and_python_serves(
    stager: Stager, tmp_path: Path
) -> None:
    root = tmp_path / "py-http"
    for path, text in BUILDPACK.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    app = tar_of({"hello.txt": b"hello from python on debian\n"})
    result = await stager.buildpack(app, buildpacks=discover(tmp_path), stack="debian")
    assert result.stack == "debian"
    assert result.buildpack == "py-http"
    assert "seen distro=debian/12" in stager.lines
    base = await stager.serve(result.image)
    assert await eventually(lambda: fetch(f"{base}/hello.txt")) == (
        200,
        b"hello from python on debian\n",
    )


@pytest.mark.docker
async def test_a_static_site_stages_on_debian_too(stager: Stager) -> None:
    result = await stager.buildpack(zip_of({"index.html": PAGE}), stack="debian")
    assert result.buildpack == "static"
    assert 'busybox httpd -f -v -p "${PORT:-8080}"' in result.start_command
    base = await stager.serve(result.image)
    assert await eventually(lambda: fetch(f"{base}/")) == (200, PAGE)
