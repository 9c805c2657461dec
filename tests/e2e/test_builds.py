"""Builds end to end: ``lastbackend daemon`` clones, ``docker build``s, pushes and rolls out.

Everything is real: a smart-HTTP git server on loopback that demands the vendor's token
(``tests/gitserver.py``), the vendor connected through ``/api/vendors/github``, a Dockerfile
``FROM`` the offline busybox image, the Docker engine, the htpasswd registry of the e2e fixtures
(the daemon's ``LB_PLATFORM_REGISTRY``, with its account stored through ``/api/registries``), and
the node agent running the built image. What is checked is what a user notices: the build's
status and message, its log, the tag in the registry, and the page the service answers with.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.server
import io
import ipaddress
import json
import shutil
import ssl
import tarfile
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import docker
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lastbackend.api.hooks import sign
from lastbackend.runtime.base import CA_VARIABLES
from lastbackend.runtime.docker import DockerRuntime
from lastbackend.store.embedded import EmbeddedEtcd
from tests.baseimage import NoCurl, ensure_curl_image
from tests.e2e.conftest import Registry
from tests.e2e.harness import Harness, Proc, eventually
from tests.gitserver import GitServer, commit, make_repo
from tests.support import RawEtcd

pytestmark = [pytest.mark.docker, pytest.mark.etcd]

TOKEN = "ghp_e2e0123456789abcdef0123456789abcdef"
USER = "ada"
HOOK_SECRET = "hook-" + uuid.uuid4().hex
INTERRUPTED = "interrupted: the build controller restarted while this build ran; start it again"


def dockerfile(base: str, extra: str = "") -> str:
    return (
        f"FROM {base}\n"
        f"{extra}"
        "COPY index.html /www/index.html\n"
        'CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]\n'
    )


class BuildHarness(Harness):
    """The containers harness, its daemons pushing builds to the e2e registry."""

    registry_host = ""

    def env(self) -> dict[str, str]:
        env = super().env()
        env["LB_PLATFORM_REGISTRY"] = self.registry_host
        return env


@pytest.fixture
def harness(
    tmp_path: Path, dockerd: str, base_image: str, docker_api: docker.APIClient, registry: Registry
) -> Iterator[BuildHarness]:
    h = BuildHarness(tmp_path, dockerd, docker_api)
    h.registry_host = registry.host
    try:
        yield h
    finally:
        h.cleanup()


@pytest.fixture
async def git(tmp_path: Path) -> AsyncIterator[GitServer]:
    server = GitServer(tmp_path / "git", USER, TOKEN)
    await server.start()
    yield server
    await server.stop()


class Site:
    """One project with a service built from ``acme/<repo>`` on the git server."""

    def __init__(self, h: BuildHarness, proc: Proc, git: GitServer, registry: Registry) -> None:
        self.h = h
        self.proc = proc
        self.git = git
        self.registry = registry
        self.project = f"p-{uuid.uuid4().hex[:8]}"
        self.repo = f"site{uuid.uuid4().hex[:6]}"
        self.pid = ""
        self.sid = ""

    @property
    def builds(self) -> str:
        return f"/api/projects/{self.project}/services/web/builds"

    async def call(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        _, data = await self.h.call(self.proc, method, path, body, expect=expect)
        return data

    async def setup(self, files: dict[str, str], branch: str = "main") -> str:
        sha = make_repo(self.git.root / "acme", self.repo, files)
        vendor = {
            "host": f"127.0.0.1:{self.git.port}",
            "scheme": "http",
            "username": USER,
            "token": TOKEN,
            "webhook_secret": HOOK_SECRET,
        }
        status, _ = await self.h.call(self.proc, "PUT", "/api/vendors/github", vendor)
        assert status in (200, 201)
        account = {
            "host": self.registry.host,
            "username": self.registry.username,
            "password": self.registry.password,
        }
        status, _ = await self.h.call(self.proc, "POST", "/api/registries", account)
        assert status in (201, 409)
        self.pid = (await self.call("POST", "/api/projects", {"name": self.project}, 201))["id"]
        service = {
            "name": "web",
            "source": {"hub": "github", "owner": "acme", "repo": self.repo, "branch": branch},
            "config": {"replicas": 1, "memory": 32, "ports": {"8080/TCP": 0}},
        }
        path = f"/api/projects/{self.project}/services"
        self.sid = (await self.call("POST", path, service, 201))["id"]
        return sha

    def ref(self, number: int) -> str:
        ref = f"{self.registry.host}/{self.project}/web:{number}"
        self.h.images.append(ref)
        return ref

    async def start(self) -> int:
        return int((await self.call("POST", self.builds, None, 201))["number"])

    async def build(self, number: int) -> dict[str, Any]:
        return dict(await self.call("GET", f"{self.builds}/{number}"))

    async def ended(self, number: int, within: float = 120) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            build = await self.build(number)
            return build if build["status"] in ("success", "failed", "canceled") else None

        result: dict[str, Any] = await eventually(
            probe, within, f"build {number} ended", explain=self.h.explain, interval=0.2
        )
        return result

    async def reaches(self, number: int, status: str, within: float = 60) -> None:
        async def probe() -> bool:
            return (await self.build(number))["status"] == status

        await eventually(probe, within, f"build {number} {status}", explain=self.h.explain)

    async def logs(self, number: int) -> str:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.proc.url}{self.builds}/{number}/logs") as resp,
        ):
            assert resp.status == 200
            return await resp.text()

    async def answers(self, expected: bytes, within: float = 60) -> None:
        """The service's running container serves ``expected`` on its published port."""
        path = f"/api/projects/{self.project}/services/web/containers"

        async def probe() -> bool:
            body = await self.call("GET", path)
            for container in body["resources"]:
                port = container["ports"].get("8080/TCP")
                if container["status"] != "running" or not port:
                    continue
                timeout = aiohttp.ClientTimeout(total=3)
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with (
                        aiohttp.ClientSession(timeout=timeout) as http,
                        http.get(f"http://127.0.0.1:{port}/") as resp,
                    ):
                        if resp.status == 200 and await resp.read() == expected:
                            return True
            return False

        await eventually(probe, within, f"the service answers {expected!r}", explain=self.h.explain)

    async def registry_tags(self) -> list[str]:
        """What the registry itself lists for the service's repository."""
        raw = f"{self.registry.username}:{self.registry.password}".encode()
        headers = {"Authorization": f"Basic {base64.b64encode(raw).decode()}"}
        url = f"http://{self.registry.host}/v2/{self.project}/web/tags/list"
        async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
            if resp.status != 200:
                return []
            return list((await resp.json()).get("tags") or [])

    async def hook(self, sha: str, message: str, secret: str = HOOK_SECRET) -> tuple[int, Any]:
        payload = {
            "ref": "refs/heads/main",
            "after": sha,
            "repository": {"name": self.repo, "owner": {"login": "acme"}},
            "head_commit": {"id": sha, "message": message, "author": {"name": "Ada"}},
        }
        raw = json.dumps(payload).encode()
        headers = {
            "Content-Type": "application/json",
            "X-GitHub-Event": "push",
            "X-Hub-Signature-256": sign(secret, raw),
        }
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{self.proc.url}/api/hooks/github", data=raw, headers=headers) as resp,
        ):
            text = await resp.text()
            return resp.status, json.loads(text) if text else None

    def step_containers(self, marker: str) -> list[str]:
        """What runs a ``docker build`` step whose command holds ``marker``: the classic
        builder's step containers, and BuildKit's step processes (BuildKit runs steps itself,
        not as Docker containers; the step must not be the shell's last command, which the
        shell would ``exec``)."""
        found = self.h.docker.containers(all=True)
        running = [c["Id"] for c in found if marker in (c.get("Command") or "")]
        for proc in Path("/proc").iterdir():
            with contextlib.suppress(OSError):
                if proc.name.isdigit() and marker.encode() in (proc / "cmdline").read_bytes():
                    running.append(f"pid {proc.name}")
        return running


