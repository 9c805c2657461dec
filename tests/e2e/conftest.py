"""Fixtures on a real Docker engine, a real registry and an image built offline.

- ``dockerd``: the engine's URL. The running daemon when its socket answers; otherwise ``dockerd``
  is started here (as root) with its own log file and stopped at the end of the session.
- ``base_image``: a busybox-static rootfs imported with ``docker import`` (nothing is pulled from
  the internet), serving ``/www`` with ``httpd``; built once and reused.
- ``busybox_stack``: the default staging stack (``lastbackend/stack-build:busybox`` and
  ``stack-run:busybox``), built by the product's own ``ensure_stack`` unless it is there.
- ``debian_stack``: the ``debian`` stack, built once by the product's own ``ensure_stack`` with
  mmdebstrap from this machine's apt sources (a few minutes) unless it is on the engine; skipped
  without mmdebstrap.
- ``registry``: Debian's ``docker-registry`` on a free loopback port with htpasswd auth and
  filesystem storage in a temp dir. Docker treats 127.0.0.0/8 registries as insecure, so plain HTTP.
- ``second_dockerd`` + ``second_engine``: another Docker engine on this machine, as a second
  host would have: its own socket, ``--data-root``, ``--exec-root``, pid file and bridge (made
  here with iproute2; ``--iptables=false`` so the two engines' NAT rules cannot fight: published
  ports go through docker-proxy). The base image is copied in with ``docker save | docker load``.
  Port publishing of both engines draws from the same ephemeral range, so a container may find
  its host port taken by the other engine's; the node agent retries with the next.
- ``runtime`` + ``labels``: a :class:`DockerRuntime` and labels unique to the test; whatever
  carries this session's test label is force-removed afterwards, so nothing is left behind even
  when a test fails half-way, and parallel sessions on the same daemon never touch each other.

Without Docker these skip, and under ``CI=true`` a skip is a failure (``tests/conftest.py``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import attrs
import docker
import docker.errors
import pytest

from lastbackend.runtime.base import RegistryAuth
from lastbackend.runtime.docker import DockerRuntime
from tests.baseimage import BASE_IMAGE, NoStaticBusybox, ensure_base_image
from tests.e2e.harness import Harness
from tests.support import free_port

DEFAULT_URL = "unix:///var/run/docker.sock"
TEST_LABEL = "io.lastbackend.test"
SESSION = uuid.uuid4().hex[:12]


def _answers(url: str) -> bool:
    try:
        client = docker.APIClient(base_url=url, version="auto", timeout=3)
    except docker.errors.DockerException:
        return False
    with contextlib.closing(client):
        try:
            return bool(client.ping())
        except (docker.errors.DockerException, OSError):
            return False


def api_client(url: str) -> docker.APIClient:
    return docker.APIClient(base_url=url, version="auto", timeout=60)


def _start_dockerd(argv: list[str], url: str, log_path: Path) -> subprocess.Popen[bytes]:
    """``dockerd`` with ``argv``, once its API answers at ``url`` (the test fails if it never
    does, with the log's tail)."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while not _answers(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            tail = log_path.read_text(errors="replace")[-2000:]
            pytest.fail(f"{' '.join(argv)} did not come up (exit {proc.poll()}); log:\n{tail}")
        time.sleep(0.3)
    return proc


def _stop(proc: subprocess.Popen[bytes], within: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``within`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=within)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Docker engine's URL, starting ``dockerd`` for the session when none answers."""
    url = os.environ.get("DOCKER_HOST") or DEFAULT_URL
    if _answers(url):
        yield url
        return
    if url != DEFAULT_URL:
        pytest.skip(f"DOCKER_HOST={url} does not answer")
    if shutil.which("dockerd") is None:
        pytest.skip("dockerd is not installed (Debian: docker.io)")
    if os.geteuid() != 0:
        pytest.skip("dockerd is not running, and starting it needs root")
    proc = _start_dockerd(["dockerd"], url, tmp_path_factory.mktemp("dockerd") / "dockerd.log")
    yield url
    _stop(proc, 30)


@pytest.fixture(scope="session")
def base_image(dockerd: str) -> str:
    """``lastbackend-test/busybox:1``, imported offline unless it is already there."""
    with contextlib.closing(api_client(dockerd)) as api:
        try:
            ensure_base_image(api)
        except NoStaticBusybox as exc:
            pytest.skip(str(exc))
    return BASE_IMAGE


@pytest.fixture(scope="session")
def debian_stack(dockerd: str) -> str:
    """The debian stack's name, its two images built by mmdebstrap (once per engine)."""
    from lastbackend.lifecycle import descriptor, stacks

    if shutil.which("mmdebstrap") is None:
        pytest.skip("mmdebstrap is not installed (scripts/bootstrap.sh installs it)")

    async def build() -> None:
        runtime = DockerRuntime(dockerd)
        try:
            await stacks.ensure_stack(runtime, stacks.DEBIAN_STACK, descriptor.load(), log=print)
        finally:
            await runtime.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, build()).result()
    return stacks.DEBIAN_STACK


@pytest.fixture(scope="session")
def busybox_stack(dockerd: str) -> str:
    """The default stack's name, its two images built offline from busybox-static."""
    from lastbackend.lifecycle import descriptor, stacks

    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox is not installed (Debian: busybox-static)")

    async def build() -> None:
        runtime = DockerRuntime(dockerd)
        try:
            await stacks.ensure_stack(
                runtime, stacks.DEFAULT_STACK, descriptor.load(), busybox=Path(busybox)
            )
        finally:
            await runtime.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # a loop of its own, whatever runs
        try:
            pool.submit(asyncio.run, build()).result()
        except stacks.StackError as exc:
            pytest.skip(str(exc))
    return stacks.DEFAULT_STACK


@attrs.frozen
class Registry:
    host: str
    username: str
    password: str

    @property
    def auth(self) -> RegistryAuth:
        return RegistryAuth(username=self.username, password=self.password, server=self.host)


@pytest.fixture(scope="session")
def registry(dockerd: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A private registry on loopback with htpasswd auth; stopped at the end of the session."""
    for binary, package in (("docker-registry", "docker-registry"), ("htpasswd", "apache2-utils")):
        if shutil.which(binary) is None:
            pytest.skip(f"{binary} is not installed (Debian: {package})")
    base = tmp_path_factory.mktemp("registry")
    username, password = "lb-test", secrets.token_urlsafe(16)
    line = subprocess.run(
        ["htpasswd", "-Bbn", username, password], check=True, capture_output=True, text=True
    ).stdout.strip()
    (base / "htpasswd").write_text(line + "\n")
    host = f"127.0.0.1:{free_port()}"
    (base / "config.yml").write_text(
        "version: 0.1\n"
        "log: {level: info}\n"
        f"storage: {{filesystem: {{rootdirectory: {base / 'data'}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: '{host}', secret: {secrets.token_hex(16)}}}\n"
        f"auth: {{htpasswd: {{realm: lastbackend-test, path: {base / 'htpasswd'}}}}}\n"
    )
    with (base / "registry.log").open("wb") as log:
        proc = subprocess.Popen(
            ["docker-registry", "serve", str(base / "config.yml")],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_for_port(host, proc, base / "registry.log")
        yield Registry(host=host, username=username, password=password)
    finally:
        _stop(proc, 10)
        _untag_images_of(dockerd, host)


def _wait_for_port(host: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    import socket

    address, port = host.rsplit(":", 1)
    deadline = time.monotonic() + 15
    while True:
        with contextlib.suppress(OSError), socket.create_connection((address, int(port)), 0.5):
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"docker-registry did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)


def _untag_images_of(url: str, host: str) -> None:
    """Local tags pointing into the session's registry would pile up (the port changes)."""
    with contextlib.closing(api_client(url)) as api:
        for image in api.images():
            for ref in image.get("RepoTags") or []:
                if ref.startswith(f"{host}/"):
                    with contextlib.suppress(docker.errors.NotFound):
                        api.remove_image(ref)


SECOND_BRIDGE = "lbe2e0"
SECOND_ADDRESS = "10.213.7.1/24"


@contextlib.contextmanager
def extra_engine(first: str, images: list[str], bridge: str, address: str) -> Iterator[str]:
    """Another ``dockerd`` as another host would have it (see the module docstring): its own
    socket, roots, pid file and ``bridge`` (made here at ``address``), with ``images`` copied in
    from the engine at ``first``; its URL. Stopped and removed, bridge and all, afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("a second dockerd needs root and iproute2")
    root = Path(tempfile.mkdtemp(prefix="lbd2-", dir="/tmp"))  # short: socket paths are bounded
    url = f"unix://{root}/docker.sock"
    subprocess.run(["ip", "link", "del", bridge], capture_output=True)  # a stale one
    for argv in (
        ["ip", "link", "add", bridge, "type", "bridge"],
        ["ip", "addr", "add", address, "dev", bridge],
        ["ip", "link", "set", bridge, "up"],
    ):
        subprocess.run(argv, check=True, capture_output=True)
    argv = ["dockerd", "--host", url, "--data-root", str(root / "data")]
    argv += ["--exec-root", str(root / "exec"), "--pidfile", str(root / "docker.pid")]
    argv += ["--bridge", bridge, "--iptables=false", "--ip-masq=false"]
    proc: subprocess.Popen[bytes] | None = None
    try:
        proc = _start_dockerd(argv, url, root / "dockerd.log")
        with (
            contextlib.closing(api_client(first)) as source,
            contextlib.closing(api_client(url)) as target,
        ):
            for image in images:
                target.load_image(b"".join(source.get_image(image)))
        yield url
    finally:
        if proc is not None:
            _stop(proc, 30)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def second_dockerd(dockerd: str, base_image: str) -> Iterator[str]:
    """A second engine's URL (see the module docstring), stopped and removed at the end."""
    with extra_engine(dockerd, [base_image], SECOND_BRIDGE, SECOND_ADDRESS) as url:
        yield url


@pytest.fixture
def second_engine(second_dockerd: str) -> Iterator[docker.APIClient]:
    """The second engine's SDK; every lastbackend container on it is removed after the test."""
    with contextlib.closing(api_client(second_dockerd)) as api:
        try:
            yield api
        finally:
            for c in api.containers(all=True, filters={"label": ["io.lastbackend.pod"]}):
                with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                    api.remove_container(c["Id"], force=True)
            for v in api.volumes().get("Volumes") or []:
                with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                    api.remove_volume(v["Name"], force=True)


@pytest.fixture
def labels() -> dict[str, str]:
    """Labels unique to this test, under this session's test label."""
    return {TEST_LABEL: SESSION, "io.lastbackend.case": uuid.uuid4().hex[:12]}


@pytest.fixture
def docker_api(dockerd: str) -> Iterator[docker.APIClient]:
    """The raw SDK, for checking what the runtime did from the outside."""
    with contextlib.closing(api_client(dockerd)) as api:
        yield api


@pytest.fixture
async def runtime(
    dockerd: str, base_image: str, docker_api: docker.APIClient
) -> AsyncIterator[DockerRuntime]:
    """A runtime on the engine; afterwards every container and volume of the session goes."""
    rt = DockerRuntime(dockerd)
    try:
        yield rt
    finally:
        await rt.close()
        sweep(docker_api)


def sweep(api: docker.APIClient) -> None:
    selector = {"label": [f"{TEST_LABEL}={SESSION}"]}
    for container in api.containers(all=True, filters=selector):
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_container(container["Id"], force=True)
    for volume in api.volumes(filters=selector)["Volumes"] or []:
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_volume(volume["Name"], force=True)


@pytest.fixture
def harness(
    tmp_path: Path, dockerd: str, base_image: str, docker_api: docker.APIClient
) -> Iterator[Harness]:
    """One test's processes and node: killed, and its containers, volumes and images removed,
    however the test ends."""
    h = Harness(tmp_path, dockerd, docker_api)
    try:
        yield h
    finally:
        h.cleanup()
