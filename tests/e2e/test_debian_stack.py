"""The debian stack, built by lastbackend with mmdebstrap from this machine's apt sources.

One build serves the session (``debian_stack``, a few minutes the first time on an engine). The
images are checked from the outside (labels, what each holds: the run image has no compiler),
then a spec buildpack that targets Debian stages on it and its app is served by Python.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from lastbackend.lifecycle import descriptor as lifecycle
from lastbackend.lifecycle import stacks
from lastbackend.lifecycle.buildpacks import discover
from lastbackend.lifecycle.staging import StagingError
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
        await made.clean_up()


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


# -- the python and node buildpacks, with real pip and npm registries ---------------------------

HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def registry_access() -> dict[str, Any]:
    """What the staging controller gives staging containers: the host's CA bundle and proxies."""
    proxies = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
    return {
        "ca_bundle": HOST_CA.read_bytes() if HOST_CA.is_file() else None,
        "build_env": {name: os.environ[name] for name in proxies if name in os.environ},
        "timeout_s": 600,
    }


FLASK_APP = {
    "requirements.txt": b"flask\n",
    "app.py": (
        b"from flask import Flask\n\napp = Flask(__name__)\n\n\n"
        b"@app.get('/')\ndef index():\n    return 'hello from flask'\n"
    ),
}


@pytest.mark.docker
async def test_a_flask_app_stages_with_pip_and_answers_under_gunicorn(stager: Stager) -> None:
    result = await stager.buildpack(tar_of(FLASK_APP), stack="debian", **registry_access())
    assert result.buildpack == "python"
    assert result.process_types == {"web": "gunicorn app:app"}
    assert "-----> pip install -r requirements.txt" in stager.lines
    assert "       layer venv: launch, cache" in stager.lines
    base = await stager.serve(result.image)
    assert await eventually(lambda: fetch(f"{base}/"), within=30) == (200, b"hello from flask")


@pytest.mark.docker
async def test_a_procfile_wins_over_the_python_default(stager: Stager) -> None:
    files = {
        **FLASK_APP,
        "Procfile": b"web: exec gunicorn --bind 0.0.0.0:$PORT --workers 1 app:app\n",
    }
    result = await stager.buildpack(tar_of(files), stack="debian", **registry_access())
    assert result.buildpack == "python"  # dependencies installed, then the Procfile's web
    assert result.start_command.startswith("exec gunicorn --bind")
    base = await stager.serve(result.image)
    assert await eventually(lambda: fetch(f"{base}/"), within=30) == (200, b"hello from flask")


EXPRESS_APP = {
    "package.json": json.dumps(
        {
            "name": "hello",
            "version": "1.0.0",
            "scripts": {"start": "node server.js"},
            "dependencies": {"express": "^4.19.0"},
        }
    ).encode(),
    "server.js": (
        b"const express = require('express');\nconst app = express();\n"
        b"app.get('/', (req, res) => res.send('hello from express'));\n"
        b"app.listen(process.env.PORT || 8080);\n"
    ),
}


@pytest.mark.docker
async def test_an_express_app_stages_with_npm_and_answers(
    stager: Stager, labels: dict[str, str]
) -> None:
    result = await stager.buildpack(tar_of(EXPRESS_APP), stack="debian", **registry_access())
    assert result.buildpack == "node"
    assert result.process_types == {"web": "node server.js"}  # the start script, without npm
    assert "-----> npm install (no package-lock.json)" in stager.lines
    assert "       layer npm-cache: cache" in stager.lines
    base = await stager.serve(result.image)
    assert await eventually(lambda: fetch(f"{base}/"), within=30) == (200, b"hello from express")
    # npm's download cache is a cache-only layer: not in the image
    assert (
        await run(
            stager.runtime, result.image, "test -e /layers/node/npm-cache || echo gone", labels
        )
        == "0 gone"
    )


@pytest.mark.docker
async def test_the_second_express_staging_prefers_npms_restored_cache(stager: Stager) -> None:
    first = await stager.buildpack(tar_of(EXPRESS_APP), stack="debian", **registry_access())
    assert first.cache is not None
    assert not [line for line in stager.lines if "preferring it to the registry" in line]
    stager.lines.clear()
    second = await stager.buildpack(
        tar_of(EXPRESS_APP), stack="debian", cache=first.cache, **registry_access()
    )
    assert "-----> Restoring cached layers: npm-cache" in stager.lines
    assert "-----> npm's cache from the last staging: preferring it to the registry" in stager.lines
    base = await stager.serve(second.image)
    assert await eventually(lambda: fetch(f"{base}/"), within=30) == (200, b"hello from express")


