"""Builds on real Docker: push webhook -> image built and pushed -> new containers answering.

What it measures, on loopback only (nothing is pulled from the internet: the Dockerfile is
``FROM lastbackend-test/busybox:1``, reused if present, else imported offline from busybox-static
as ``tests/e2e/conftest.py`` does):

Setup: a private etcd (:class:`~lastbackend.store.embedded.EmbeddedEtcd` in a temporary directory,
on free ports), Debian's ``docker-registry`` on a free loopback port with htpasswd auth, the
smart-HTTP git server of ``tests/gitserver.py`` serving ``acme/site`` (a Dockerfile that copies
``index.html`` into ``/www`` and runs busybox ``httpd`` on 8080) and demanding the vendor's token,
and ``lastbackend daemon --etcd ... --listen 127.0.0.1:<free> --name bench-<hex>`` with
``LB_PLATFORM_REGISTRY`` set to the registry (log level ``info``, AMQP events off). Through the
API: the github vendor connected to the git server (``scheme: http``, a token and a webhook
secret), the registry's account, a project and a service ``web`` (1 replica, 32 MB, ``8080/TCP``
published) whose source is ``github/acme/site`` branch ``main``.

Each run commits a new ``index.html`` (``run <n> <hex>``) to the repository and sends GitHub's
push webhook for it (``POST /api/hooks/github``, ``X-Hub-Signature-256``). The clock starts when
the webhook is sent. Then, polling every 20 ms, the build (``GET .../builds/<n>``) and the
service: the containers API's running container of the service answering ``GET /`` on its
published port with the new page. The time each build status is first seen splits the total:

- webhook -> 202 (the build is queued);
- -> ``fetching`` (the controller picked it up);
- -> ``building`` (source resolved and cloned);
- -> ``pushing`` (``docker build`` done);
- -> ``success`` (pushed to the registry, tagged in the build-tag family, service pointed at it);
- -> the new page answers (the services controller rolled the service to the new image).

The first run after the daemon started is reported on its own row (cold); then N timed runs
(``--runs``, default 5). The aim (issue 5): webhook -> new containers answering under 10 s, judged
on the p50 of the timed runs.

Everything the bench made is removed however it ends: containers and volumes of its node
(label ``io.lastbackend.node=bench-<hex>``), local tags into its registry, the processes.

Run from the repository root (needs ``etcd``, ``docker-registry``, ``htpasswd``, ``git``, a
static ``busybox`` on PATH and a Docker engine)::

    .venv/bin/python tests/bench/bench_builds.py            # ~60 seconds
    .venv/bin/python tests/bench/bench_builds.py --runs 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import docker
import docker.errors
from cryptography.fernet import Fernet

# Run as a script from tests/bench/: make the repository's tests package importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from lastbackend.api.hooks import sign
from tests.baseimage import BASE_IMAGE
from tests.bench.bench_containers import (
    _die_with_parent,
    _lastbackend,
    docker_api,
    ensure_image,
    percentile,
    say,
    stop_process,
    sweep_node,
    tail,
)
from tests.gitserver import GitServer, commit, make_repo
from tests.support import free_port, local_etcd

HOST = "127.0.0.1"
POLL = 0.02
TOKEN = "ghp_bench" + uuid.uuid4().hex
USER = "bench"
HOOK_SECRET = "bench-hook-" + uuid.uuid4().hex
AIM_S = 10.0
RUN_LIMIT_S = 120.0
DOCKERFILE = (
    f"FROM {BASE_IMAGE}\n"
    "COPY index.html /www/index.html\n"
    'CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]\n'
)
PHASES = ("ack", "fetching", "building", "pushing", "success", "answering")
LABELS = {
    "ack": "webhook -> 202 (build queued)",
    "fetching": "-> fetching (picked up)",
    "building": "-> building (cloned)",
    "pushing": "-> pushing (docker build done)",
    "success": "-> success (pushed, tagged, service pointed)",
    "answering": "-> new containers answering (total)",
}


@dataclass
class Run:
    cold: bool
    marks: dict[str, float] = field(default_factory=dict)  # phase -> seconds since the webhook


# servers ----------------------------------------------------------------------------------------


def start_registry(work: Path) -> tuple[subprocess.Popen[bytes], str, str, str]:
    username, password = "bench", secrets.token_urlsafe(16)
    line = subprocess.run(
        ["htpasswd", "-Bbn", username, password], check=True, capture_output=True, text=True
    ).stdout.strip()
    (work / "htpasswd").write_text(line + "\n")
    host = f"{HOST}:{free_port()}"
    (work / "registry.yml").write_text(
        "version: 0.1\n"
        "log: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {work / 'registry'}}}}}\n"
        f"http: {{addr: '{host}', secret: {secrets.token_hex(16)}}}\n"
        f"auth: {{htpasswd: {{realm: bench, path: {work / 'htpasswd'}}}}}\n"
    )
    with open(work / "registry.log", "wb") as log:
        proc = subprocess.Popen(
            ["docker-registry", "serve", str(work / "registry.yml")],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
    return proc, host, username, password


def start_daemon(
    work: Path, etcd: str, node: str, registry: str
) -> tuple[subprocess.Popen[bytes], str, Path]:
    listen = f"{HOST}:{free_port()}"
    log = work / "daemon.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LB_")}
    env |= {
        "LB_PLATFORM_REGISTRY": registry,
        "LB_SECRET_KEY": Fernet.generate_key().decode(),
        "LB_EVENTS_AMQP_LISTEN": "off",
    }
    args = ["daemon", "--etcd", etcd, "--listen", listen, "--name", node, "--no-router"]
    args += ["--data-dir", str(work / "daemon-data"), "--log-level", "info"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [*_lastbackend(), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=_die_with_parent,
        )
    return proc, listen, log


class Api:
    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http = http
        self.base = base

    async def call(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        async with self.http.request(method, self.base + path, json=body) as resp:
            text = await resp.text()
            if resp.status != expect:
                raise RuntimeError(f"{method} {path} -> {resp.status} {text}")
            return json.loads(text) if text else None

    async def ready(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the daemon exited with {proc.returncode}:\n{tail(log)}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with self.http.get(self.base + "/readyz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"the daemon is not ready after 60 s:\n{tail(log)}")


# one run ----------------------------------------------------------------------------------------


async def answers(http: aiohttp.ClientSession, api: Api, expected: bytes) -> bool:
    body = await api.call("GET", "/api/projects/bench/services/web/containers")
    for container in body["resources"]:
        port = container["ports"].get("8080/TCP")
        if container["status"] != "running" or not port:
            continue
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            timeout = aiohttp.ClientTimeout(total=2)
            async with http.get(f"http://{HOST}:{port}/", timeout=timeout) as resp:
                if resp.status == 200 and await resp.read() == expected:
                    return True
    return False


async def one_run(
    http: aiohttp.ClientSession, api: Api, git: GitServer, number: int, cold: bool
) -> Run:
    page = f"run {number} {uuid.uuid4().hex}\n"
    sha = commit(git.root / "acme", "site", {"index.html": page}, f"bench run {number}")
    payload = {
        "ref": "refs/heads/main",
        "after": sha,
        "repository": {"name": "site", "owner": {"login": "acme"}},
        "head_commit": {"id": sha, "message": f"bench run {number}", "author": {"name": "Ada"}},
    }
    raw = json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-Hub-Signature-256": sign(HOOK_SECRET, raw),
    }
    run = Run(cold)
    started = time.monotonic()
    async with http.post(f"{api.base}/api/hooks/github", data=raw, headers=headers) as resp:
        body = await resp.json()
        if resp.status != 202 or len(body.get("builds", [])) != 1:
            raise RuntimeError(f"webhook -> {resp.status} {body}")
    run.marks["ack"] = time.monotonic() - started
    build = body["builds"][0]["number"]
    path = f"/api/projects/bench/services/web/builds/{build}"
    while "answering" not in run.marks:
        if time.monotonic() - started > RUN_LIMIT_S:
            raise TimeoutError(f"run {number} not done in {RUN_LIMIT_S:.0f} s: {run.marks}")
        found = await api.call("GET", path)
        status = found["status"]
        at = time.monotonic() - started
        for phase in PHASES[1:5]:
            if phase not in run.marks and _reached(status, phase):
                run.marks[phase] = at
        if status in ("failed", "canceled"):
            raise RuntimeError(f"build {build} {status}: {found['message']}")
        if status == "success" and await answers(http, api, page.encode()):
            run.marks["answering"] = time.monotonic() - started
        await asyncio.sleep(POLL)
    return run


ORDER = ("queued", "fetching", "building", "pushing", "success")


def _reached(status: str, phase: str) -> bool:
    """Whether ``status`` is ``phase`` or past it (a poll can miss a short status)."""
    return status in ORDER and ORDER.index(status) >= ORDER.index(phase)


# the whole bench --------------------------------------------------------------------------------


async def bench(work: Path, runs: int) -> list[Run]:
    client = docker_api()
    say(f"base image: {ensure_image(client)}")
    node = f"bench-{uuid.uuid4().hex[:8]}"
    etcd = local_etcd(work / "etcd", work / "etcd.log")
    registry_proc: subprocess.Popen[bytes] | None = None
    daemon: subprocess.Popen[bytes] | None = None
    registry = ""
    git = GitServer(work / "git", USER, TOKEN)
    make_repo(work / "git" / "acme", "site", {"Dockerfile": DOCKERFILE, "index.html": "zero\n"})
    try:
        etcd.start()
        registry_proc, registry, reg_user, reg_password = start_registry(work)
        await git.start()
        daemon, listen, log = start_daemon(work, etcd.endpoint, node, registry)
        async with aiohttp.ClientSession() as http:
            api = Api(http, f"http://{listen}")
            await api.ready(daemon, log)
            say(f"daemon ready at {listen}; registry {registry}; git {git.url}")
            vendor = {
                "host": f"{HOST}:{git.port}",
                "scheme": "http",
                "username": USER,
                "token": TOKEN,
                "webhook_secret": HOOK_SECRET,
            }
            await api.call("PUT", "/api/vendors/github", vendor, 201)
            account = {"host": registry, "username": reg_user, "password": reg_password}
            await api.call("POST", "/api/registries", account, 201)
            await api.call("POST", "/api/projects", {"name": "bench"}, 201)
            service = {
                "name": "web",
                "source": {"hub": "github", "owner": "acme", "repo": "site", "branch": "main"},
                "config": {"replicas": 1, "memory": 32, "ports": {"8080/TCP": 0}},
            }
            await api.call("POST", "/api/projects/bench/services", service, 201)
            done: list[Run] = []
            for number in range(runs + 1):
                run = await one_run(http, api, git, number, cold=number == 0)
                total = run.marks["answering"]
                say(f"run {number}{' (cold)' if run.cold else ''}: {total:.2f} s")
                done.append(run)
            return done
    finally:
        stop_process(daemon)
        with contextlib.suppress(Exception):
            await git.stop()
        stop_process(registry_proc)
        with contextlib.suppress(Exception):
            etcd.stop()
        sweep_node(client, node)
        _untag(client, registry)
        client.close()


def _untag(client: docker.APIClient, registry: str) -> None:
    if not registry:
        return
    for image in client.images():
        for ref in image.get("RepoTags") or []:
            if ref.startswith(f"{registry}/"):
                with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                    client.remove_image(ref)


def report(runs: Sequence[Run]) -> str:
    timed = [r for r in runs if not r.cold]
    cold = next((r for r in runs if r.cold), None)
    lines = [
        f"builds bench: {len(timed)} timed runs (+1 cold), {os.cpu_count()} cores, "
        f"{platform.machine()}, Python {platform.python_version()}",
        "",
        "| phase (seconds since the webhook was sent) | cold | p50 | max |",
        "|---|---:|---:|---:|",
    ]
    for phase in PHASES:
        values = [r.marks[phase] for r in timed]
        first = f"{cold.marks[phase]:.2f}" if cold else "-"
        lines.append(
            f"| {LABELS[phase]} | {first} | {percentile(values, 0.5):.2f} | {max(values):.2f} |"
        )
    p50 = percentile([r.marks["answering"] for r in timed], 0.5)
    verdict = "PASS" if p50 < AIM_S else "MISS"
    lines += [
        "",
        f"aim: webhook -> new containers answering p50 < {AIM_S:.0f} s: {p50:.2f} s {verdict}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs after the cold one")
    args = parser.parse_args(argv)
    for binary in ("etcd", "docker-registry", "htpasswd", "git"):
        if shutil.which(binary) is None:
            say(f"bench_builds: {binary} is not on PATH")
            return 2
    try:
        with contextlib.closing(docker_api()) as probe:
            probe.ping()
    except (docker.errors.DockerException, OSError) as exc:
        say(f"bench_builds: no Docker engine answers: {exc}")
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lb-bench-builds-") as tmp:
        runs = asyncio.run(bench(Path(tmp), max(1, args.runs)))
    say(f"done in {time.monotonic() - started:.0f} s")
    print(report(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