async def daemon_with_site(
    h: BuildHarness, etcd_server: EmbeddedEtcd, git: GitServer, registry: Registry
) -> tuple[Proc, Site]:
    daemon = h.start("daemon", etcd_server.endpoint)
    await h.ready(daemon)
    return daemon, Site(h, daemon, git, registry)


# --- a build, then a push webhook, each rolled out --------------------------------------------


async def test_build_then_push_webhook_roll_out_new_content(
    harness: BuildHarness,
    etcd: RawEtcd,
    etcd_server: EmbeddedEtcd,
    git: GitServer,
    registry: Registry,
    base_image: str,
) -> None:
    h = harness
    _, site = await daemon_with_site(h, etcd_server, git, registry)
    sha = await site.setup({"Dockerfile": dockerfile(base_image), "index.html": "v1 built\n"})

    number = await site.start()
    assert number == 1
    build = await site.ended(number)
    assert build["status"] == "success", await site.logs(number)
    assert build["commit"] == sha
    assert build["commitMessage"] == f"first commit of {site.repo}"
    assert build["committer"] == "Ada"
    ref = site.ref(1)
    image = await site.call("GET", f"/api/projects/{site.project}/services/web/image")
    assert image == {"image": ref}
    assert "1" in await site.registry_tags()
    log = await site.logs(number)
    assert "[2/2] COPY index.html /www/index.html" in log  # BuildKit's: RUN steps get the CA
    assert f"Pushing {ref} as {registry.username}" in log
    assert TOKEN not in log
    assert registry.password not in log
    await site.answers(b"v1 built\n")

    tag = await site.call("GET", f"/api/repos/acme.{site.repo}/branches/main/tags/untested")
    assert (tag["build_id"], tag["commit_id"]) == ("1", sha)
    [artifact] = tag["artifacts"].values()
    assert artifact["registry_url"] == registry.host
    assert artifact["repository"] == f"{site.project}/web"

    # a push webhook: a wrong signature starts nothing, a right one builds and rolls out
    second = commit(git.root / "acme", site.repo, {"index.html": "v2 pushed\n"}, "second page")
    status, answer = await site.hook(second, "second page\n\nbody", secret="not-the-secret")
    assert status == 401, answer
    assert [b["number"] for b in (await site.call("GET", site.builds))["resources"]] == [1]
    status, answer = await site.hook(second, "second page\n\nbody")
    assert status == 202, answer
    assert answer["builds"] == [{"service": site.sid, "project": site.pid, "number": 2}]
    build = await site.ended(2)
    assert build["status"] == "success", await site.logs(2)
    assert (build["commit"], build["commitMessage"]) == (second, "second page")
    image = await site.call("GET", f"/api/projects/{site.project}/services/web/image")
    assert image == {"image": site.ref(2)}
    await site.answers(b"v2 pushed\n")
    assert sorted(await site.registry_tags()) == ["1", "2"]


