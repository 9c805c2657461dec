"""Limits on what one caller can hold (issue 13, section 5).

Reproduced before: any caller could open event streams and followed logs without end (each
holds a socket, a task and an etcd watch or poll), a build or staging printing without end
filled the blob directory, a repository of any size was cloned whole, and the API's log proxy
waited forever on a node that sent headers and then nothing; the AMQP forwarder waited forever
on a broker that accepted and never spoke.

Real etcd and the real API app throughout; builds and staging run their controllers with real
git against :mod:`tests.gitserver`, the engine being the fake runtime (the limits are controller
logic: what is logged, what is cloned). The silent peers are raw asyncio servers.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from lastbackend import codec
from lastbackend.api import container_logs
from lastbackend.api.state import STATE
from lastbackend.controllers import amqp
from lastbackend.controllers.runner import ControllerRunner
from lastbackend.controllers.staging import StagingController
from lastbackend.lifecycle import descriptor
from lastbackend.model.platform import Container
from lastbackend.model.pods import Node
from lastbackend.sources import git
from lastbackend.sources.blobs import BlobStore
from lastbackend.store import keys
from tests.conftest import ClientFactory
from tests.fakeruntime import FakeRuntime
from tests.gitserver import GitServer, make_repo
from tests.integration.test_builds_api import BASE_IMAGE, Env
from tests.integration.test_droplets import ready_bits, set_droplet, stage
from tests.integration.test_packages import Recorder, make_app
from tests.support import RawEtcd, eventually, free_port

pytestmark = pytest.mark.etcd

Client = TestClient[Any, Any]
CUT = "-----> log cut at "


async def _true(value: bool) -> bool:
    return value


def error_of(text: str) -> dict[str, Any]:
    (error,) = json.loads(text)["errors"]
    return dict(error)


async def refused(resp: aiohttp.ClientResponse, setting: str) -> None:
    """A 429 in the API's error shape naming ``setting``, with ``Retry-After``."""
    text = await resp.text()
    assert resp.status == 429, text
    assert resp.content_type == "application/json"
    error = error_of(text)
    assert error["code"] == 10013
    assert error["title"] == "CF-RateLimitExceeded"
    assert setting in error["detail"]
    assert int(resp.headers["Retry-After"]) > 0


# event streams -----------------------------------------------------------------------------------


async def test_event_streams_past_api_max_streams_are_429_until_one_closes(
    make_client: ClientFactory,
) -> None:
    client = await make_client(max_streams=2)
    state = client.server.app[STATE]
    streams = [await client.get("/api/events") for _ in range(2)]
    for stream in streams:
        assert stream.status == 200
        assert b"event: hello" in await asyncio.wait_for(stream.content.readline(), 5) + (
            await asyncio.wait_for(stream.content.readline(), 5)
        )
    await refused(await client.get("/api/events"), "api.max_streams")
    assert state.streams.held == 2

    streams.pop().close()  # the client leaves: its slot is given back within a poll

    async def accepted() -> aiohttp.ClientResponse | None:
        resp = await client.get("/api/events")
        if resp.status == 200:
            return resp
        await refused(resp, "api.max_streams")
        return None

    streams.append(await eventually(accepted, within=5))
    await refused(await client.get("/api/events"), "api.max_streams")

    # shutdown still ends every stream, and gives their slots back
    await client.server.app.shutdown()
    for stream in streams:
        await asyncio.wait_for(stream.content.read(), 5)
    await eventually(lambda: _true(state.streams.held == 0), within=5)


# followed logs -----------------------------------------------------------------------------------


