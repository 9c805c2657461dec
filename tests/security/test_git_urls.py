"""Credentials inside a git URL stay secret (issue 13, section 3).

``https://user:password@host/repo.git`` as a git package's URL was stored, shown and streamed by
``/api/events`` as given. Now the user and password become the package's credentials (encrypted
in etcd, ``***`` in every response and event) and the URL is stored without them; a URL that
still has some (stored before) is shown masked and cloned with them as a header, never on git's
command line; git runs without the process's ``LB_*`` variables.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from lastbackend import codec
from lastbackend.api.state import STATE
from lastbackend.config import Settings
from lastbackend.controllers.staging import StagingController
from lastbackend.lifecycle import descriptor
from lastbackend.model.apps import GitPackage, GitUrl, Package
from lastbackend.model.common import now
from lastbackend.secrets import Secrets, generate_key
from lastbackend.sources import git
from lastbackend.sources.blobs import BlobStore
from lastbackend.store import keys
from tests.conftest import ClientFactory, dump
from tests.fakeruntime import FakeRuntime
from tests.gitserver import GitServer, make_repo
from tests.support import RawEtcd

Client = TestClient[Any, Any]
SECRET = "pa55-in-the-url-7c1d"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[GitServer]:
    async with GitServer(tmp_path / "repos", "ci", SECRET) as srv:
        yield srv


def with_userinfo(url: str, userinfo: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{userinfo}@{rest}"


# the API ---------------------------------------------------------------------------------------


class Api:
    def __init__(self, client: Client, etcd: RawEtcd) -> None:
        self.client = client
        self.etcd = etcd
        self.texts: list[str] = []
        self.pid = self.app = ""

    async def call(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        resp = await self.client.request(method, path, json=body)
        text = await resp.text()
        self.texts.append(text)
        assert resp.status == expect, text
        return json.loads(text)

    async def git_package(self, url: str, expect: int = 201, **extra: Any) -> Any:
        body = {"type": "git", "url": url, "relationships": {"app": {"guid": self.app}}, **extra}
        return await self.call("POST", "/v3/packages", body, expect)

    async def stored(self, guid: str) -> Package:
        kv = await self.etcd.get(keys.package(self.pid, self.app, guid))
        assert kv is not None
        return codec.loads(kv.value, Package)  # type: ignore[arg-type, no-any-return]


@pytest.fixture
async def api(make_client: ClientFactory, tmp_path: Path, etcd: RawEtcd) -> Api:
    world = Api(await make_client(data_dir=tmp_path), etcd)
    world.pid = (await world.call("POST", "/api/projects", {"name": "g"}, 201))["id"]
    service = await world.call("POST", f"/api/projects/{world.pid}/services", {"name": "w"}, 201)
    world.app = service["id"]
    return world


@pytest.mark.etcd
async def test_credentials_in_the_url_become_the_packages_credentials(api: Api) -> None:
    events = await api.client.get("/api/events", params={"prefix": "projects/"})
    assert events.status == 200
    created = await api.git_package(f"https://ci:{SECRET}@git.example.com/team/site.git:main")
    assert created["url"] == "https://git.example.com/team/site.git:main"
    assert created["credentials"] == {"user": "ci", "password": "***", "api_key": ""}
    guid = created["guid"]
    assert (await api.call("GET", f"/v3/packages/{guid}"))["url"] == created["url"]
    listed = await api.call("GET", f"/v3/apps/{api.app}/packages")
    assert [p["url"] for p in listed["resources"]] == [created["url"]]
    # At rest: the URL without them, the password as ciphertext that opens to it.
    stored = await api.stored(guid)
    assert isinstance(stored, GitPackage)
    assert stored.url == "https://git.example.com/team/site.git:main"
    assert SECRET not in json.dumps({k: v.decode() for k, v in (await dump(api.etcd)).items()})
    repo = api.client.server.app[STATE].packages
    clear = repo.clear_credentials(stored)
    assert (clear.user, clear.password) == ("ci", SECRET)
    # What /api/events streams of it.
    streamed = b""
    async with asyncio.timeout(10):
        while b"/packages/" not in streamed or not streamed.endswith(b"\n\n"):
            streamed += await events.content.readline()
    events.close()
    assert b"git.example.com" in streamed
    assert SECRET.encode() not in streamed
    assert b"ci:" not in streamed
    assert not [text for text in api.texts if SECRET in text]


@pytest.mark.etcd
async def test_a_token_alone_and_percent_escapes(api: Api) -> None:
    created = await api.git_package(f"https://{SECRET}@github.com/o/r.git")
    assert created["url"] == "https://github.com/o/r.git"
    assert created["credentials"] == {"user": "", "password": "***", "api_key": ""}
    escaped = await api.git_package("https://ci:p%40ss%3Aword@host.example/r.git")
    stored = await api.stored(escaped["guid"])
    clear = api.client.server.app[STATE].packages.clear_credentials(stored)
    assert clear.password == "p@ss:word"
    assert not [text for text in api.texts if SECRET in text]


@pytest.mark.etcd
async def test_credentials_in_the_url_and_beside_it_is_a_422_writing_nothing(api: Api) -> None:
    before = await dump(api.etcd)
    answer = await api.git_package(
        f"https://ci:{SECRET}@host.example/r.git",
        expect=422,
        credentials={"user": "other", "password": "x"},
    )
    assert answer["errors"][0]["detail"].startswith("url: holds credentials")
    assert SECRET not in json.dumps(answer)
    assert await dump(api.etcd) == before


@pytest.mark.etcd
async def test_ssh_and_scp_urls_keep_their_login_name(api: Api) -> None:
    for url in ("ssh://git@host.example/r.git", "git@github.com:o/r.git"):
        created = await api.git_package(url)
        assert created["url"] == url
        assert created["credentials"] is None


@pytest.mark.etcd
async def test_a_url_stored_with_credentials_is_shown_masked(api: Api) -> None:
    created = await api.git_package("https://host.example/r.git")
    key = keys.package(api.pid, api.app, created["guid"])
    raw = json.loads((await api.etcd.get(key)).value)  # type: ignore[union-attr]
    raw["url"] = f"https://ci:{SECRET}@host.example/r.git"
    events = await api.client.get("/api/events", params={"prefix": "projects/"})
    assert events.status == 200
    await api.etcd.put(key, json.dumps(raw))
    shown = await api.call("GET", f"/v3/packages/{created['guid']}")
    assert shown["url"] == "https://***@host.example/r.git"
    streamed = b""
    async with asyncio.timeout(10):
        while SECRET.encode() not in streamed and b"***@host.example" not in streamed:
            streamed += await events.content.readline()
    events.close()
    assert SECRET.encode() not in streamed


# cloning ---------------------------------------------------------------------------------------


@pytest.fixture
def recorded_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``git`` on PATH is a wrapper that records its arguments and environment, then runs git."""
    real = next(
        Path(d) / "git" for d in os.environ["PATH"].split(os.pathsep) if (Path(d) / "git").is_file()
    )
    log = tmp_path / "git-calls"
    wrapper = tmp_path / "bin" / "git"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\nenv >> {log}\nexec {real} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("LB_AUTH_ADMIN_TOKEN", "admin-token-never-for-git")
    monkeypatch.setenv("LB_SECRETS_KEY", "secrets-key-never-for-git")
    return log