async def test_a_build_gets_the_hosts_proxies_and_keeps_them_out_of_the_image(
    harness: BuildHarness,
    etcd: RawEtcd,
    etcd_server: EmbeddedEtcd,
    git: GitServer,
    registry: Registry,
    base_image: str,
) -> None:
    """``staging.build_env`` reaches ``RUN`` steps as Docker's proxy build arguments.

    FTP_PROXY stands in for HTTPS_PROXY: nothing the daemon itself does (etcd, git over HTTP,
    the Docker socket) goes through an FTP proxy, so the made-up one cannot get in its way.
    """
    h = harness
    proxy = "http://builder:pw-4711@proxy.invalid:3128"
    env = {"LB_STAGING_BUILD_ENV": "FTP_PROXY", "FTP_PROXY": proxy}
    daemon = h.start("daemon", etcd_server.endpoint, env=env)
    await h.ready(daemon)
    site = Site(h, daemon, git, registry)
    check = 'RUN case "$FTP_PROXY" in *@proxy.invalid:3128) ;; *) exit 9 ;; esac\n'
    await site.setup({"Dockerfile": dockerfile(base_image, check), "index.html": "proxied\n"})
    build = await site.ended(await site.start())
    log = await site.logs(1)
    assert build["status"] == "success", log  # exit 9 had the step not seen the proxy
    assert "       build arguments from the host: FTP_PROXY" in log
    assert "pw-4711" not in log
    history = h.docker.history(site.ref(1))
    assert "pw-4711" not in json.dumps(history)  # Docker keeps undeclared proxy args out
    await site.answers(b"proxied\n")


# --- failures -------------------------------------------------------------------------------------


