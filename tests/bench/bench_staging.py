"""Staging on real Docker: upload -> STAGED, docker package -> STAGED, start -> first HTTP 200.

What it measures, on loopback only (nothing comes from the internet: the apps are built on the
default stack, made offline from busybox-static, and the docker package's image is made from
``lastbackend-test/busybox:1``, itself imported offline as in ``tests/e2e/conftest.py``):

Setup: a private etcd (:class:`~lastbackend.store.embedded.EmbeddedEtcd` in a temporary
directory, on free ports), Debian's ``docker-registry`` on a free loopback port with htpasswd
auth and its storage in the same directory, and ``lastbackend daemon --etcd ... --listen
127.0.0.1:<free> --name bench-<hex> --data-dir <tmp>/daemon-data`` (API, controllers with
staging, and this host's node agent in one process, log level ``info``, AMQP events off, default
stack busybox even when debian is built: the real apps below ask for debian). Into
the registry goes ``bench/served:<hex>``: the busybox image plus a layer of its own, serving
``/www`` with ``httpd`` on 8080 and exposing 8080/tcp; its local copy is removed, so staging pulls.

0. **Stack build**, once, before the daemon starts: the busybox rootfs is made and imported as a
   stack's two images under a private name (``lastbackend/stack-{build,run}:bench-<hex>``,
   removed afterwards): what the first staging adds when the default stack is missing. The
   shared default stack is never removed; whether the warm-up had to build it is printed.

Then a warm-up run, reported on its own rows as cold (the daemon's first staging, first pull,
first start), and N timed runs (``--runs``, default 5), each of:

a. **Static site.** An app (default lifecycle: buildpack, auto-detection, default stack) and a
   bits package; the clock starts as the upload is sent (``POST .../upload``, multipart field
   ``bits``, a zip of ``index.html`` and a stylesheet), the upload's 200 says ``READY`` (split:
   upload -> READY), then ``POST /v3/packages/:guid/droplets`` is sent at once and the droplet is
   polled every 20 ms until ``STAGED`` (split: droplet create -> STAGED). The staging log
   (``<data-dir>/blobs/droplets/<guid>.log``, read at each poll) splits that into pickup (->
   ``Detecting``), detect (-> ``Building``), build (-> ``Exporting``) and export + final write.
b. **Docker package.** An app with the docker lifecycle and a docker package of the registry's
   image with its credentials; from sending the droplet create until ``STAGED``. The image is not
   local at the start of a run (its busybox layer is, as the base image's: the pull moves the
   manifest, config and the small layer of its own).
c. **Start.** For each of the two apps: ``PATCH .../relationships/current_droplet`` (not timed),
   then from sending ``POST .../actions/start`` until ``GET /`` on the port the containers API
   reports answers 200 with the expected page (polled every 10 ms). The services controller's
   "pod scheduled" and the agent's "container started" log lines split it.

Then, when the ``debian`` stack is on the engine (``lastbackend stack build --name debian``;
``--no-apps`` skips this part), **real apps**, one app each, staged with the lifecycle's
``stack: debian``: d. a **Flask** app (``requirements.txt`` with ``flask``, ``app.py``; the
python buildpack, gunicorn) and e. an **Express** app (``package.json`` with ``express`` and a
``start`` script; the node buildpack). pip and npm reach PyPI and the npm registry the way the
host does (its CA bundle, its proxy variables). For each: a *cold* staging (the app's first: no
cache layers, every package downloaded) and ``--app-runs`` *warm* ones (default 5) of the same
unchanged app, whose cache layers the daemon kept (the Flask app's ``venv`` is reused, so pip
does not run: the bench fails if the log does not say so; the Express app's npm cache is
restored, so ``npm install`` downloads nothing), each timed from sending the upload to
``STAGED`` (the app is the same zip each time, in a new package), with its build phase
(``Building`` -> ``Exporting``) split out; after each staging, start -> first 200 (``GET /``
answering the app's page), then a stop and a wait until its containers are gone. The debian
stack's two image sizes are reported (``docker inspect``'s ``Size``); with ``--build-debian``
the stack is also built once under a private name by ``stacks.build_debian`` (mmdebstrap from
the host's apt sources, ~2.5 min, removed afterwards), as ``lastbackend stack build --name
debian`` builds it.

Afterwards each app is deleted and its containers waited for; every container of the bench's
node (label ``io.lastbackend.node=bench-<hex>``), every staging container of its droplets, its
droplet images (label ``io.lastbackend.app=<app guid>``), every image tagged into its registry,
and the private stack's images are removed at the end, however the run ends.

It prints progress to stderr, then a markdown table (p50/p99/max, nearest rank) and the issue's
aims with PASS/MISS to stdout, with the machine's core count and a warning when other processes
used much CPU. Docker, etcd, the registry, the daemon and this script share the machine's cores.

Run from the repository root (needs ``etcd``, ``docker-registry``, ``htpasswd``, a static
``busybox`` on PATH and a Docker engine)::

    .venv/bin/python tests/bench/bench_staging.py            # ~2 minutes (~40 s: --no-apps)
    .venv/bin/python tests/bench/bench_staging.py --runs 10  # ~2.5 minutes
    .venv/bin/python tests/bench/bench_staging.py --build-debian  # + ~2.5 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import http.client
import io
import json
import math
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import docker
import docker.errors

# The sibling benchmark's helpers (this file runs as a script, from its own directory).
from bench_containers import (
    Http,
    _die_with_parent,
    budget,
    cpu_seconds,
    docker_pids,
    etcd_count,
    first_event,
    get_json,
    log_events,
    machine_busy,
    noise_report,
    percentile,
    say,
    stop_process,
    sweep_node,
    tail,
)

from lastbackend.lifecycle import descriptor as lifecycle_descriptor
from lastbackend.lifecycle import stacks
from lastbackend.lifecycle.staging import LABEL_APP, STAGING_LABEL, container_name
from lastbackend.node.agent import LABEL_SERVICE
from lastbackend.store import keys

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.baseimage import BASE_IMAGE, INDEX_HTML, ensure_base_image
from tests.e2e.test_debian_stack import EXPRESS_APP, FLASK_APP
from tests.support import free_port, local_etcd

HOST = "127.0.0.1"
PORT = "8080/TCP"
SITE = b"<h1>hello from a static site</h1>\n"
STYLE = b"h1 { color: #c33; font-family: sans-serif }\n"
POLL_STAGE = 0.02  # seconds between looks at a droplet (and its staging log)
POLL_HTTP = 0.01  # seconds between looks at an app's containers while waiting for its 200
STAGE_TIMEOUT = 180.0
START_TIMEOUT = 60.0
STATIC_MARKERS = ("Detecting", "Building", "Exporting")
DOCKER_MARKERS = ("Pulling",)
APP_STAGE_TIMEOUT = 600.0  # a cold staging downloads from PyPI or npm
# The aims.
AIM_UPLOAD_S = 5.0
AIM_DOCKER_S = 3.0
AIM_START_S = 3.0
AIM_WARM_FLASK_S = 10.0


# processes --------------------------------------------------------------------------------------


def _lastbackend() -> list[str]:
    script = Path(sys.executable).parent / "lastbackend"
    if script.exists():
        return [str(script)]
    found = shutil.which("lastbackend")
    return [found] if found else [sys.executable, "-m", "lastbackend.cli"]


def start_daemon(
    work: Path, etcd: str, node: str
) -> tuple[subprocess.Popen[bytes], str, Path, Path]:
    """``lastbackend daemon`` on ``etcd``: its process, address, log and data dir."""
    listen = f"{HOST}:{free_port()}"
    log, data = work / "daemon.log", work / "daemon-data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LB_", "CNB_"))}
    env["LB_EVENTS_AMQP_LISTEN"] = "off"  # not measured; and 5673 may be another daemon's
    env["LB_DEFAULT_STACK"] = stacks.DEFAULT_STACK  # the static site's, debian built or not
    args = ["daemon", "--etcd", etcd, "--listen", listen, "--name", node, "--no-router"]
    args += ["--data-dir", str(data), "--log-level", "info"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [*_lastbackend(), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=_die_with_parent,
        )
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited with {proc.returncode}:\n{tail(log)}")
        status, _ = get_json(f"http://{listen}/readyz")
        if status == 200 and etcd_count(etcd, keys.node(node)) == 1:
            return proc, listen, log, data
        if time.monotonic() > deadline:
            raise TimeoutError(f"the daemon is not ready after 60 s:\n{tail(log)}")
        time.sleep(0.05)


@dataclass(frozen=True)
class Registry:
    host: str
    username: str
    password: str
    proc: subprocess.Popen[bytes]


def start_registry(work: Path) -> Registry:
    """Debian's ``docker-registry`` on a free loopback port, htpasswd auth, storage in ``work``
    (Docker treats 127.0.0.0/8 registries as insecure, so plain HTTP works)."""
    base = work / "registry"
    base.mkdir()
    username, password = "bench", secrets.token_urlsafe(16)
    line = subprocess.run(
        ["htpasswd", "-Bbn", username, password], check=True, capture_output=True, text=True
    ).stdout.strip()
    (base / "htpasswd").write_text(line + "\n")
    host = f"{HOST}:{free_port()}"
    (base / "config.yml").write_text(
        "version: 0.1\n"
        "log: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {base / 'data'}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: '{host}', secret: {secrets.token_hex(16)}}}\n"
        f"auth: {{htpasswd: {{realm: lastbackend-bench, path: {base / 'htpasswd'}}}}}\n"
    )
    log = base / "registry.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["docker-registry", "serve", str(base / "config.yml")],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
    deadline = time.monotonic() + 15
    while True:
        with (
            contextlib.suppress(OSError),
            socket.create_connection((HOST, int(host.rsplit(":", 1)[1])), 0.5),
        ):
            return Registry(host, username, password, proc)
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError(f"docker-registry did not start:\n{tail(log)}")
        time.sleep(0.1)


# CPU noise --------------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_with_children(pid: int) -> float:
    """utime + stime + cutime + cstime: a process and the children it has reaped."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(v) for v in fields[11:15]) / _TICK
    except (OSError, IndexError, ValueError):
        return math.nan