@pytest.mark.docker
async def test_the_second_staging_reuses_the_venv_until_requirements_change(
    stager: Stager,
) -> None:
    first = await stager.buildpack(tar_of(FLASK_APP), stack="debian", **registry_access())
    assert first.cache is not None
    stager.lines.clear()
    started = time.monotonic()
    second = await stager.buildpack(
        tar_of(FLASK_APP), stack="debian", cache=first.cache, **registry_access()
    )
    warm = time.monotonic() - started
    assert "-----> Restoring cached layers: venv" in stager.lines
    assert "-----> Reusing the venv layer: requirements.txt unchanged" in stager.lines
    assert not [line for line in stager.lines if "pip install" in line or "Collecting" in line]
    assert warm < 20, warm
    base = await stager.serve(second.image)
    assert await eventually(lambda: fetch(f"{base}/"), within=30) == (200, b"hello from flask")

    stager.lines.clear()
    changed = {**FLASK_APP, "requirements.txt": b"flask\nitsdangerous\n"}
    await stager.buildpack(tar_of(changed), stack="debian", cache=second.cache, **registry_access())
    assert "-----> pip install -r requirements.txt" in stager.lines
    assert not [line for line in stager.lines if line.startswith("-----> Reusing")]


# -- failures a user can act on ------------------------------------------------------------------


@pytest.mark.docker
async def test_a_pip_failure_quotes_pips_last_lines(stager: Stager) -> None:
    files = {**FLASK_APP, "requirements.txt": b"lastbackend-no-such-package-4711==1.0\n"}
    with pytest.raises(StagingError) as failed:
        await stager.buildpack(tar_of(files), stack="debian", **registry_access())
    message = str(failed.value)
    assert failed.value.exit_code == 51
    assert message.startswith("buildpack python failed to build: its bin/build exited 1; its l")
    assert "No matching distribution found for lastbackend-no-such-package-4711==1.0" in message


@pytest.mark.docker
async def test_an_npm_failure_quotes_npms_last_lines(stager: Stager) -> None:
    package = {"name": "broken", "version": "1.0.0", "dependencies": {NO_SUCH_NPM: "1.0.0"}}
    files = {**EXPRESS_APP, "package.json": json.dumps(package).encode()}
    with pytest.raises(StagingError) as failed:
        await stager.buildpack(tar_of(files), stack="debian", **registry_access())
    message = str(failed.value)
    assert failed.value.exit_code == 51
    assert message.startswith("buildpack node failed to build: its bin/build exited 1; its las")
    assert "npm ERR! 404" in message
    assert NO_SUCH_NPM in message.split("\n", 1)[1]  # in npm's own lines


NO_SUCH_NPM = "lastbackend-no-such-package-4711"


@pytest.fixture
def slim_stack(debian_stack: str, docker_api: docker.APIClient) -> Iterator[str]:
    """A stack whose build image is debian's run image: python3 without its venv module, node
    without npm, as an admin's stack may be."""
    name = f"slim{uuid.uuid4().hex[:6]}"
    made = [stacks.build_image(name), stacks.run_image(name)]
    for ref in made:
        repository, tag = ref.rsplit(":", 1)
        docker_api.tag(stacks.run_image(debian_stack), repository, tag)
    try:
        yield name
    finally:
        for ref in made:
            docker_api.remove_image(ref)


@pytest.mark.docker
async def test_a_stack_without_the_venv_module_says_which_package_it_needs(
    stager: Stager, slim_stack: str
) -> None:
    with pytest.raises(StagingError) as failed:
        await stager.buildpack(tar_of(FLASK_APP), stack=slim_stack)
    assert failed.value.exit_code == 51
    assert str(failed.value) == (
        "buildpack python failed to build: its bin/build exited 1; its last lines of output:\n"
        f"       python: stack {slim_stack} has python3 but not its venv module: its build image "
        "needs the Debian package python3-venv (the debian stack has it)"
    )


@pytest.mark.docker
async def test_a_stack_without_npm_says_so_when_nothing_detects(
    stager: Stager, slim_stack: str
) -> None:
    with pytest.raises(StagingError) as failed:
        await stager.buildpack(tar_of(EXPRESS_APP), stack=slim_stack)
    assert failed.value.exit_code == 20
    assert (
        f"node: package.json (the app has a package.json, but stack {slim_stack} lacks the "
        "Debian package npm (the debian stack has them))"
    ) in str(failed.value)