async def test_bad_branch_and_failing_step_fail_with_their_reasons(
    harness: BuildHarness,
    etcd: RawEtcd,
    etcd_server: EmbeddedEtcd,
    git: GitServer,
    registry: Registry,
    base_image: str,
) -> None:
    h = harness
    _, site = await daemon_with_site(h, etcd_server, git, registry)
    files = {"Dockerfile": dockerfile(base_image, "RUN exit 7\n"), "index.html": "never\n"}
    await site.setup(files, branch="release")  # the repository has only main
    build = await site.ended(await site.start())
    assert build["status"] == "failed"
    assert build["message"].startswith("clone repo failed: fatal:"), build
    assert "release" in build["message"]

    await site.call(
        "PUT",
        f"/api/projects/{site.project}/services/web/source",
        {"hub": "github", "owner": "acme", "repo": site.repo, "branch": "main"},
    )
    build = await site.ended(await site.start())
    assert build["status"] == "failed"
    assert build["message"] == (
        "docker build failed: The command '/bin/sh -c exit 7' returned a non-zero code: 7"
    )
    assert "Build failed: docker build failed" in await site.logs(2)
    image = await site.call("GET", f"/api/projects/{site.project}/services/web/image")
    assert image == {"image": None}


# --- one at a time, and cancel --------------------------------------------------------------------


async def test_builds_run_one_at_a_time_and_cancel_stops_docker_build(
    harness: BuildHarness,
    etcd: RawEtcd,
    etcd_server: EmbeddedEtcd,
    git: GitServer,
    registry: Registry,
    base_image: str,
) -> None:
    h = harness
    _, site = await daemon_with_site(h, etcd_server, git, registry)
    marker = f"lb-cancel-{uuid.uuid4().hex[:8]}"
    slow = dockerfile(base_image, f"RUN sleep 120 && true # {marker}\n")
    await site.setup({"Dockerfile": slow, "index.html": "slow\n"})
    first, second = await site.start(), await site.start()

    running = await eventually(
        lambda: site.step_containers(marker), 60, "the RUN step running", explain=h.explain
    )
    assert (await site.build(first))["status"] == "building"
    assert (await site.build(second))["status"] == "queued"  # one at a time per service

    canceled = await site.call("POST", f"{site.builds}/{first}/cancel")
    assert canceled["status"] == "canceled"
    # the engine stops the step and removes its container; then the next build starts
    await eventually(
        lambda: not set(running) & set(site.step_containers(marker)),
        30,
        "the canceled step's container removed",
        explain=h.explain,
    )
    await site.reaches(second, "building")
    assert (await site.build(first))["status"] == "canceled"
    running = await eventually(lambda: site.step_containers(marker), 60, "the next RUN step")
    await site.call("POST", f"{site.builds}/{second}/cancel")
    await eventually(lambda: not site.step_containers(marker), 30, "second step removed")
    assert "Build stopped" in await site.logs(first)
    again = await h.call(site.proc, "POST", f"{site.builds}/{first}/cancel")
    assert again[0] == 409
    image = await site.call("GET", f"/api/projects/{site.project}/services/web/image")
    assert image == {"image": None}


# --- kill -9 mid-build ----------------------------------------------------------------------------


async def test_kill_9_mid_build_ends_failed_never_stuck_building(
    harness: BuildHarness,
    etcd: RawEtcd,
    etcd_server: EmbeddedEtcd,
    git: GitServer,
    registry: Registry,
    base_image: str,
) -> None:
    h = harness
    daemon, site = await daemon_with_site(h, etcd_server, git, registry)
    marker = f"lb-kill-{uuid.uuid4().hex[:8]}"
    await site.setup(
        {
            "Dockerfile": dockerfile(base_image, f"RUN sleep 120 && true # {marker}\n"),
            "index.html": "x\n",
        }
    )
    number = await site.start()
    await eventually(lambda: site.step_containers(marker), 60, "the RUN step running")
    daemon.kill()
    # the engine sees its client gone and stops the step
    await eventually(lambda: not site.step_containers(marker), 30, "step container gone")

    restarted = h.start("daemon", etcd_server.endpoint)
    await h.ready(restarted)
    site.proc = restarted
    build = await site.ended(number, within=90)  # after the dead leader's lease expires
    assert (build["status"], build["message"]) == ("failed", INTERRUPTED)
    assert "Build failed: interrupted" in await site.logs(number)

    # and the service can be built again
    commit(
        git.root / "acme",
        site.repo,
        {"Dockerfile": dockerfile(base_image), "index.html": "after the crash\n"},
        "fast again",
    )
    build = await site.ended(await site.start())
    assert build["status"] == "success", await site.logs(2)
    site.ref(2)
    await site.answers(b"after the crash\n")


# --- the CA bundle in RUN steps -------------------------------------------------------------------

HOST_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None = None,
    issuer_key: ec.EllipticCurvePrivateKey | None = None,
    ip: str | None = None,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if ip is not None:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


