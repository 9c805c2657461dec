"""``lastbackend push`` as a user runs it: the installed script, against a real daemon with its
router, Caddy and Docker, on the busybox stack (fast to stage).

What the user sees: the printed URL answers through the router; a second push serves the new
content with no failed request meanwhile; a failed staging exits 1 with the staging error; a
manifest pushes two apps; bad input (an unknown manifest key, a missing directory, a bad token)
is one clear line and exit 1.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import attrs
import pytest

from lastbackend import codec
from lastbackend.model.routers import Router as Announced
from lastbackend.store import keys
from lastbackend.store.embedded import EmbeddedEtcd
from tests.conftest import ClientFactory
from tests.e2e.conftest import Registry
from tests.e2e.harness import Harness, Proc, eventually, push_served_image
from tests.e2e.test_routing import routed_daemon
from tests.support import CLI, RawEtcd, run_cli


async def lb(
    *argv: str, url: str, home: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[int, str, str]:
    """The installed script in a subprocess, pointed at ``url`` by ``LB_URL``."""
    return await run_cli(*argv, home=home, env={"LB_URL": url, **(env or {})}, cwd=cwd)


def site(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "index.html").write_text(text)
    return root


PROCFILE = (
    'web: mkdir -p /tmp/www && echo "hello from $GREETING" > /tmp/www/index.html'
    " && trap 'exit 0' TERM; httpd -f -p $PORT -h /tmp/www & wait\n"
)


async def get(router: int, url: str) -> tuple[int, str]:
    """``url`` fetched through the router on 127.0.0.1 (its host in the Host header)."""
    parts = urlsplit(url)
    timeout = aiohttp.ClientTimeout(total=5)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.get(
            f"http://127.0.0.1:{router}{parts.path or '/'}", headers={"Host": parts.netloc}
        ) as resp,
    ):
        return resp.status, await resp.text()


def http_url(stdout: str) -> str:
    urls = [line for line in stdout.splitlines() if line.startswith("http://")]
    assert urls, stdout
    return urls[0]


@pytest.fixture
async def routed(
    harness: Harness, etcd: RawEtcd, etcd_server: EmbeddedEtcd, busybox_stack: str
) -> tuple[Proc, int]:
    """A daemon with its router on a wiped tree (no election held by an earlier test's)."""
    daemon, port = routed_daemon(harness, etcd_server.endpoint)
    await harness.ready(daemon)
    return daemon, port


async def load_loop(router: int, url: str, results: list[tuple[int, str]], stop: Any) -> None:
    while not stop.is_set() and len(results) < 20000:
        try:
            results.append(await get(router, url))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            results.append((0, str(exc)))
        await asyncio.sleep(0.01)


@pytest.mark.docker
@pytest.mark.etcd
async def test_push_serves_the_site_and_a_second_push_drops_no_request(
    harness: Harness, routed: tuple[Proc, int], tmp_path: Path
) -> None:
    daemon, router = routed
    directory = site(tmp_path / "site", "<h1>version one</h1>\n")
    code, out, err = await lb(
        "push", "-p", str(directory), "--project", "demo", url=daemon.url, home=tmp_path
    )
    assert code == 0, err
    assert "Staging site" in err
    assert "static" in err  # the staging log, streamed live
    url = http_url(out)
    assert urlsplit(url).hostname == "site.demo.lb.localhost"
    assert await get(router, url) == (200, "<h1>version one</h1>\n")

    (directory / "index.html").write_text("<h1>version two</h1>\n")
    results: list[tuple[int, str]] = []
    stop = asyncio.Event()
    loop = asyncio.create_task(load_loop(router, url, results, stop))
    try:
        code, out, err = await lb(
            "push", "site", "-p", str(directory), "--project", "demo", url=daemon.url,
            home=tmp_path,
        )  # fmt: skip
        assert code == 0, err
        assert "Rolling site" in err
        await eventually(
            lambda: _serves(router, url, "<h1>version two</h1>\n"), 20, "the new content"
        )
    finally:
        stop.set()
        await loop
    failed = [r for r in results if r[0] != 200]
    assert len(results) > 50, "the load loop ran"
    assert failed == [], f"{len(failed)} of {len(results)} failed: {failed[:3]}"
    assert {body for _, body in results} <= {"<h1>version one</h1>\n", "<h1>version two</h1>\n"}


async def _serves(router: int, url: str, text: str) -> bool:
    try:
        return await get(router, url) == (200, text)
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False


@pytest.mark.docker
@pytest.mark.etcd
async def test_a_manifest_pushes_a_site_and_a_procfile_app(
    harness: Harness, routed: tuple[Proc, int], tmp_path: Path
) -> None:
    daemon, router = routed
    root = tmp_path / "repo"
    site(root / "www", "<p>the site</p>\n")
    (root / "www" / "secret.txt").write_text("left out by .lbignore\n")
    (root / "www" / ".lbignore").write_text("secret.txt\n")
    (root / "worker").mkdir()
    (root / "worker" / "Procfile").write_text(PROCFILE)
    (root / "lastbackend.yml").write_text(
        "applications:\n"
        "- name: www\n  path: www\n  buildpacks: [static]\n  routes: [{route: www.cli.test}]\n"
        "- name: api\n  path: worker\n  instances: 2\n  memory: 64M\n"
        "  env: {GREETING: manifest}\n"
    )
    code, out, err = await lb("push", "--project", "two", url=daemon.url, home=tmp_path, cwd=root)
    assert code == 0, err
    urls = [line for line in out.splitlines() if line.startswith("http://")]
    www = next(u for u in urls if u.startswith("http://www."))
    api = next(u for u in urls if u.startswith("http://api."))
    assert await get(router, www) == (200, "<p>the site</p>\n")
    assert (await get(router, www + "secret.txt"))[0] == 404
    assert await get(router, "http://www.cli.test/") == (200, "<p>the site</p>\n")  # its route
    assert await get(router, api) == (200, "hello from manifest\n")
    _, service = await harness.call(daemon, "GET", "/api/projects/two/services/api", expect=200)
    assert service["config"]["replicas"] == 2
    assert service["config"]["memory"] == 64
    # a first start returns once every instance is ready: both are, and both are routed
    _, containers = await harness.call(
        daemon, "GET", "/api/projects/two/services/api/containers", expect=200
    )
    assert sum(1 for c in containers["resources"] if c["ready"]) == 2


@pytest.mark.docker
@pytest.mark.etcd
async def test_a_failed_staging_exits_1_with_the_staging_error(
    routed: tuple[Proc, int], tmp_path: Path
) -> None:
    daemon, _ = routed
    directory = tmp_path / "nothing"
    directory.mkdir()
    (directory / "notes.txt").write_text("no index.html, no Procfile\n")
    code, out, err = await lb(
        "push", "-p", str(directory), "--project", "bad", url=daemon.url, home=tmp_path
    )
    assert code == 1
    assert "lastbackend: staging failed: no buildpack detected" in err
    assert out == ""


# bad input: one line that says what to fix, exit 1, nothing started


async def test_an_unknown_manifest_key_is_named(tmp_path: Path) -> None:
    site(tmp_path / "app", "x")
    (tmp_path / "app" / "lastbackend.yml").write_text(
        "applications:\n- name: app\n  disk_quota: 1G\n  instanses: 2\n"
    )
    code, _, err = await lb(
        "push", "-p", str(tmp_path / "app"), url="http://127.0.0.1:9", home=tmp_path
    )
    assert code == 1
    assert "unknown keys disk_quota, instanses" in err
    assert "Traceback" not in err


async def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    code, _, err = await lb("push", "-p", str(missing), url="http://127.0.0.1:9", home=tmp_path)
    assert code == 1
    assert f"path: {missing} is not a directory" in err


@pytest.mark.etcd
async def test_a_bad_token_is_refused_with_a_clear_message(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    api = await make_client(admin_tokens=("the-right-token-0123456789",))
    url = str(api.make_url("")).rstrip("/")
    code, _, err = await lb(
        "push", "-p", str(site(tmp_path / "s", "x")), url=url, home=tmp_path,
        env={"LB_TOKEN": "wrong"},
    )  # fmt: skip
    assert code == 1
    assert "refused the token (401)" in err
    assert "Traceback" not in err


@pytest.mark.docker
@pytest.mark.etcd
async def test_push_of_a_private_docker_image_takes_the_password_from_the_environment(
    harness: Harness, routed: tuple[Proc, int], registry: Registry, base_image: str, tmp_path: Path
) -> None:
    daemon, router = routed
    h = harness
    served = push_served_image(h, registry, base_image, "cli/served")
    code, out, err = await lb(
        "push", "img", "--docker-image", served, "--docker-username", registry.username,
        "--project", "dock", url=daemon.url, home=tmp_path,
        env={"LB_DOCKER_PASSWORD": registry.password},
    )  # fmt: skip
    assert code == 0, err
    status, body = await get(router, http_url(out))
    assert status == 200
    assert body.startswith("hello from lastbackend")
    assert registry.password not in out + err
    # no password in the environment and no terminal to prompt on: refused before anything runs
    code, _, err = await lb(
        "push", "img2", "--docker-image", served, "--docker-username", registry.username,
        "--project", "dock", url=daemon.url, home=tmp_path,
    )  # fmt: skip
    assert code == 1
    assert "LB_DOCKER_PASSWORD" in err


@pytest.mark.docker
@pytest.mark.etcd
async def test_push_returns_only_once_every_live_router_serves_the_app(
    harness: Harness,
    routed: tuple[Proc, int],
    registry: Registry,
    base_image: str,
    etcd: RawEtcd,
    tmp_path: Path,
) -> None:
    """A URL printed is a URL that answers: with a second router that has not loaded the app
    (announced, its config older than the app), the push keeps waiting after the first serves."""
    daemon, router = routed
    served = push_served_image(harness, registry, base_image, "cli/waits")
    ghost = Announced(name="ghost-1", http="127.0.0.1:1", https="127.0.0.1:2", revision=0, routes=0)
    await etcd.put(keys.router(ghost.name), codec.dumps(ghost))
    argv = ("push", "late", "--docker-image", served, "--docker-username", registry.username)
    env = {"LB_DOCKER_PASSWORD": registry.password}
    pushing = asyncio.create_task(
        lb(*argv, "--project", "wait", url=daemon.url, home=tmp_path, env=env)
    )
    url = "http://late.wait.lb.localhost/"
    try:
        await eventually(lambda: _answers(router, url), 120, "the real router serving the app")
        await asyncio.sleep(1.5)  # ten polls of the push
        assert not pushing.done(), pushing.result()
        await etcd.put(keys.router(ghost.name), codec.dumps(attrs.evolve(ghost, revision=2**62)))
        code, out, err = await asyncio.wait_for(pushing, 30)
    finally:
        await etcd.delete_prefix(keys.router(ghost.name))
    assert code == 0, err
    assert urlsplit(http_url(out)).hostname == "late.wait.lb.localhost"


async def _answers(router: int, url: str) -> bool:
    try:
        status, body = await get(router, url)
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False
    return status == 200 and body.startswith("hello from lastbackend")


@pytest.mark.docker
@pytest.mark.etcd
async def test_ctrl_c_while_staging_deletes_the_droplet_and_keeps_the_running_version(
    harness: Harness, routed: tuple[Proc, int], tmp_path: Path
) -> None:
    daemon, router = routed
    directory = site(tmp_path / "site", "<h1>kept</h1>\n")
    code, out, err = await lb(
        "push", "-p", str(directory), "--project", "intr", url=daemon.url, home=tmp_path
    )
    assert code == 0, err
    url = http_url(out)
    (directory / "index.html").write_text("<h1>never served</h1>\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LB_", "XDG_"))}
    clean.update(XDG_CONFIG_HOME=str(tmp_path), LB_URL=daemon.url, NO_COLOR="1")
    proc = await asyncio.create_subprocess_exec(
        str(CLI), "push", "-p", str(directory), "--project", "intr",
        env=clean, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    seen = b""
    while b"Staging site" not in seen:
        line = await asyncio.wait_for(proc.stderr.readline(), 60)
        assert line, seen
        seen += line
    proc.send_signal(signal.SIGINT)
    _, rest = await asyncio.wait_for(proc.communicate(), 60)
    err = (seen + rest).decode()
    assert proc.returncode == 130, err
    assert "staging interrupted: the droplet was deleted" in err
    _, apps = await harness.call(daemon, "GET", "/v3/apps?names=site", expect=200)
    guid = apps["resources"][0]["guid"]
    _, droplets = await harness.call(daemon, "GET", f"/v3/apps/{guid}/droplets", expect=200)
    assert len(droplets["resources"]) == 1  # the first push's; the interrupted one is gone
    assert await get(router, url) == (200, "<h1>kept</h1>\n")


@pytest.mark.docker
@pytest.mark.etcd
async def test_an_unchanged_push_skips_staging_unless_restage(
    harness: Harness, routed: tuple[Proc, int], tmp_path: Path
) -> None:
    daemon, router = routed
    directory = site(tmp_path / "same", "<p>same</p>\n")
    args = ("push", "-p", str(directory), "--project", "same")
    code, out, err = await lb(*args, url=daemon.url, home=tmp_path)
    assert code == 0, err
    os.utime(directory / "index.html", (1, 1))  # touched, not changed: the same sha1
    code, out, err = await lb(*args, url=daemon.url, home=tmp_path)
    assert code == 0, err
    assert "staging skipped" in err
    assert "Staging" not in err
    assert await get(router, http_url(out)) == (200, "<p>same</p>\n")
    _, apps = await harness.call(daemon, "GET", "/v3/apps?names=same", expect=200)
    guid = apps["resources"][0]["guid"]
    _, droplets = await harness.call(daemon, "GET", f"/v3/apps/{guid}/droplets", expect=200)
    assert len(droplets["resources"]) == 1
    code, out, err = await lb(*args, "--restage", url=daemon.url, home=tmp_path)
    assert code == 0, err
    assert "Staging same" in err
    _, droplets = await harness.call(daemon, "GET", f"/v3/apps/{guid}/droplets", expect=200)
    assert len(droplets["resources"]) == 2