async def test_followed_logs_share_one_pool_of_api_max_log_follows(
    make_client: ClientFactory, tmp_path: Path, etcd: RawEtcd
) -> None:
    client = await make_client(data_dir=tmp_path, max_log_follows=2, max_streams=1)
    api = Recorder(client)
    pid, app = await make_app(api)
    package = await ready_bits(api, app)
    first, second, done = [(await stage(api, package))["guid"] for _ in range(3)]
    await set_droplet(etcd, pid, app, done, state="FAILED", error="boom")

    follows = [await client.get(f"/v3/droplets/{g}/logs?follow=true") for g in (first, second)]
    assert [f.status for f in follows] == [200, 200]
    for resp in (
        await client.get(f"/v3/droplets/{first}/logs?follow=true"),
        await client.get(f"/api/projects/{pid}/services/{app}/logs?follow=true"),
    ):
        await refused(resp, "api.max_log_follows")
    # what does not follow holds no slot: a plain read, a finished droplet's log, event streams
    assert (await client.get(f"/v3/droplets/{first}/logs")).status == 200
    assert (await client.get(f"/v3/droplets/{done}/logs?follow=true")).status == 200
    assert (await client.get(f"/api/projects/{pid}/services/{app}/logs")).status == 200
    events = await client.get("/api/events")
    assert events.status == 200
    events.close()

    follows[0].close()

    async def accepted() -> bool:
        resp = await client.get(f"/api/projects/{pid}/services/{app}/logs?follow=true")
        if resp.status == 429:
            return False
        assert resp.status == 200
        assert await asyncio.wait_for(resp.text(), 5) == ""  # no containers: ends at once
        return True

    await eventually(accepted, within=5)
    # a droplet that finishes ends its follower, and its slot is free again
    await set_droplet(etcd, pid, app, second, state="FAILED", error="boom")
    await asyncio.wait_for(follows[1].content.read(), 5)
    state = client.server.app[STATE]
    await eventually(lambda: _true(state.log_follows.held == 0), within=5)


# build and staging logs --------------------------------------------------------------------------


async def test_a_build_log_is_cut_at_builds_max_log_bytes_and_the_build_still_succeeds(
    etcd: RawEtcd, make_client: ClientFactory, tmp_path: Path
) -> None:
    env = Env(etcd, make_client, tmp_path)
    noisy = f"FROM {BASE_IMAGE}\n" + "".join(f"RUN echo step {n:04}\n" for n in range(600))
    (tmp_path / "git").mkdir(parents=True, exist_ok=True)
    make_repo(tmp_path / "git" / "acme", "noisy", {"Dockerfile": noisy})
    try:
        await env.start(build_max_log_bytes=4096)
        source = {"hub": "github", "owner": "acme", "repo": "noisy", "branch": "main"}
        await env.service(source=source)
        number = await env.build()
        assert (await env.ended(number))["status"] == "success"
        log = await env.logs(number)
        body, cut, tail = log.partition(CUT)
        assert cut, log[-300:]
        assert len(body.encode()) <= 4096
        assert tail.startswith(f"{len(body.encode())} bytes: builds.max_log_bytes is 4096")
        assert tail.endswith("later output is dropped\n")
        assert "Step 2/601" in body  # the output up to the cut is all there
        assert "Step 601/601" not in log  # and nothing after it
        assert "Build succeeded" not in log
        assert await env.logs(number) == log  # nothing was appended after the build ended
    finally:
        await env.stop()


class Staging:
    """The API, a git server and the staging controller on the fake engine."""

    def __init__(self, api: Recorder, etcd: RawEtcd, server: GitServer) -> None:
        self.api, self.etcd, self.server = api, etcd, server
        self.pid = self.app = ""
        self.runner: ControllerRunner | None = None

    async def start(self) -> None:
        state = self.api.state
        controller = StagingController(
            FakeRuntime(),
            state.secrets,
            BlobStore(state.settings.blob_dir),
            state.settings,
            descriptor.load(),
        )
        self.runner = ControllerRunner(controller, self.etcd, lease_ttl=2)
        self.runner.start()
        self.pid, self.app = await make_app(self.api)

    async def stage_repo(self, name: str) -> dict[str, Any]:
        """A git package of ``name`` staged to the end: the final droplet."""
        url = self.server.repo_url(name).replace("://", f"://{self.server.user}:SECRET-7@", 1)
        body = {"type": "git", "url": url, "relationships": {"app": {"guid": self.app}}}
        package = await self.api.call("POST", "/v3/packages", 201, json=body)
        lifecycle = {"type": "buildpack", "data": {"buildpack": None, "stack": None}}
        guid = (await stage(self.api, package["guid"], {"lifecycle": lifecycle}))["guid"]

        async def final() -> dict[str, Any] | None:
            droplet = await self.api.call("GET", f"/v3/droplets/{guid}")
            return droplet if droplet["state"] in ("STAGED", "FAILED") else None

        droplet: dict[str, Any] = await eventually(final, within=30)
        return droplet

    async def log(self, guid: str) -> str:
        return str(await self.api.call("GET", f"/v3/droplets/{guid}/logs"))

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.stop(grace=1)