class TLSServer:
    """HTTPS on the Docker bridge's gateway (where a build step reaches the host), with a
    certificate signed by a private CA that nothing trusts unless it is given."""

    BODY = b"fetched over verified TLS\n"

    def __init__(self, host: str, tmp: Path) -> None:
        ca_key, key = (
            ec.generate_private_key(ec.SECP256R1()),
            ec.generate_private_key(ec.SECP256R1()),
        )
        self.ca = _certificate("lastbackend test private CA", ca_key)
        cert = _certificate(host, key, self.ca, ca_key, ip=host)
        self.ca_pem = self.ca.public_bytes(serialization.Encoding.PEM)
        (tmp / "server.pem").write_bytes(
            cert.public_bytes(serialization.Encoding.PEM)
            + key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tmp / "server.pem")
        body = self.BODY

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://{host}:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def tls_server(docker_api: docker.APIClient, tmp_path: Path) -> Iterator[TLSServer]:
    ipam = docker_api.inspect_network("bridge")["IPAM"]["Config"][0]
    gateway = ipam.get("Gateway") or str(ipaddress.ip_network(ipam["Subnet"])[1])  # docker0
    server = TLSServer(gateway, tmp_path)
    yield server
    server.close()


@pytest.fixture
def curl_image(dockerd: str, docker_api: docker.APIClient) -> str:
    try:
        return ensure_curl_image(docker_api)
    except NoCurl as exc:
        pytest.skip(str(exc))


def _image_text(api: docker.APIClient, ref: str) -> tuple[bytes, str]:
    """Every file of every layer of ``ref`` (``docker save``), and its history as JSON."""
    saved = io.BytesIO(b"".join(api.get_image(ref)))
    files = []
    with tarfile.open(fileobj=saved) as outer:
        for member in outer:
            if member.name.endswith("layer.tar"):
                layer = outer.extractfile(member)
                assert layer is not None
                with tarfile.open(fileobj=io.BytesIO(layer.read())) as inner:
                    for entry in inner:
                        files.append(entry.name.encode())
                        if entry.isfile():
                            files.append(inner.extractfile(entry).read())  # type: ignore[union-attr]
    return b"\n".join(files), json.dumps(api.history(ref))


async def test_run_steps_trust_the_configured_ca_and_the_image_keeps_none_of_it(
    harness: BuildHarness,
    etcd: RawEtcd,
    etcd_server: EmbeddedEtcd,
    git: GitServer,
    registry: Registry,
    curl_image: str,
    tls_server: TLSServer,
    tmp_path: Path,
) -> None:
    """A ``RUN curl https://...`` to a server of a private CA succeeds with that CA as
    ``staging.ca_certificates`` and fails on the certificate with the host's bundle instead;
    the image's layers, history and config hold neither the CA nor the proxy."""
    h = harness
    ca_file = tmp_path / "corp-ca.pem"
    ca_file.write_bytes(tls_server.ca_pem)
    proxy = "http://builder:pw-4711@proxy.invalid:3128"
    env = {
        "LB_STAGING_CA_CERTIFICATES": str(ca_file),
        "LB_STAGING_BUILD_ENV": "FTP_PROXY",
        "FTP_PROXY": proxy,
    }
    daemon = h.start("daemon", etcd_server.endpoint, env=env)
    await h.ready(daemon)
    site = Site(h, daemon, git, registry)
    steps = (
        f"RUN curl -fsS {tls_server.url} -o /www/fetched.txt\n"
        'RUN case "$FTP_PROXY" in *@proxy.invalid:3128) ;; *) exit 9 ;; esac\n'
        'RUN for f in "$SSL_CERT_FILE" "$PIP_CERT" "$NODE_EXTRA_CA_CERTS" "$REQUESTS_CA_BUNDLE"; '
        'do test -r "$f" || exit 8; done\n'
    )
    await site.setup({"Dockerfile": dockerfile(curl_image, steps), "index.html": "trusted\n"})
    build = await site.ended(await site.start())
    log = await site.logs(1)
    assert build["status"] == "success", log
    assert f"CA bundle for RUN steps: {ca_file} (kept out of the image)" in log
    assert f"RUN curl -fsS {tls_server.url} -o /www/fetched.txt" in log  # the user's own line
    ref = site.ref(1)
    await site.answers(b"trusted\n")

    files, history = _image_text(h.docker, ref)
    assert tls_server.BODY in files  # the step really fetched it
    body = b"".join(tls_server.ca_pem.splitlines()[1:-1])  # the CA's base64, without armour
    for secret in (body[:64], b"pw-4711"):  # (the Dockerfile itself names proxy.invalid)
        assert secret not in files
        assert secret.decode() not in history
    config = h.docker.inspect_image(ref)["Config"]
    assert not [e for e in config["Env"] or [] if e.split("=")[0] in (*CA_VARIABLES, "FTP_PROXY")]
    assert "pw-4711" not in json.dumps(config)

    # the same build with the host's bundle, which does not hold the private CA (a new step:
    # the bundle is not part of the build cache's key, as the proxies are not)
    shutil.copyfile(HOST_BUNDLE, ca_file)
    again = steps.replace("fetched.txt\n", "fetched.txt  # again\n", 1)
    commit(git.root / "acme", site.repo, {"Dockerfile": dockerfile(curl_image, again)}, "again")
    build = await site.ended(await site.start())
    log = await site.logs(2)
    assert build["status"] == "failed", log
    assert "SSL certificate problem" in log, log
    assert build["message"].startswith("docker build failed: The command '/bin/sh -c curl"), build