def forget(log: Path) -> None:
    """Drop the calls so far (the test's own set-up runs git too)."""
    log.write_text("")


def recorded(log: Path) -> str:
    return log.read_text()


async def test_a_url_with_credentials_clones_without_them_on_the_command_line(
    server: GitServer, tmp_path: Path, recorded_git: Path
) -> None:
    sha = make_repo(server.root, "site", {"index.html": "hi"})
    forget(recorded_git)
    url = with_userinfo(server.repo_url("site"), f"ci:{SECRET}")
    checkout = await git.clone(url, tmp_path / "co")
    assert checkout.commit == sha
    calls = recorded(recorded_git)
    assert "clone" in calls
    assert SECRET not in calls.split("GIT_CONFIG_VALUE_0=")[0], "not in git's arguments"
    assert server.repo_url("site") in calls


async def test_git_does_not_inherit_lb_variables(
    server: GitServer, tmp_path: Path, recorded_git: Path
) -> None:
    make_repo(server.root, "site", {"index.html": "hi"})
    forget(recorded_git)
    await git.clone(server.repo_url("site"), tmp_path / "co", auth=git.GitAuth("ci", SECRET))
    calls = recorded(recorded_git)
    assert "GIT_TERMINAL_PROMPT=0" in calls
    assert "LB_" not in calls
    assert "admin-token-never-for-git" not in calls


async def test_a_refused_clone_never_shows_the_urls_credentials(
    server: GitServer, tmp_path: Path
) -> None:
    make_repo(server.root, "site", {"index.html": "hi"})
    wrong = "wrong-" + SECRET
    with pytest.raises(git.GitError) as caught:
        await git.clone(with_userinfo(server.repo_url("missing"), f"ci:{wrong}"), tmp_path / "a")
    assert wrong not in str(caught.value)
    with pytest.raises(git.GitError) as caught:
        await git.clone(with_userinfo(server.repo_url("site"), f"ci:{wrong}"), tmp_path / "b")
    assert wrong not in str(caught.value)


@pytest.mark.etcd
async def test_the_staging_log_masks_a_stored_urls_credentials(
    server: GitServer,
    tmp_path: Path,
    etcd: RawEtcd,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A package stored before credentials were split out clones with them; its log shows none."""
    sha = make_repo(server.root, "site", {"index.html": "hi"})
    blobs, secrets = BlobStore(tmp_path / "blobs"), Secrets(generate_key())
    ctl = StagingController(FakeRuntime(), secrets, blobs, settings, descriptor.load())
    monkeypatch.setattr(StagingController, "store", etcd)
    stamp = now()
    url = with_userinfo(server.repo_url("site"), f"ci:{SECRET}")
    package = GitPackage(created=stamp, updated=stamp, url=GitUrl(url))
    lines: list[str] = []
    _, commit = await ctl._clone(package, lines.append)
    assert commit == sha
    assert lines[0].startswith("-----> Cloning http://***@")
    assert not [line for line in lines if SECRET in line]


def test_mask_url_masks_every_userinfo_in_a_line() -> None:
    line = f"-----> Cloning https://ci:{SECRET}@h/r.git (main), mirror http://tok@m:8080/r.git"
    assert git.mask_url(line) == (
        "-----> Cloning https://***@h/r.git (main), mirror http://***@m:8080/r.git"
    )
    assert git.mask_url("git@github.com:o/r.git") == "git@github.com:o/r.git"
    assert git.mask_url("ssh://git@h/r.git") == "ssh://git@h/r.git"
    assert git.mask_url("ssh://git:pw@h/r.git") == "ssh://***@h/r.git"
    assert git.mask_url("https://h/a@b") == "https://h/a@b"