@pytest.fixture
async def staging(
    make_client: ClientFactory, tmp_path: Path, etcd: RawEtcd, request: pytest.FixtureRequest
) -> AsyncIterator[Staging]:
    overrides = getattr(request, "param", {})
    client = await make_client(data_dir=tmp_path / "data", **overrides)
    async with GitServer(tmp_path / "repos", "ci", "SECRET-7") as server:
        world = Staging(Recorder(client), etcd, server)
        await world.start()
        yield world
        await world.stop()


# the fake engine runs no buildpack, so staging would wait for it until staging.timeout
@pytest.mark.parametrize(
    "staging", [{"staging_max_log_bytes": 2048, "staging_timeout": 3.0}], indirect=True
)
async def test_a_staging_log_is_cut_at_staging_max_log_bytes(staging: Staging) -> None:
    subject = "a commit subject that never ends " * 200  # logged whole by the clone step
    make_repo(staging.server.root, "chatty", {"index.html": "hi\n"}, message=subject)
    droplet = await staging.stage_repo("chatty")
    log = await staging.log(droplet["guid"])
    body, cut, tail = log.partition(CUT)
    assert cut, log
    assert "-----> Cloning" in body
    assert len(body.encode()) <= 2048
    assert tail.startswith(f"{len(body.encode())} bytes: staging.max_log_bytes is 2048")
    assert log.count("\n") == body.count("\n") + 1  # nothing after the cut line
    assert droplet["state"] == "FAILED"  # staging went on after the cut, to its end
    assert "took longer" not in log  # its last line was dropped from the log ...
    assert "took longer than 3s" in droplet["error"]  # ... the droplet still says why


# git checkouts -----------------------------------------------------------------------------------

BIG = 1 << 20
"""Bytes of incompressible content in the repository that is too large."""


@pytest.mark.parametrize("staging", [{"git_max_checkout_bytes": 256 << 10}], indirect=True)
async def test_a_git_package_over_git_max_checkout_bytes_fails_staging(staging: Staging) -> None:
    make_repo(staging.server.root, "big", {"blob.bin": os.urandom(BIG).hex()})
    droplet = await staging.stage_repo("big")
    assert droplet["state"] == "FAILED"
    assert "git.max_checkout_bytes" in droplet["error"]
    assert str(256 << 10) in droplet["error"]
    assert "git.max_checkout_bytes" in await staging.log(droplet["guid"])


async def test_a_build_over_git_max_checkout_bytes_fails_with_the_limit(
    etcd: RawEtcd, make_client: ClientFactory, tmp_path: Path
) -> None:
    env = Env(etcd, make_client, tmp_path)
    (tmp_path / "git").mkdir(parents=True, exist_ok=True)
    make_repo(
        tmp_path / "git" / "acme",
        "huge",
        {"Dockerfile": f"FROM {BASE_IMAGE}\n", "blob.bin": os.urandom(BIG).hex()},
    )
    try:
        await env.start(git_max_checkout_bytes=256 << 10)
        await env.service(
            source={"hub": "github", "owner": "acme", "repo": "huge", "branch": "main"}
        )
        number = await env.build()
        build = await env.ended(number)
        assert build["status"] == "failed"
        assert "git.max_checkout_bytes" in build["message"]
        assert env.runtime.builds == []  # nothing was built from it
        # a repository under the limit still builds
        await env.service("site")
        assert (await env.ended(await env.build("site"), "site"))["status"] == "success"
    finally:
        await env.stop()