def _context(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


async def test_python_pip_node_npm_and_apt_in_run_steps_verify_with_the_bundle_as_non_root(
    runtime: DockerRuntime, debian_stack: str, tls_server: TLSServer, docker_api: docker.APIClient
) -> None:
    """The variables each tool reads, checked with the tools themselves (the debian stack's
    build image, whose user is ``lb``): Python's ``ssl``, pip, node, npm and apt reach the
    private CA's server with the bundle, and fail on its certificate with the host's bundle."""
    url = tls_server.url
    probes = (
        f"RUN python3 -c \"import urllib.request as u; u.urlopen('{url}'); print('python: ok')\" "
        "2>&1 | tail -1\n"
        f"RUN python3 -m pip download --retries 0 --no-deps -d /tmp/x --index-url {url}simple/ "
        "nothing-here 2>&1 | grep -i -m1 certificate; echo pip: done\n"
        f"RUN node -e \"require('https').get('{url}', () => console.log('node: fetched'))"
        ".on('error', e => console.log('node: ' + e.code))\"\n"
        f"RUN npm view nothing-here --fetch-retries 0 --registry {url} 2>&1 | grep -m1 'ERR! code'"
        "; echo npm: done\n"
        # apt's https transport, as the non-root user: its lists and cache under /tmp
        f"RUN echo 'deb [trusted=yes] {url} bookworm main' > /tmp/s.list && "
        "mkdir -p /tmp/l/partial /tmp/c/archives/partial && apt-get -o Debug::NoLocking=1 "
        "-o Dir::State::Lists=/tmp/l -o Dir::Cache=/tmp/c -o Dir::Etc::SourceList=/tmp/s.list "
        "-o Dir::Etc::SourceParts=/nonexistent update 2>&1 "
        "| grep -m1 'Certificate verification\\|GPG error'; "
        "echo apt: done\n"
    )
    tag = f"lastbackend-test/ca-tools:{uuid.uuid4().hex[:8]}"
    try:
        host = await asyncio.to_thread(HOST_BUNDLE.read_bytes)
        for ca, marker in ((tls_server.ca_pem, "with"), (host, "without")):
            lines: list[str] = []
            text = f"FROM lastbackend/stack-build:{debian_stack}\nRUN echo {marker} {tag}\n"
            await runtime.build_image(
                _context({"Dockerfile": text + probes}),
                "Dockerfile",
                tag,
                labels={},
                log=lines.append,
                ca_bundle=ca,
            )
            log = "\n".join(lines)
            failed = "CERTIFICATE_VERIFY_FAILED" in log, "UNABLE_TO_VERIFY_LEAF_SIGNATURE" in log
            if marker == "with":
                assert "python: ok" in log, log
                assert "node: fetched" in log, log
                assert not any(failed), log
                assert "problem confirming the ssl certificate" not in log, log  # pip's words
                assert "Certificate verification failed" not in log, log  # apt's
                assert "Signed file isn't valid" in log, log  # apt got past TLS to the files
            else:
                assert "node: UNABLE_TO_VERIFY_LEAF_SIGNATURE" in log, log
                assert all(failed), log
                assert "There was a problem confirming the ssl certificate" in log, log
                assert "Certificate verification failed: The certificate is NOT trusted" in log
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_api.remove_image(tag)
