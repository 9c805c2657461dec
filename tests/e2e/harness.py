"""What the e2e tests share to drive ``lastbackend`` processes and read Docker: the harness.

Each test starts the console script as subprocesses (:class:`Proc`) on free ports with a node name
of its own (:class:`Harness`), polls conditions with deadlines (:func:`eventually`), and leaves
nothing behind: :meth:`Harness.cleanup` kills its processes and force-removes every container,
volume and image labelled with its node (the ``harness`` fixture in ``conftest.py`` calls it).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import docker
import docker.errors
import pytest
from cryptography.fernet import Fernet

from lastbackend.store.embedded import EmbeddedEtcd
from tests.support import free_port

if TYPE_CHECKING:
    from tests.e2e.conftest import Registry

SERVE = "trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait"
"""busybox httpd under a shell that ends on SIGTERM, as an app should (httpd alone, as PID 1,
ignores it and would take the node agent's whole stop timeout to go)."""
LABEL_NODE = "io.lastbackend.node"
LABEL_POD = "io.lastbackend.pod"
LABEL_SERVICE = "io.lastbackend.service"
LABEL_TEMPLATE = "io.lastbackend.template"
ROOT = "/lastbackend/"
LEASE_TTL = 15  # the controllers' default election TTL (controllers/leader.py)


def console_script() -> str:
    sibling = Path(sys.executable).parent / "lastbackend"
    if sibling.exists():
        return str(sibling)
    found = shutil.which("lastbackend")
    if found is None:
        pytest.skip("the lastbackend console script is not installed")
    return found


# --- processes -----------------------------------------------------------------------------------


class Proc:
    """One ``lastbackend <command>`` subprocess, its output in a log file, its API at ``url``."""

    def __init__(self, log: Path, argv: list[str], port: int, env: dict[str, str]) -> None:
        self.argv = argv
        self.log = log
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [console_script(), *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, chars: int = 3000) -> str:
        return self.output()[-chars:]

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing is cleaned up, no election is resigned."""
        if self.alive:
            self.proc.kill()
        self.proc.wait(10)

    def terminate(self, within: float = 30) -> int:
        """SIGTERM, then the exit code (SIGKILL if it did not exit within ``within`` s)."""
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(within)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(
                f"{self.argv[0]} did not exit within {within}s of SIGTERM:\n{self.tail()}"
            ) from None


async def eventually(
    probe: Callable[[], Any],
    within: float,
    what: str,
    *,
    interval: float = 0.1,
    explain: Callable[[], str] | None = None,
) -> Any:
    """Poll ``probe`` (sync or async) until it returns something truthy, and return that."""
    deadline = time.monotonic() + within
    while True:
        result = probe()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            detail = f"\n{explain()}" if explain is not None else ""
            raise AssertionError(f"{what}: not within {within}s{detail}")
        await asyncio.sleep(interval)


def docker_time(value: str) -> datetime:
    """Docker's RFC 3339 times carry up to nanoseconds; keep microseconds."""
    value = re.sub(r"\.(\d+)", lambda m: "." + m.group(1)[:6].ljust(6, "0"), value, count=1)
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


class Harness:
    """The processes, node name, secret key and Docker view of one test."""

    def __init__(self, tmp: Path, dockerd: str, docker_api: docker.APIClient) -> None:
        self.tmp = tmp
        self.dockerd = dockerd
        self.docker = docker_api
        self.node = f"e2e-{uuid.uuid4().hex[:10]}"
        self.secret_key = Fernet.generate_key().decode()
        self.node_token = f"node-{uuid.uuid4().hex}"
        """Shared by every process of the test, as a multi-process install shares LB_NODE_TOKEN."""
        self.procs: list[Proc] = []
        self.responses: list[str] = []  # every API response body this test received
        self.images: list[str] = []  # local image tags to remove afterwards
        self.etcd_servers: list[EmbeddedEtcd] = []

    # processes

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LB_")}
        env.update(
            LB_SECRET_KEY=self.secret_key,
            LB_NODE_TOKEN=self.node_token,
            LB_DOCKER_HOST=self.dockerd,
            LB_LOG_LEVEL="info",
        )
        # busybox, not "debian once built": whether the engine holds debian is not the test's
        env.update(LB_DEFAULT_STACK="busybox")
        return env

    def start(
        self, command: str, etcd: str, *extra: str, env: dict[str, str] | None = None
    ) -> Proc:
        """``lastbackend <command>`` on ``etcd``; ``daemon`` and ``node`` get this node's name
        (a later ``--name`` in ``extra`` wins), ``env`` is added to :meth:`env`.

        A ``daemon`` runs no router unless ``extra`` gives it router addresses: the tests that
        route start their routers themselves, on ports of their own.
        """
        port = free_port()
        argv = [command, "--etcd", etcd, "--listen", f"127.0.0.1:{port}"]
        argv += ["--data-dir", str(self.tmp / "data")]
        if command in ("daemon", "node"):
            argv += ["--name", self.node]
        if command == "daemon" and "--router-http" not in extra:
            argv.append("--no-router")
        argv += extra
        log = self.tmp / f"{len(self.procs) + 1:02d}-{command}.log"
        proc = Proc(log, argv, port, {**self.env(), **(env or {})})
        self.procs.append(proc)
        return proc

    async def ready(self, proc: Proc, within: float = 30) -> dict[str, Any]:
        """Wait for ``/readyz`` to answer 200 (etcd answers, controllers synced or following)."""

        async def probe() -> dict[str, Any] | None:
            if not proc.alive:
                raise AssertionError(
                    f"{proc.argv[0]} exited with {proc.proc.returncode}:\n{proc.tail()}"
                )
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                status, body = await self.call(proc, "GET", "/readyz", record=False)
                if status == 200:
                    return dict(body)
            return None

        body: dict[str, Any] = await eventually(
            probe, within, f"{proc.argv[0]} /readyz 200", explain=proc.tail
        )
        return body

    async def call(
        self,
        proc: Proc,
        method: str,
        path: str,
        body: Any = None,
        *,
        expect: int | None = None,
        record: bool = True,
    ) -> tuple[int, Any]:
        timeout = aiohttp.ClientTimeout(total=10)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.request(method, proc.url + path, json=body) as resp,
        ):
            text = await resp.text()
            status = resp.status
        if record:
            self.responses.append(text)
        if expect is not None:
            assert status == expect, f"{method} {path} -> {status} {text}\n{proc.tail()}"
        return status, json.loads(text) if text else None

    # what Docker shows

    def containers(self, *labels: str, running: bool = False) -> list[dict[str, Any]]:
        """``docker ps -a`` of this node's containers (summaries), optionally more labels."""
        filters: dict[str, Any] = {"label": [f"{LABEL_NODE}={self.node}", *labels]}
        if running:
            filters["status"] = "running"
        return list(self.docker.containers(all=True, filters=filters))

    def running(self, *labels: str) -> list[dict[str, Any]]:
        return [c for c in self.containers(*labels) if c["State"] == "running"]

    def volumes(self) -> list[str]:
        found = self.docker.volumes(filters={"label": [f"{LABEL_NODE}={self.node}"]})
        return sorted(v["Name"] for v in found.get("Volumes") or [])

    def explain(self) -> str:
        lines = ["docker:"]
        for c in self.containers():
            labels = c["Labels"]
            lines.append(
                f"  {c['Id'][:12]} {c['Names'][0]} {c['State']} "
                f"service={labels.get(LABEL_SERVICE, '')[:8]} "
                f"template={labels.get(LABEL_TEMPLATE)}"
            )
        lines.append(f"volumes: {self.volumes()}")
        for proc in self.procs:
            lines.append(f"--- {proc.log.name} (alive={proc.alive}) ---\n{proc.tail(2500)}")
        return "\n".join(lines)

    def cleanup(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(Exception):
                proc.kill()
        for server in self.etcd_servers:
            with contextlib.suppress(Exception):
                server.stop()
        for c in self.containers():
            try:
                self.docker.remove_container(c["Id"], force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: a removal already in progress (the agent's)
                    raise
        for name in self.volumes():
            with contextlib.suppress(docker.errors.NotFound):
                self.docker.remove_volume(name, force=True)
        for image in self.images:
            try:
                self.docker.remove_image(image, force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # still held by a container being removed
                    raise


def push(h: Harness, source: str, target: str, registry: Registry) -> None:
    """Push ``source`` as ``target`` with the registry's credentials, then drop the local tag."""
    repository, tag = target.rsplit(":", 1)
    h.docker.tag(source, repository, tag)
    auth = {"username": registry.username, "password": registry.password}
    for line in h.docker.push(repository, tag, auth_config=auth, stream=True, decode=True):
        assert "error" not in line, line
    h.docker.remove_image(target)
    h.images.append(target)


def push_served_image(h: Harness, registry: Registry, base_image: str, name: str) -> str:
    """``<registry>/<name>:1``: the base image made to serve ``/www`` on 8080 (exposing that
    port), pushed to ``registry`` with its credentials; the reference."""
    served = f"{registry.host}/{name}:1"
    scratch = h.docker.create_container(base_image, command="true")["Id"]
    try:
        h.docker.commit(
            scratch,
            repository=f"{registry.host}/{name}",
            tag="1",
            changes=['CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]', "EXPOSE 8080/tcp"],
        )
    finally:
        h.docker.remove_container(scratch, force=True)
    push(h, served, served, registry)
    return served