# deadlines on outgoing requests ------------------------------------------------------------------


class Silent:
    """A raw TCP server that accepts and never answers, or (``headers``) sends the head of a
    streamed 200 response and then nothing."""

    def __init__(self, head: bytes = b"") -> None:
        self.head = head
        self.port = free_port()
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Silent:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)
        if self.head:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(self.head)
            await writer.drain()


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


async def test_the_log_proxy_gives_up_on_a_silent_node_within_its_deadlines(
    make_client: ClientFactory, etcd: RawEtcd, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = await make_client(node_token="node-token-for-the-silent-nodes")
    monkeypatch.setattr(container_logs, "READ_TIMEOUT", 1.0, raising=False)
    monkeypatch.setattr(container_logs, "OPEN_TIMEOUT", 1.0, raising=False)
    pid = (await (await api.post("/api/projects", json={"name": "demo"})).json())["id"]
    resp = await api.post(f"/api/projects/{pid}/services", json={"name": "web"})
    sid = (await resp.json())["id"]
    t = datetime.now(UTC)
    async with Silent() as mute, Silent(STREAM_HEAD) as stalled:
        for name, server, cid in (("mute", mute, "a" * 64), ("stalled", stalled, "b" * 64)):
            node = Node(name, name, 1024, 1, "27", t, address=f"http://127.0.0.1:{server.port}")
            await etcd.put(keys.node(name), codec.dumps(node))
            box = Container(id=cid, status="running", created=t, updated=t, node=name)
            await etcd.put(keys.container(pid, sid, cid), codec.dumps(box))
        started = time.monotonic()
        resp = await api.get(f"/api/projects/{pid}/services/{sid}/logs")
        text = await asyncio.wait_for(resp.text(), 10)
        elapsed = time.monotonic() - started
    assert resp.status == 200, text
    assert f"[{'a' * 12}] -- logs unavailable: node mute" in text
    assert f"[{'b' * 12}] -- logs interrupted" in text
    assert elapsed < 5
    assert mute.accepted == stalled.accepted == 1


async def test_the_amqp_forwarder_drops_a_silent_broker_and_reconnects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(amqp, "FORWARD_IDLE", 1.0, raising=False)
    async with Silent() as broker:
        hub = amqp.AmqpHub(None, f"amqp://127.0.0.1:{broker.port}")
        await hub.start()
        try:
            await eventually(lambda: _true(broker.accepted >= 2), within=8)
        finally:
            await hub.stop()


async def test_a_clone_from_a_server_that_never_answers_fails_by_the_low_speed_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(git, "LOW_SPEED_SECONDS", 1, raising=False)
    async with Silent() as server:
        started = time.monotonic()
        with pytest.raises(git.GitError, match="too slow"):
            async with asyncio.timeout(10):  # git.CLONE_TIMEOUT is minutes
                await git.clone(f"http://127.0.0.1:{server.port}/x.git", tmp_path / "x")
    assert time.monotonic() - started < 10


async def test_a_clone_past_its_deadline_is_killed_with_its_helpers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """git's ``git-remote-http`` helper, blocked on the silent server, holds git's pipes: killing
    git alone left the caller waiting for them forever."""
    monkeypatch.setattr(git, "LOW_SPEED_SECONDS", 600, raising=False)  # only the deadline acts
    async with Silent() as server:
        started = time.monotonic()
        with pytest.raises(git.GitError, match="took longer than 2s"):
            await git.clone(f"http://127.0.0.1:{server.port}/x.git", tmp_path / "x", time_limit=2)
    assert time.monotonic() - started < 6
