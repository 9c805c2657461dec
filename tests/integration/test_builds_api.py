"""Builds through the API and the builds controller: real etcd, real git server, fake engine.

The API, the vendor that resolves the source, ``git clone`` from a smart-HTTP server that demands
the vendor's token, the build-tag family and the controller are all real; only the container
engine is :class:`~tests.fakeruntime.FakeRuntime`, whose ``build_gate`` holds a build
in ``building`` for as long as a test needs (``tests/e2e/test_builds.py`` does the same on a real
Docker engine and registry).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from lastbackend import codec
from lastbackend.api.state import STATE
from lastbackend.controllers.builds import INTERRUPTED, BuildsController
from lastbackend.controllers.leader import Fenced
from lastbackend.controllers.runner import ControllerRunner
from lastbackend.model.common import now
from lastbackend.model.platform import Build
from lastbackend.runtime.base import RegistryAuth
from lastbackend.sources.blobs import BlobStore
from lastbackend.store import keys
from lastbackend.store.repos import Repos
from tests.conftest import ClientFactory, dump
from tests.fakeruntime import FakeRuntime
from tests.gitserver import GitServer, commit, make_repo
from tests.support import RawEtcd, eventually

pytestmark = pytest.mark.etcd

Client = TestClient[Any, Any]
BASE_IMAGE = "lastbackend-test/busybox:1"
REGISTRY = "registry.local:5000"
PUSHER = RegistryAuth("lb-builder", "registry-Secret-9", REGISTRY)
TOKEN = "ghp_0123456789abcdef0123456789abcdef0123"
USER = "ada"
DOCKERFILE = (
    f"FROM {BASE_IMAGE}\n"
    "COPY index.html /www/index.html\n"
    'CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]\n'
)
SOURCE = {"hub": "github", "owner": "acme", "repo": "site", "branch": "main"}


class Env:
    """The API, the git server with ``acme/site``, a connected vendor and the controller."""

    def __init__(self, etcd: RawEtcd, make_client: ClientFactory, tmp: Path) -> None:
        self.etcd = etcd
        self.make_client = make_client
        self.tmp = tmp
        self.git = GitServer(tmp / "git", USER, TOKEN)
        self.sha = make_repo(
            tmp / "git" / "acme", "site", {"Dockerfile": DOCKERFILE, "index.html": "v1\n"}
        )
        self.runtime = FakeRuntime(images=[BASE_IMAGE])
        self.runtime.require_auth(PUSHER)
        self.client: Client | None = None
        self.runner: ControllerRunner | None = None

    async def start(self, **settings: Any) -> None:
        await self.git.start()
        settings.setdefault("platform_registry", REGISTRY)
        self.client = await self.make_client(data_dir=self.tmp / "data", **settings)
        await self.call("PUT", "/api/vendors/github", 201, json=self.vendor())
        account = {"host": REGISTRY, "username": PUSHER.username, "password": PUSHER.password}
        await self.call("POST", "/api/registries", 201, json=account)
        await self.call("POST", "/api/projects", 201, json={"name": "demo"})
        self.start_controller()

    def vendor(self, token: str = TOKEN) -> dict[str, Any]:
        host = f"127.0.0.1:{self.git.port}"
        return {"host": host, "scheme": "http", "token": token, "username": USER}

    def start_controller(self) -> None:
        state = self.app_state
        controller = BuildsController(
            self.runtime,
            state.secrets,
            BlobStore(state.settings.blob_dir),
            state.settings,
        )
        self.runner = ControllerRunner(controller, self.etcd, lease_ttl=2)
        self.runner.start()

    async def stop_controller(self) -> None:
        if self.runner is not None:
            await self.runner.stop(grace=1)
            self.runner = None

    async def stop(self) -> None:
        await self.stop_controller()
        await self.git.stop()

    @property
    def app_state(self) -> Any:
        assert self.client is not None
        return self.client.server.app[STATE]

    async def call(self, method: str, path: str, status: int | None = None, **kwargs: Any) -> Any:
        assert self.client is not None
        resp = await self.client.request(method, path, **kwargs)
        text = await resp.text()
        if status is not None:
            assert resp.status == status, f"{method} {path} -> {resp.status} {text}"
        assert TOKEN not in text
        assert PUSHER.password not in text
        return json.loads(text) if text and resp.content_type == "application/json" else text

    async def project(self) -> str:
        return str((await self.call("GET", "/api/projects/demo", 200))["id"])

    async def service(self, name: str = "web", source: dict[str, Any] | None = SOURCE) -> str:
        body: dict[str, Any] = {"name": name, "config": {"replicas": 1, "memory": 32}}
        if source is not None:
            body["source"] = source
        created = await self.call("POST", "/api/projects/demo/services", 201, json=body)
        return str(created["id"])

    def builds(self, service: str = "web") -> str:
        return f"/api/projects/demo/services/{service}/builds"

    async def build(self, service: str = "web") -> int:
        created = await self.call("POST", self.builds(service), 201)
        assert created["status"] == "queued"
        return int(created["number"])

    async def status(self, number: int, service: str = "web") -> dict[str, Any]:
        return dict(await self.call("GET", f"{self.builds(service)}/{number}", 200))

    async def ended(self, number: int, service: str = "web", within: float = 20) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            build = await self.status(number, service)
            return build if build["status"] in ("success", "failed", "canceled") else None

        result: dict[str, Any] = await eventually(probe, within)
        return result

    async def reaches(self, number: int, status: str, service: str = "web") -> None:
        async def probe() -> bool:
            return (await self.status(number, service))["status"] == status

        await eventually(probe, 20)

    async def logs(self, number: int, service: str = "web") -> str:
        return str(await self.call("GET", f"{self.builds(service)}/{number}/logs", 200))


@pytest.fixture
async def env(etcd: RawEtcd, make_client: ClientFactory, tmp_path: Path) -> AsyncIterator[Env]:
    environment = Env(etcd, make_client, tmp_path)
    yield environment
    await environment.stop()


# the happy path -----------------------------------------------------------------------------------


async def test_a_build_clones_builds_pushes_tags_and_points_the_service_at_it(env: Env) -> None:
    await env.start()
    sid = await env.service()
    number = await env.build()
    assert number == 1
    build = await env.ended(number)
    assert build["status"] == "success", await env.logs(number)
    assert build["commit"] == env.sha
    assert build["commitMessage"] == "first commit of site"
    assert build["committer"] == "Ada"
    assert build["message"] == ""

    ref = f"{REGISTRY}/demo/web:1"
    assert env.runtime.builds == [ref]
    assert env.runtime.pushes == [(ref, PUSHER)]
    assert env.runtime.image_files(ref)["/www/index.html"] == b"v1\n"
    info = await env.runtime.inspect_image(ref)
    assert info is not None
    assert info.cmd == ("httpd", "-f", "-p", "8080", "-h", "/www")
    assert info.labels["io.lastbackend.build"] == f"{sid}-1"
    image = await env.call("GET", "/api/projects/demo/services/web/image", 200)
    assert image == {"image": ref}

    log = await env.logs(number)
    for line in ("Cloning http://127.0.0.1:", "Step 2/3 : COPY", f"Pushing {ref}", "succeeded"):
        assert line in log, log
    assert TOKEN not in log

    tag = await env.call("GET", "/api/repos/acme.site/branches/main/tags/untested", 200)
    assert tag["build_id"] == "1"
    assert tag["commit_id"] == env.sha
    assert tag["build_url"] == f"/api/projects/{(await env.project())}/services/{sid}/builds/1"
    [(artifact_id, artifact)] = tag["artifacts"].items()
    assert artifact == {
        "type": "container",
        "registry_url": REGISTRY,
        "repository": "demo/web",
        "image_id": info.id,
    }
    assert artifact_id == info.id


async def test_a_new_commit_is_built_as_the_next_number(env: Env) -> None:
    await env.start()
    await env.service()
    assert (await env.ended(await env.build()))["status"] == "success"
    sha = commit(env.tmp / "git" / "acme", "site", {"index.html": "v2\n"}, "second page")
    second = await env.build()
    assert second == 2
    build = await env.ended(second)
    assert build["status"] == "success"
    assert (build["commit"], build["commitMessage"]) == (sha, "second page")
    assert env.runtime.image_files(f"{REGISTRY}/demo/web:2")["/www/index.html"] == b"v2\n"
    image = await env.call("GET", "/api/projects/demo/services/web/image", 200)
    assert image == {"image": f"{REGISTRY}/demo/web:2"}
    listed = await env.call("GET", env.builds(), 200)
    assert [b["number"] for b in listed["resources"]] == [1, 2]


async def test_without_a_platform_registry_the_image_stays_local(env: Env) -> None:
    await env.start(platform_registry="")
    await env.service()
    build = await env.ended(await env.build())
    assert build["status"] == "success"
    assert env.runtime.pushes == []
    image = await env.call("GET", "/api/projects/demo/services/web/image", 200)
    assert image == {"image": "lastbackend-builds/demo/web:1"}
    assert "Not pushed" in await env.logs(1)


async def test_an_image_is_built_and_pushed_to_its_name(env: Env) -> None:
    await env.start()
    body = {"name": f"{REGISTRY}/acme/site", "source": SOURCE}
    created = await env.call("POST", "/api/images", 201, json=body)
    iid = created["id"]
    started = await env.call("POST", f"/api/images/{iid}/builds", 201)
    assert started["number"] == 1

    async def done() -> dict[str, Any] | None:
        build = await env.call("GET", f"/api/images/{iid}/builds/1", 200)
        return build if build["status"] in ("success", "failed") else None

    build = await eventually(done, 20)
    assert build["status"] == "success", await env.call("GET", f"/api/images/{iid}/builds/1/logs")
    assert env.runtime.pushes == [(f"{REGISTRY}/acme/site:1", PUSHER)]
    listed = await env.call("GET", f"/api/images/{iid}/builds", 200)
    assert [b["number"] for b in listed["resources"]] == [1]
    assert listed["resources"][0]["commit"] == env.sha
    tag = await env.call("GET", "/api/repos/acme.site/branches/main/tags/untested", 200)
    assert tag["build_url"] == f"/api/images/{iid}/builds/1"
    log = await env.call("GET", f"/api/images/{iid}/builds/1/logs", 200)
    assert "Build succeeded" in log


# refusals -----------------------------------------------------------------------------------------


async def test_bad_requests_write_nothing(env: Env, etcd: RawEtcd) -> None:
    await env.start()
    await env.service("nosource", source=None)
    await env.service()
    cases = [
        ("POST", env.builds("nosource"), {}, 422, "source:"),
        ("POST", env.builds("ghost"), {}, 404, "ghost"),
        ("POST", env.builds(), {"branch": "dev"}, 422, "branch: unknown field"),
        ("POST", env.builds(), [1], 422, "JSON object"),
        ("POST", "/api/images/6a0f3a52-5b1a-4c39-9d1e-2b7f7a3c9e10/builds", {}, 404, "image"),
        ("POST", "/api/images/not-an-id/builds", {}, 404, "image"),
        ("POST", f"{env.builds()}/1/cancel", None, 404, "build 1"),
        ("POST", f"{env.builds()}/x/cancel", None, 404, "numbered"),
        ("GET", f"{env.builds()}/1/logs?follow=maybe", None, 400, "follow"),
    ]
    before = await dump(etcd)
    revision = await etcd.status()
    for method, path, body, status, detail in cases:
        kwargs = {} if body is None else {"json": body}
        answer = await env.call(method, path, status, **kwargs)
        [error] = answer["errors"]
        assert detail in error["detail"], (path, answer)
    assert await dump(etcd) == before
    assert await etcd.status() == revision


# failures with a message a person understands -----------------------------------------------------


async def test_a_missing_branch_or_repository_fails_the_build_with_gits_reason(env: Env) -> None:
    await env.start()
    await env.service("branch", source={**SOURCE, "branch": "nope"})
    await env.service("repo", source={**SOURCE, "repo": "missing"})
    for service in ("branch", "repo"):
        build = await env.ended(await env.build(service), service)
        assert build["status"] == "failed"
        assert build["message"].startswith("clone repo failed: fatal:"), build
        assert "Build failed: clone repo failed" in await env.logs(1, service)
    assert "nope" in (await env.status(1, "branch"))["message"]
    assert env.runtime.builds == []


async def test_a_wrong_vendor_token_fails_the_clone_without_showing_it(env: Env) -> None:
    await env.start()
    await env.call("PUT", "/api/vendors/github", 200, json=env.vendor(token="wrong-" + TOKEN[6:]))
    await env.service()
    build = await env.ended(await env.build())
    assert build["status"] == "failed"
    assert build["message"].startswith("clone repo failed:")
    assert "wrong-" not in build["message"]
    assert "wrong-" not in await env.logs(1)


async def test_a_failing_dockerfile_step_and_a_refused_push_fail_the_build(env: Env) -> None:
    await env.start()
    await env.service()
    commit(
        env.tmp / "git" / "acme", "site", {"Dockerfile": f"FROM {BASE_IMAGE}\nRUN exit 3\n"}, "x"
    )
    build = await env.ended(await env.build())
    assert build["status"] == "failed"
    assert build["message"] == (
        "docker build failed: The command '/bin/sh -c exit 3' returned a non-zero code: 3"
    )
    commit(env.tmp / "git" / "acme", "site", {"Dockerfile": DOCKERFILE}, "fixed")
    env.runtime.fail_push(f"{REGISTRY}/demo/web:2", "denied: requested access is refused")
    build = await env.ended(await env.build())
    assert build["status"] == "failed"
    assert build["message"].startswith(
        "push failed: pushing registry.local:5000/demo/web:2: denied"
    )
    image = await env.call("GET", "/api/projects/demo/services/web/image", 200)
    assert image == {"image": None}  # no failed build is ever rolled out


async def test_a_build_past_its_timeout_fails(env: Env) -> None:
    await env.start(build_timeout=1.0)
    env.runtime.build_gate = asyncio.Event()
    await env.service()
    build = await env.ended(await env.build())
    assert build["status"] == "failed"
    assert build["message"] == "the build took longer than 1s"


# one at a time, queues, concurrency ---------------------------------------------------------------


async def test_builds_of_one_service_run_one_at_a_time_in_number_order(env: Env) -> None:
    await env.start()
    gate = env.runtime.build_gate = asyncio.Event()
    await env.service()
    numbers = [await env.build() for _ in range(3)]
    await env.reaches(1, "building")
    await asyncio.sleep(0.5)  # an observation window: nothing else may start meanwhile
    assert [(await env.status(n))["status"] for n in numbers] == ["building", "queued", "queued"]
    gate.set()
    for number in numbers:
        assert (await env.ended(number))["status"] == "success"
    assert env.runtime.builds == [f"{REGISTRY}/demo/web:{n}" for n in numbers]
    image = await env.call("GET", "/api/projects/demo/services/web/image", 200)
    assert image == {"image": f"{REGISTRY}/demo/web:3"}


async def test_the_global_limit_keeps_other_services_builds_queued(env: Env) -> None:
    await env.start(build_concurrency=1)
    gate = env.runtime.build_gate = asyncio.Event()
    await env.service("one")
    await env.service("two")
    await env.build("one")
    await env.build("two")

    async def one_building() -> list[str]:
        statuses = [(await env.status(1, s))["status"] for s in ("one", "two")]
        return statuses if "building" in statuses else []

    statuses = await eventually(one_building, 20)
    await asyncio.sleep(0.5)
    assert sorted([(await env.status(1, s))["status"] for s in ("one", "two")]) == [
        "building",
        "queued",
    ], statuses
    gate.set()
    for service in ("one", "two"):
        assert (await env.ended(1, service))["status"] == "success"


# cancel -------------------------------------------------------------------------------------------


async def test_cancel_a_queued_and_a_running_build(env: Env, etcd: RawEtcd) -> None:
    await env.start()
    gate = env.runtime.build_gate = asyncio.Event()
    await env.service()
    running, waiting = await env.build(), await env.build()
    await env.reaches(running, "building")
    canceled = await env.call("POST", f"{env.builds()}/{waiting}/cancel", 200)
    assert (canceled["number"], canceled["status"]) == (waiting, "canceled")
    assert canceled["message"] == "canceled by request"
    canceled = await env.call("POST", f"{env.builds()}/{running}/cancel", 200)
    assert canceled["status"] == "canceled"
    assert "Build stopped" in await eventually(lambda: env.logs(running), 10)
    gate.set()  # a task that was not stopped would now finish and write success
    await asyncio.sleep(0.5)
    for number in (running, waiting):
        assert (await env.status(number))["status"] == "canceled"
    assert env.runtime.builds == [f"{REGISTRY}/demo/web:1"]  # the queued one never started
    assert env.runtime.pushes == []
    image = await env.call("GET", "/api/projects/demo/services/web/image", 200)
    assert image == {"image": None}
    revision = await etcd.status()
    answer = await env.call("POST", f"{env.builds()}/{running}/cancel", 409)
    assert "already finished (canceled)" in answer["errors"][0]["detail"]
    third = await env.build()
    assert (await env.ended(third))["status"] == "success"
    await env.call("POST", f"{env.builds()}/{third}/cancel", 409)
    assert await etcd.status() > revision  # only the third build wrote


async def test_deleting_the_service_mid_build_stops_it_and_writes_nothing_back(
    env: Env, etcd: RawEtcd
) -> None:
    await env.start()
    gate = env.runtime.build_gate = asyncio.Event()
    sid = await env.service()
    await env.build()
    await env.reaches(1, "building")
    pid = await env.project()
    await env.call("DELETE", "/api/projects/demo/services/web", 204)
    await asyncio.sleep(0.5)
    gate.set()
    await asyncio.sleep(0.5)
    assert await dump(etcd, keys.service(pid, sid)) == {}
    assert env.runtime.pushes == []


# crash safety and logs ----------------------------------------------------------------------------


async def test_a_build_left_running_by_a_dead_controller_fails_and_the_next_runs(
    env: Env, etcd: RawEtcd
) -> None:
    await env.start()
    await env.stop_controller()
    sid = await env.service()
    pid = await env.project()
    for number, status in ((1, "building"), (2, "queued")):
        build = Build(status, now(), now())
        await etcd.put(keys.build(pid, sid, number), codec.dumps(build))
    env.start_controller()
    interrupted = await env.ended(1)
    assert (interrupted["status"], interrupted["message"]) == ("failed", INTERRUPTED)
    assert (await env.ended(2))["status"] == "success"
    assert await env.call("GET", "/api/projects/demo/services/web/image", 200) == {
        "image": f"{REGISTRY}/demo/web:2"
    }


async def test_followed_logs_stream_until_the_build_ends(env: Env) -> None:
    await env.start()
    gate = env.runtime.build_gate = asyncio.Event()
    await env.service()
    await env.build()
    await env.reaches(1, "building")
    assert env.client is not None
    resp = await env.client.get(f"{env.builds()}/1/logs?follow=true")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    first = await resp.content.readuntil(b"Step 1/3")
    assert b"Cloning" in first
    gate.set()
    rest = await asyncio.wait_for(resp.text(), 20)
    assert "Build succeeded" in rest


# the untested tag lands with success, or not at all -------------------------------------------

TAG_PATH = "/api/repos/acme.site/branches/main/tags/untested"


def _after_plan(monkeypatch: pytest.MonkeyPatch, meddle: Any) -> list[int]:
    """Run ``meddle()`` between the controller's first planning of the tag and its success txn;
    the plans the controller made (the API's own PUTs are not counted) are returned."""
    planned: list[int] = []
    plan_put = Repos.plan_put

    async def plan_then_meddle(self: Repos, ids: Any, node: Any) -> Any:
        plan = await plan_put(self, ids, node)
        if not isinstance(self.etcd, Fenced):
            return plan
        planned.append(len(planned) + 1)
        if len(planned) == 1:
            await meddle()
        return plan

    monkeypatch.setattr(Repos, "plan_put", plan_then_meddle)
    return planned


async def test_a_tag_changed_by_ci_at_success_is_planned_again_and_lands_with_it(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    await env.start()
    await env.service()

    async def ci_writes_the_tag() -> None:  # a CI job PUTs the tag meanwhile
        await env.call("PUT", TAG_PATH, None, json={"build_id": "ci", "artifacts": {}})

    planned = _after_plan(monkeypatch, ci_writes_the_tag)
    number = await env.build()
    assert (await env.ended(number))["status"] == "success", await env.logs(number)
    assert planned == [1, 2]  # the first success txn failed on the tag's compare, not the build's
    tag = await env.call("GET", TAG_PATH, 200)
    assert tag["build_id"] == str(number)
    assert "Tagged untested" in await env.logs(number)


async def test_a_build_canceled_as_it_succeeds_leaves_no_tag_and_no_image(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    await env.start()
    await env.service()
    numbers: list[int] = []

    async def cancel() -> None:
        await env.call("POST", f"{env.builds()}/{numbers[0]}/cancel", 200)

    _after_plan(monkeypatch, cancel)
    numbers.append(await env.build())
    assert (await env.ended(numbers[0]))["status"] == "canceled"
    await env.call("GET", TAG_PATH, 404)  # no tag of a build that did not succeed
    image = await env.call("GET", "/api/projects/demo/services/web/image", 200)
    assert image == {"image": None}