def container_pids() -> list[int]:
    """Processes running inside containers: descendants of a ``containerd-shim``."""
    parent: dict[int, int] = {}
    shims: set[int] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            head, rest = stat.read_text().rsplit(")", 1)
            pid = int(stat.parent.name)
            parent[pid] = int(rest.split()[1])
            if head.split("(", 1)[1].startswith("containerd-shim"):
                shims.add(pid)
    found = []
    for pid in parent:
        seen, p = 0, parent.get(pid, 0)
        while p > 1 and seen < 64:
            if p in shims:
                found.append(pid)
                break
            p, seen = parent.get(p, 0), seen + 1
    return found


class Meter:
    """Cores used while a run went on by processes other than the bench's: this script, its
    etcd, registry and daemon, the Docker engine with what it has reaped, and the processes in
    containers (staging and apps). Container processes that started and exited inside the
    window are not seen, so the figure errs towards noise."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = [os.getpid(), *pids]
        self.busy = machine_busy()
        self.started = time.monotonic()
        self.cpu = self._sample()

    def _sample(self) -> dict[int, float]:
        sample = {p: cpu_seconds(p) for p in [*self.pids, *container_pids()]}
        sample |= {p: cpu_with_children(p) for p in docker_pids()}
        return sample

    def cores(self) -> float:
        busy = machine_busy() - self.busy
        ours = 0.0
        for pid, spent in self._sample().items():
            delta = spent - self.cpu.get(pid, 0.0)
            if not math.isnan(delta):
                ours += max(0.0, delta)
        return max(0.0, busy - ours) / max(1e-9, time.monotonic() - self.started)


# HTTP -------------------------------------------------------------------------------------------


class Api(Http):
    """The daemon's API on one keep-alive connection, plus raw bodies (the multipart upload)."""

    def raw(
        self, method: str, path: str, data: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=data, headers=headers)
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (http.client.HTTPException, OSError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")


def multipart(name: str, filename: str, data: bytes, content_type: str) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body with one file field, as ``curl -F name=@file`` sends it."""
    boundary = uuid.uuid4().hex
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    body = head + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def site_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("index.html", SITE)
        archive.writestr("css/site.css", STYLE)
    return buffer.getvalue()


def zip_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def probe(port: int, expect: bytes) -> bool:
    conn = http.client.HTTPConnection(HOST, port, timeout=0.5)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        return resp.status == 200 and resp.read() == expect
    except (http.client.HTTPException, OSError):
        return False
    finally:
        conn.close()


# Docker -----------------------------------------------------------------------------------------


def docker_api() -> docker.APIClient:
    url = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    return docker.APIClient(base_url=url, version="auto", timeout=120)


def make_served_image(api: docker.APIClient, registry: Registry) -> str:
    """``<registry>/bench/served:<hex>``: the base image plus a small layer of its own, serving
    ``/www`` on 8080; pushed, then removed locally so that staging has to pull it."""
    tag = uuid.uuid4().hex[:10]
    repository = f"{registry.host}/bench/served"
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        data = f"bench {tag}\n".encode()
        info = tarfile.TarInfo("bench.txt")
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    scratch = api.create_container(BASE_IMAGE, command="true")["Id"]
    try:
        api.put_archive(scratch, "/www", layer.getvalue())
        api.commit(
            scratch,
            repository=repository,
            tag=tag,
            changes=['CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]', "EXPOSE 8080/tcp"],
        )
    finally:
        api.remove_container(scratch, force=True)
    auth = {"username": registry.username, "password": registry.password}
    for line in api.push(repository, tag, auth_config=auth, stream=True, decode=True):
        if "error" in line:
            raise RuntimeError(f"pushing {repository}:{tag}: {line['error']}")
    forget_image(api, f"{repository}:{tag}")
    return f"{repository}:{tag}"


def forget_image(api: docker.APIClient, ref: str) -> None:
    """Remove an image with every tag and digest it has locally (nothing if it is not there)."""
    with contextlib.suppress(docker.errors.NotFound):
        api.remove_image(api.inspect_image(ref)["Id"], force=True)


def untag_registry(api: docker.APIClient, host: str) -> None:
    """Every local image tagged or pinned into the bench's registry (its port is gone after)."""
    for image in api.images():
        refs = [*(image.get("RepoTags") or []), *(image.get("RepoDigests") or [])]
        if any(ref.startswith(f"{host}/") for ref in refs):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                api.remove_image(image["Id"], force=True)


def remove_app_images(api: docker.APIClient, app: str) -> None:
    for image in api.images(filters={"label": f"{LABEL_APP}={app}"}):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            api.remove_image(image["Id"], force=True)


def remove_staging_leftovers(api: docker.APIClient, droplets: Sequence[str]) -> int:
    """Staging containers of the bench's droplets (the daemon removes them; a crash may not)."""
    removed = 0
    for droplet in droplets:
        found = {
            c["Id"]
            for c in api.containers(all=True, filters={"label": [f"{STAGING_LABEL}={droplet}"]})
        }
        found |= {container_name(droplet, phase) for phase in ("detect", "build", "export")}
        for ref in found:
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_container(ref, force=True, v=True)
                removed += 1
    return removed


def default_stack_state() -> str:
    """Whether the daemon's first staging will have to build the default stack."""
    stack = asyncio.run(_inspect_default_stack())
    if not stack.present:
        return "missing (the warm-up built it)"
    if stacks.stale(stack, lifecycle_descriptor.load()):
        return "stale (the warm-up rebuilt it)"
    return "present"


async def _inspect_default_stack() -> stacks.Stack:
    from lastbackend.runtime.docker import DockerRuntime

    runtime = DockerRuntime(os.environ.get("DOCKER_HOST") or None)
    try:
        return await stacks.inspect(runtime, stacks.DEFAULT_STACK)
    finally:
        await runtime.close()


def time_stack_build(name: str) -> float:
    """Seconds to make the busybox rootfs and import it as stack ``name``'s two images."""
    from lastbackend.runtime.docker import DockerRuntime

    busybox = Path(shutil.which("busybox") or "/bin/busybox")

    async def build() -> float:
        runtime = DockerRuntime(os.environ.get("DOCKER_HOST") or None)
        try:
            descriptor = lifecycle_descriptor.load()
            started = time.perf_counter()
            rootfs = await asyncio.to_thread(_busybox_rootfs, busybox)
            stack = await stacks.import_stack(runtime, name, descriptor, rootfs)
            seconds = time.perf_counter() - started
            if not stack.present:
                raise RuntimeError(f"stack {name} is not there after its import")
            return seconds
        finally:
            await runtime.close()

    return asyncio.run(build())


def _busybox_rootfs(busybox: Path) -> bytes:
    return stacks.rootfs_tar(busybox.read_bytes(), stacks.applets(busybox))


def remove_stack(api: docker.APIClient, name: str) -> None:
    for ref in (stacks.build_image(name), stacks.run_image(name)):
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_image(ref, force=True)


# results ----------------------------------------------------------------------------------------


@dataclass
class Staged:
    """One droplet staged; times in seconds (perf_counter differences)."""

    droplet: str
    create_wall: float  # epoch, when the droplet create was sent
    create_staged: float  # droplet create sent -> STAGED seen
    marks: dict[str, float]  # staging log marker -> seconds after the create was sent
    upload_ready: float = math.nan  # upload sent -> its 200 (READY)
    total: float = math.nan  # upload sent -> STAGED seen


@dataclass
class Started:
    sid: str
    sent_wall: float  # epoch, when POST .../actions/start was sent
    seconds: float  # start sent -> first 200 with the expected page


@dataclass
class Run:
    static: Staged
    docker: Staged
    start_static: Started
    start_docker: Started
    other_load: float = math.nan


@dataclass
class AppRuns:
    """One real app's stagings on the debian stack: the cold one, then the warm ones."""

    name: str
    cold: Staged | None = None
    cold_start: Started | None = None
    warm: list[Staged] = field(default_factory=list)
    warm_start: list[Started] = field(default_factory=list)


@dataclass
class DebianStack:
    build_image_mb: float = math.nan
    run_image_mb: float = math.nan
    build_seconds: float = math.nan  # with --build-debian only
    note: str = ""


@dataclass
class Results:
    node: str = ""
    image: str = ""
    served: str = ""
    zip_bytes: int = 0
    stack_state: str = ""
    stack_build: float = math.nan
    stack_load: float = math.nan
    cold: Run | None = None
    runs: list[Run] = field(default_factory=list)
    apps: list[AppRuns] = field(default_factory=list)
    apps_load: dict[str, float] = field(default_factory=dict)  # other processes' cores, by app
    debian: DebianStack = field(default_factory=DebianStack)
    events: list[dict[str, Any]] = field(default_factory=list)  # the daemon's log lines


# the flows --------------------------------------------------------------------------------------


class Bench:
    """The daemon under test, its API, its data dir, the registry and the Docker engine."""

    def __init__(
        self,
        api: Api,
        docker_client: docker.APIClient,
        data: Path,
        registry: Registry,
        served: str,
        log: Path,
    ) -> None:
        self.api = api
        self.docker = docker_client
        self.data = data
        self.registry = registry
        self.served = served
        self.log = log
        self.project = ""
        self.apps: list[str] = []
        self.droplets: list[str] = []
        self.archive = site_zip()
        self.sha1 = hashlib.sha1(self.archive).hexdigest()

    def app(self, name: str, lifecycle: dict[str, Any] | None = None) -> str:
        body: dict[str, Any] = {"name": name, "relationships": {"space": {"guid": self.project}}}
        if lifecycle is not None:
            body["lifecycle"] = lifecycle
        guid = str(self.api.json("POST", "/v3/apps", body, expect=201)["guid"])
        self.apps.append(guid)
        return guid

    def create_droplet(self, package: str) -> tuple[str, float, float]:
        """POST the droplet; its guid, and when the request was sent (perf_counter, epoch)."""
        sent_wall, sent = time.time(), time.perf_counter()
        body = self.api.json("POST", f"/v3/packages/{package}/droplets", {}, expect=201)
        if body["state"] != "PENDING":
            raise RuntimeError(f"a new droplet is {body['state']}, not PENDING")
        self.droplets.append(body["guid"])
        return str(body["guid"]), sent, sent_wall

    def wait_staged(
        self, droplet: str, sent: float, markers: Sequence[str], timeout: float = STAGE_TIMEOUT
    ) -> tuple[dict[str, Any], float, dict[str, float]]:
        """Poll until STAGED; the droplet, when STAGED was seen, and when each staging log
        marker (``-----> <marker>``) was first seen, relative to ``sent``."""
        path = self.data / "blobs" / "droplets" / f"{droplet}.log"
        seen: dict[str, float] = {}
        deadline = time.perf_counter() + timeout
        while True:
            body = self.api.json("GET", f"/v3/droplets/{droplet}")
            now = time.perf_counter()
            try:
                text = path.read_text(errors="replace")
            except FileNotFoundError:
                text = ""
            for marker in markers:
                if marker not in seen and f"-----> {marker}" in text:
                    seen[marker] = now - sent
            if body["state"] == "STAGED":
                return body, now, seen
            if body["state"] == "FAILED":
                raise RuntimeError(f"droplet {droplet} FAILED: {body['error']}\n{text[-2000:]}")
            if now > deadline:
                raise TimeoutError(f"droplet {droplet} is {body['state']} after {timeout} s")
            time.sleep(POLL_STAGE)

    def upload(self, package: str, archive: bytes) -> tuple[dict[str, Any], float, float]:
        """Upload ``archive`` as the bits of ``package``: the READY package, and the
        ``perf_counter`` just before sending and just after its answer."""
        data, content_type = multipart("bits", "app.zip", archive, "application/zip")
        path = f"/v3/packages/{package}/upload"
        sent = time.perf_counter()
        status, raw = self.api.raw("POST", path, data, {"Content-Type": content_type})
        ready = time.perf_counter()
        uploaded = json.loads(raw) if raw else {}
        if status != 200 or uploaded.get("state") != "READY":
            raise RuntimeError(f"upload -> {status} {raw[:500]!r}")
        return uploaded, sent, ready

    def stage_static(self, i: int) -> tuple[str, Staged]:
        sid = self.app(f"site-{i}")
        package = self.api.json(
            "POST", "/v3/packages", {"type": "bits", "relationships": {"app": {"guid": sid}}}, 201
        )
        uploaded, sent, ready = self.upload(package["guid"], self.archive)
        if uploaded["hash"] != {"type": "sha1", "value": self.sha1}:
            raise RuntimeError(f"the package's hash is {uploaded['hash']}, not the zip's sha1")
        staged = self.stage_uploaded(package["guid"], sent, ready, "static", stacks.DEFAULT_STACK)
        return sid, staged

    def stage_docker(self, i: int) -> tuple[str, Staged]:
        sid = self.app(f"dock-{i}", {"type": "docker", "data": {}})
        credentials = {"user": self.registry.username, "password": self.registry.password}
        package = self.api.json(
            "POST",
            f"/v3/apps/{sid}/packages",
            {"type": "docker", "image": self.served, "credentials": credentials},
            201,
        )
        droplet, created, created_wall = self.create_droplet(package["guid"])
        body, staged, marks = self.wait_staged(droplet, created, DOCKER_MARKERS)
        want = {"start_command": "httpd -f -p 8080 -h /www", "image_path": self.served}
        response = body["staging_response"]
        if {k: response.get(k) for k in want} != want or response.get("cached") is not False:
            raise RuntimeError(f"unexpected docker staging response: {response}")
        return sid, Staged(droplet, created_wall, staged - created, marks)

    def start(self, sid: str, droplet: str, expect: bytes) -> Started:
        relationship = {"data": {"guid": droplet}}
        self.api.json("PATCH", f"/v3/apps/{sid}/relationships/current_droplet", relationship)
        sent_wall, sent = time.time(), time.perf_counter()
        body = self.api.json("POST", f"/v3/apps/{sid}/actions/start")
        if body["desired_state"] != "STARTED":
            raise RuntimeError(f"app {sid} is {body['desired_state']} after start")
        path = f"/api/projects/{self.project}/services/{sid}/containers"
        deadline = sent + START_TIMEOUT
        while True:
            for c in self.api.json("GET", path)["resources"]:
                port = (c.get("ports") or {}).get(PORT)
                if c["status"] == "running" and port and probe(int(port), expect):
                    return Started(sid, sent_wall, time.perf_counter() - sent)
            if time.perf_counter() > deadline:
                raise TimeoutError(
                    f"app {sid}: no 200 within {START_TIMEOUT:g} s\n{tail(self.log)}"
                )
            time.sleep(POLL_HTTP)

    def delete(self, sid: str, timeout: float = 60.0) -> None:
        """DELETE the app, wait until Docker has none of its containers, drop its images."""
        self.api.json("DELETE", f"/v3/apps/{sid}", expect=204)
        selector = {"label": [f"{LABEL_SERVICE}={sid}"]}
        deadline = time.monotonic() + timeout
        while self.docker.containers(all=True, filters=selector):
            if time.monotonic() > deadline:
                raise TimeoutError(f"app {sid}: containers left {timeout:g} s after its delete")
            time.sleep(0.05)
        remove_app_images(self.docker, sid)

    def stage_files(self, sid: str, archive: bytes, buildpack: str) -> tuple[Staged, str]:
        """A new bits package of ``sid`` with ``archive``, staged on debian: the timings from
        sending the upload, and the staging log."""
        package = self.api.json("POST", f"/v3/apps/{sid}/packages", {"type": "bits"}, 201)
        _, sent, ready = self.upload(package["guid"], archive)
        timing = self.stage_uploaded(
            package["guid"], sent, ready, buildpack, stacks.DEBIAN_STACK, APP_STAGE_TIMEOUT
        )
        log_path = self.data / "blobs" / "droplets" / f"{timing.droplet}.log"
        return timing, log_path.read_text(errors="replace")

    def stage_uploaded(
        self,
        package: str,
        sent: float,
        ready: float,
        buildpack: str,
        stack: str,
        timeout: float = STAGE_TIMEOUT,
    ) -> Staged:
        """A droplet of the uploaded ``package`` (sent at ``sent``, READY at ``ready``) waited
        for until STAGED, checked to have been staged by ``buildpack`` on ``stack``."""
        droplet, created, created_wall = self.create_droplet(package)
        body, staged, marks = self.wait_staged(droplet, created, STATIC_MARKERS, timeout)
        response = body["staging_response"]
        if (response["buildpack"], response["stack"]) != (buildpack, stack):
            raise RuntimeError(f"staged with an unexpected buildpack or stack: {response}")
        return Staged(
            droplet=droplet,
            create_wall=created_wall,
            create_staged=staged - created,
            marks=marks,
            upload_ready=ready - sent,
            total=staged - sent,
        )

    def stop(self, sid: str, timeout: float = 60.0) -> None:
        """Stop the app and wait until Docker has none of its containers."""
        body = self.api.json("POST", f"/v3/apps/{sid}/actions/stop")
        if body["desired_state"] != "STOPPED":
            raise RuntimeError(f"app {sid} is {body['desired_state']} after stop")
        selector = {"label": [f"{LABEL_SERVICE}={sid}"]}
        deadline = time.monotonic() + timeout
        while self.docker.containers(all=True, filters=selector):
            if time.monotonic() > deadline:
                raise TimeoutError(f"app {sid}: containers left {timeout:g} s after its stop")
            time.sleep(0.05)

    def real_app(self, name: str, files: dict[str, bytes], warm_runs: int) -> AppRuns:
        """Stage ``files`` cold, then ``warm_runs`` times warm, each followed by start -> 200."""
        buildpack, expect, reused = {
            "flask": ("python", b"hello from flask", "Reusing the venv layer"),
            "express": ("node", b"hello from express", "Restoring cached layers: npm-cache"),
        }[name]
        lifecycle = {"type": "buildpack", "data": {"stack": stacks.DEBIAN_STACK}}
        sid = self.app(name, lifecycle)
        archive = zip_of(files)
        runs = AppRuns(name)
        for i in range(warm_runs + 1):
            staged, log = self.stage_files(sid, archive, buildpack)
            if i > 0 and reused not in log:
                raise RuntimeError(f"{name}: warm staging {i} did not say {reused!r}:\n{log}")
            started = self.start(sid, staged.droplet, expect)
            self.stop(sid)
            if i == 0:
                runs.cold, runs.cold_start = staged, started
            else:
                runs.warm.append(staged)
                runs.warm_start.append(started)
            kind = "cold" if i == 0 else f"warm {i}"
            build = between(staged.marks, "Building", "Exporting", staged.create_staged)
            say(
                f"  {name} {kind}: upload -> STAGED {staged.total:.3f} s (build {build:.3f} s), "
                f"start -> 200 {started.seconds:.3f} s"
            )
        self.delete(sid)
        return runs

    def run(self, i: int) -> Run:
        site, static = self.stage_static(i)
        dock, docker_staged = self.stage_docker(i)
        start_static = self.start(site, static.droplet, SITE)
        start_docker = self.start(dock, docker_staged.droplet, INDEX_HTML)
        self.delete(site)
        self.delete(dock)
        forget_image(self.docker, self.served)  # the next run pulls it again
        return Run(static, docker_staged, start_static, start_docker)


# report -----------------------------------------------------------------------------------------


def row(label: str, values: Sequence[float], aim: str = "", result: str = "") -> str:
    clean = [v for v in values if not math.isnan(v)]

    def cell(q: float) -> str:
        v = percentile(clean, q)
        return "n/a" if math.isnan(v) else f"{v:.3f}"

    cells = f"{cell(0.5)} | {cell(0.99)} | {cell(1.0)}"
    return f"| {label} | {len(clean)} | s | {cells} | {aim} | {result} |"


def verdict(value: float, limit: float, complete: bool) -> str:
    if math.isnan(value):
        return "MISS (not measured)"
    return "PASS" if value < limit and complete else "MISS"


def between(marks: dict[str, float], a: str | None, b: str | None, end: float) -> float:
    """Seconds from marker ``a`` (None: the create) to ``b`` (None: STAGED seen)."""
    start = 0.0 if a is None else marks.get(a, math.nan)
    stop = end if b is None else marks.get(b, math.nan)
    return stop - start


def staged_log(events: list[dict[str, Any]], s: Staged) -> float:
    return first_event(events, s.create_wall, "droplet staged", droplet=s.droplet) - s.create_wall


def start_split(events: list[dict[str, Any]], s: Started) -> tuple[float, float]:
    """Start -> the pod scheduled (controller log), -> its container started (agent log)."""
    for event in events:
        if (
            event.get("event") == "pod scheduled"
            and event.get("service") == s.sid
            and event["t"] >= s.sent_wall - 0.001
        ):
            started = first_event(events, s.sent_wall, "container started", pod=event["pod"])
            return event["t"] - s.sent_wall, started - s.sent_wall
    return math.nan, math.nan


def report(r: Results, runs: int) -> str:
    events = r.events
    timed = r.runs
    cold = [r.cold] if r.cold else []

    def static_rows(group: list[Run], prefix: str) -> list[str]:
        s = [x.static for x in group]
        return [
            row(f"{prefix}upload -> READY (the upload's 200)", [x.upload_ready for x in s]),
            row(f"{prefix}droplet create -> STAGED", [x.create_staged for x in s]),
            row(
                f"{prefix}create -> 'droplet staged' (controller log)",
                [staged_log(events, x) for x in s],
            ),
            row(
                f"{prefix}create -> `Detecting` (pickup, stack check, inputs)",
                [between(x.marks, None, "Detecting", x.create_staged) for x in s],
            ),
            row(
                f"{prefix}`Detecting` -> `Building` (detect container)",
                [between(x.marks, "Detecting", "Building", x.create_staged) for x in s],
            ),
            row(
                f"{prefix}`Building` -> `Exporting` (build container)",
                [between(x.marks, "Building", "Exporting", x.create_staged) for x in s],
            ),
            row(
                f"{prefix}`Exporting` -> STAGED (commit, etcd write, poll)",
                [between(x.marks, "Exporting", None, x.create_staged) for x in s],
            ),
        ]

    def docker_rows(group: list[Run], prefix: str) -> list[str]:
        d = [x.docker for x in group]
        return [
            row(
                f"{prefix}create -> 'droplet staged' (controller log)",
                [staged_log(events, x) for x in d],
            ),
            row(
                f"{prefix}create -> `Pulling` (pickup)",
                [between(x.marks, None, "Pulling", x.create_staged) for x in d],
            ),
            row(
                f"{prefix}`Pulling` -> STAGED (pull, inspect, etcd write, poll)",
                [between(x.marks, "Pulling", None, x.create_staged) for x in d],
            ),
        ]

    def start_rows(starts: list[Started], prefix: str) -> list[str]:
        splits = [start_split(events, s) for s in starts]
        return [
            row(f"{prefix}start -> pod scheduled (controller log)", [a for a, _ in splits]),
            row(f"{prefix}start -> container started (agent log)", [b for _, b in splits]),
        ]

    upload_p99 = percentile([x.static.total for x in timed], 0.99)
    docker_p99 = percentile([x.docker.create_staged for x in timed], 0.99)
    start_static_p99 = percentile([x.start_static.seconds for x in timed], 0.99)
    start_docker_p99 = percentile([x.start_docker.seconds for x in timed], 0.99)
    complete = len(timed) == runs
    upload_v = verdict(upload_p99, AIM_UPLOAD_S, complete)
    docker_v = verdict(docker_p99, AIM_DOCKER_S, complete)
    start_s_v = verdict(start_static_p99, AIM_START_S, complete)
    start_d_v = verdict(start_docker_p99, AIM_START_S, complete)
    app_lines, app_aims = app_report(r, complete)
    lines = [
        "| measurement | n | unit | p50 | p99 | max | aim | result |",
        "|---|--:|---|--:|--:|--:|---|---|",
        row("0. stack build: busybox rootfs + import of both images", [r.stack_build]),
        row("a. cold (warm-up): upload -> STAGED, static site", [x.static.total for x in cold]),
        *static_rows(cold, "   cold: "),
        row(
            "a. upload -> STAGED, static site zip",
            [x.static.total for x in timed],
            f"p99 < {AIM_UPLOAD_S:g} s",
            upload_v,
        ),
        *static_rows(timed, "   "),
        row(
            "b. cold (warm-up): docker droplet create -> STAGED",
            [x.docker.create_staged for x in cold],
        ),
        *docker_rows(cold, "   cold: "),
        row(
            "b. docker package: droplet create -> STAGED",
            [x.docker.create_staged for x in timed],
            f"p99 < {AIM_DOCKER_S:g} s",
            docker_v,
        ),
        *docker_rows(timed, "   "),
        row(
            "c. cold (warm-up): start -> first 200, static app",
            [x.start_static.seconds for x in cold],
        ),
        row(
            "c. cold (warm-up): start -> first 200, docker app",
            [x.start_docker.seconds for x in cold],
        ),
        row(
            "c. start -> first 200, static app",
            [x.start_static.seconds for x in timed],
            f"p99 < {AIM_START_S:g} s",
            start_s_v,
        ),
        *start_rows([x.start_static for x in timed], "   static: "),
        row(
            "c. start -> first 200, docker app",
            [x.start_docker.seconds for x in timed],
            f"p99 < {AIM_START_S:g} s",
            start_d_v,
        ),
        *start_rows([x.start_docker for x in timed], "   docker: "),
        *app_lines,
    ]
    load = os.getloadavg()[0]
    header = (
        f"\n## lastbackend staging benchmark\n\n"
        f"Python {platform.python_version()}, {os.cpu_count()} CPU cores shared by Docker, etcd, "
        f"the registry, the daemon and this script; loopback only; node `{r.node}`; "
        f"{len(timed)} timed runs after a warm-up. Static site: a {r.zip_bytes}-byte zip "
        f"(index.html, css/site.css) on the default stack `{stacks.DEFAULT_STACK}` "
        f"({r.stack_state} before the warm-up). Docker package: `{r.served}` in a local "
        "htpasswd `docker-registry`, not local at the start of each run (its base layer is). "
        f"{apps_note(r)}"
        "Nearest-rank percentiles (with n < 100, p99 is the max). "
        f"Load average at the end: {load:.2f}.\n"
    )
    aims = [
        f"- {upload_v} upload -> STAGED (static site) < {AIM_UPLOAD_S:g} s: p99 "
        f"{upload_p99:.3f} s (n={len(timed)})",
        f"- {docker_v} docker package -> STAGED < {AIM_DOCKER_S:g} s: p99 {docker_p99:.3f} s "
        f"(n={len(timed)})",
        f"- {start_s_v} start -> first 200 < {AIM_START_S:g} s, static app: p99 "
        f"{start_static_p99:.3f} s (n={len(timed)})",
        f"- {start_d_v} start -> first 200 < {AIM_START_S:g} s, docker app: p99 "
        f"{start_docker_p99:.3f} s (n={len(timed)})",
    ]
    aims += app_aims
    noise = {"stack build": r.stack_load}
    if r.cold is not None:
        noise["warm-up"] = r.cold.other_load
    noise |= {f"run {i + 1}": x.other_load for i, x in enumerate(timed)}
    noise |= {f"{name} app": load for name, load in r.apps_load.items()}
    out = header + "\n" + "\n".join(lines) + "\n\n### Aims\n\n" + "\n".join(aims)
    return out + noise_report(
        noise, "its etcd, registry or daemon, the Docker engine or processes in containers"
    )


def apps_note(r: Results) -> str:
    if not r.apps:
        return f"Real apps: {r.debian.note or 'not run'}. "
    return (
        "Real apps on the debian stack, pip and npm through the host's proxy and CA: one app "
        "each, its first staging cold (no cache), then the same zip again (warm). "
        + (f"{r.debian.note}. " if r.debian.note else "")
    )


def app_report(r: Results, complete: bool) -> tuple[list[str], list[str]]:
    """The real apps' rows (d., e.), the debian stack's (f.), and their aims."""
    lines: list[str] = []
    aims: list[str] = []
    letters = {"flask": "d. Flask app (python buildpack)", "express": "e. Express app (node)"}
    for a in r.apps:
        title = letters[a.name]
        cold = [a.cold] if a.cold else []
        warm_p99 = percentile([x.total for x in a.warm], 0.99)
        start_p99 = percentile([x.seconds for x in a.warm_start], 0.99)
        staging_aim, staging_v = "", ""
        if a.name == "flask":
            staging_aim = f"p99 < {AIM_WARM_FLASK_S:g} s"
            staging_v = verdict(warm_p99, AIM_WARM_FLASK_S, complete and bool(a.warm))
            aims.append(
                f"- {staging_v} warm staging of the Flask app < {AIM_WARM_FLASK_S:g} s: p99 "
                f"{warm_p99:.3f} s (n={len(a.warm)})"
            )
        start_v = verdict(start_p99, AIM_START_S, complete and bool(a.warm_start))
        aims.append(
            f"- {start_v} start -> first 200 < {AIM_START_S:g} s, {a.name} app: p99 "
            f"{start_p99:.3f} s (n={len(a.warm_start)})"
        )

        def build(group: list[Staged]) -> list[float]:
            return [between(x.marks, "Building", "Exporting", x.create_staged) for x in group]

        lines += [
            row(f"{title}: cold upload -> STAGED (no cache)", [x.total for x in cold]),
            row("   cold: `Building` -> `Exporting` (install, downloads)", build(cold)),
            row(
                f"{title}: warm upload -> STAGED (cache layers)",
                [x.total for x in a.warm],
                staging_aim,
                staging_v,
            ),
            row(
                "   warm: upload sent -> `Detecting` (upload, pickup, cache read)",
                [
                    x.upload_ready + between(x.marks, None, "Detecting", x.create_staged)
                    for x in a.warm
                ],
            ),
            row(
                "   warm: `Detecting` -> `Building` (detect container)",
                [between(x.marks, "Detecting", "Building", x.create_staged) for x in a.warm],
            ),
            row("   warm: `Building` -> `Exporting` (cache restore, build)", build(a.warm)),
            row(
                "   warm: `Exporting` -> STAGED (export, commit, cache kept)",
                [between(x.marks, "Exporting", None, x.create_staged) for x in a.warm],
            ),
            row(
                f"{title}: cold start -> first 200",
                [a.cold_start.seconds] if a.cold_start else [],
            ),
            row(
                f"{title}: start -> first 200",
                [x.seconds for x in a.warm_start],
                f"p99 < {AIM_START_S:g} s",
                start_v,
            ),
        ]
    d = r.debian
    if not math.isnan(d.build_seconds):
        lines.append(row("f. debian stack build (mmdebstrap, both images)", [d.build_seconds]))
    for label, mb in (("build", d.build_image_mb), ("run", d.run_image_mb)):
        if not math.isnan(mb):
            lines.append(f"| f. debian {label} image size | 1 | MB | {mb:.0f} | | | | |")
    return lines, aims


# main -------------------------------------------------------------------------------------------


def _terminate(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: let the cleanup finish
    raise SystemExit(128 + signum)


def cleanup(client: docker.APIClient, bench: Bench | None, node: str, host: str) -> None:
    """Whatever the bench made in Docker, by label and name (runs however the bench ends)."""
    sweep_node(client, node)
    if bench is not None:
        remove_staging_leftovers(client, bench.droplets)
        for sid in bench.apps:
            remove_app_images(client, sid)
    if host:
        untag_registry(client, host)


def debian_images(client: docker.APIClient, name: str) -> tuple[float, float] | None:
    """The stack's build and run image sizes in MB, or None when it is not on the engine."""
    try:
        build = client.inspect_image(stacks.build_image(name))["Size"] / 1e6
        run = client.inspect_image(stacks.run_image(name))["Size"] / 1e6
    except docker.errors.NotFound:
        return None
    return build, run


def time_debian_build(name: str) -> float:
    """Seconds for :func:`stacks.build_debian` to make and import stack ``name``."""
    from lastbackend.runtime.docker import DockerRuntime

    async def build() -> float:
        runtime = DockerRuntime(os.environ.get("DOCKER_HOST") or None)
        try:
            started = time.perf_counter()
            made = await stacks.build_debian(runtime, lifecycle_descriptor.load(), name=name)
            if not made.present:
                raise RuntimeError(f"stack {name} is not there after its build")
            return time.perf_counter() - started
        finally:
            await runtime.close()

    return asyncio.run(build())


def run(
    work: Path,
    runs: int,
    results: Results,
    stack: contextlib.ExitStack,
    apps: int = 0,
    build_debian: bool = False,
) -> None:
    client = docker_api()
    stack.callback(client.close)
    results.image = "imported offline" if ensure_base_image(client) else "present"
    node = results.node = f"bench-{uuid.uuid4().hex[:8]}"
    private_stack = node

    say(f"0. stack build under the private name {private_stack}")
    stack.callback(remove_stack, client, private_stack)
    meter = Meter([])
    results.stack_build = time_stack_build(private_stack)
    results.stack_load = meter.cores()
    remove_stack(client, private_stack)
    say(f"  {results.stack_build:.3f} s")
    results.stack_state = default_stack_state()
    say(f"  default stack {stacks.DEFAULT_STACK}: {results.stack_state}")
    if build_debian:
        private_debian = f"{node}-debian"
        say(f"f. debian stack build under the private name {private_debian} (minutes)")
        stack.callback(remove_stack, client, private_debian)
        results.debian.build_seconds = time_debian_build(private_debian)
        sizes = debian_images(client, private_debian)
        remove_stack(client, private_debian)
        say(f"  {results.debian.build_seconds:.0f} s, images {sizes}")
    sizes = debian_images(client, stacks.DEBIAN_STACK)
    if sizes is not None:
        results.debian.build_image_mb, results.debian.run_image_mb = sizes
    elif apps:
        results.debian.note = "skipped: no debian stack (lastbackend stack build --name debian)"
        apps = 0

    registry = start_registry(work)
    stack.callback(stop_process, registry.proc)
    holder: dict[str, Bench] = {}
    stack.callback(lambda: cleanup(client, holder.get("bench"), node, registry.host))
    results.served = make_served_image(client, registry)
    say(f"registry {registry.host}, image {results.served}")

    server = local_etcd(work / "etcd", work / "etcd.log")
    stack.callback(server.stop)
    server.start(timeout=30)
    daemon: subprocess.Popen[bytes] | None = None
    stack.callback(lambda: stop_process(daemon))
    daemon, listen, log, data = start_daemon(work, server.endpoint, node)
    say(f"etcd {server.endpoint}, daemon {listen} (pid {daemon.pid}), node {node}")
    api = Api(listen, timeout=30)
    stack.callback(api.close)
    bench = holder["bench"] = Bench(api, client, data, registry, results.served, log)
    results.zip_bytes = len(bench.archive)
    ours = [daemon.pid, registry.proc.pid, *([server.proc.pid] if server.proc else [])]
    try:
        project = api.json("POST", "/api/projects", {"name": "bench"}, expect=201)
        bench.project = project["id"]
        for i in range(runs + 1):
            meter = Meter(ours)
            result = bench.run(i)
            result.other_load = meter.cores()
            label = "warm-up (cold)" if i == 0 else f"run {i}"
            if i == 0:
                results.cold = result
            else:
                results.runs.append(result)
            say(
                f"  {label}: upload -> STAGED {result.static.total:.3f} s (READY after "
                f"{result.static.upload_ready:.3f} s), docker -> STAGED "
                f"{result.docker.create_staged:.3f} s, start -> 200: static "
                f"{result.start_static.seconds:.3f} s, docker {result.start_docker.seconds:.3f} s"
            )
        if apps:
            say(f"real apps on debian: cold, then {apps} warm")
            for name, files in (("flask", FLASK_APP), ("express", EXPRESS_APP)):
                meter = Meter(ours)
                results.apps.append(bench.real_app(name, files, apps))
                results.apps_load[name] = meter.cores()
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon exited during the run:\n{tail(log)}")
        results.events = log_events(log)  # read now: the directory goes with the cleanup
    except BaseException:
        say(f"--- daemon log tail ---\n{tail(log)}")
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs after the warm-up")
    parser.add_argument(
        "--app-runs", type=int, default=5, help="warm stagings of the Flask and Express apps"
    )
    parser.add_argument(
        "--no-apps", action="store_true", help="skip the Flask and Express apps (debian stack)"
    )
    parser.add_argument(
        "--build-debian",
        action="store_true",
        help="also build the debian stack once under a private name (mmdebstrap, minutes)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.app_runs < 1:
        parser.error("--runs and --app-runs must be at least 1")
    apps = 0 if args.no_apps else args.app_runs
    for binary, package in (
        ("etcd", "etcd-server"),
        ("docker-registry", "docker-registry"),
        ("htpasswd", "apache2-utils"),
        ("busybox", "busybox-static"),
    ):
        if shutil.which(binary) is None:
            say(f"bench_staging: {binary} is not on PATH (Debian: {package})")
            return 2
    try:
        with contextlib.closing(docker_api()) as probe_client:
            probe_client.ping()
    except (docker.errors.DockerException, OSError) as exc:
        say(f"bench_staging: no Docker engine answers: {exc}")
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    results = Results()
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="lb-bench-staging-") as tmp,
        contextlib.ExitStack() as stack,
        budget(
            120.0
            + 60.0 * args.runs
            + (2 * APP_STAGE_TIMEOUT + 120.0 * apps if apps else 0.0)
            + (900.0 if args.build_debian else 0.0)
        ),
    ):
        run(Path(tmp), args.runs, results, stack, apps, args.build_debian)
    say(f"done in {time.monotonic() - started:.0f} s")
    print(report(results, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
