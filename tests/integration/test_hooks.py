"""``POST /api/hooks/{vendor}`` against a real etcd: signed pushes queue builds, nothing else does.

Each provider's push payload (the documented shape) is sent signed as the provider signs it. A
good signature queues one build for every service (across projects) and image whose source is
the pushed repository and branch on that vendor's hub, and for nothing else; a bad or missing
signature is a 401 and the etcd revision does not move. Replays and the one refusal text are in
``tests/security/test_webhooks.py``.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from lastbackend.api.hooks import REFUSED, sign
from lastbackend.store import keys
from tests.conftest import ClientFactory, dump
from tests.support import RawEtcd
from tests.unit.test_hook_payloads import (
    SHA,
    bitbucket_change,
    bitbucket_push,
    github_push,
    gitlab_push,
)

pytestmark = pytest.mark.etcd

Client = TestClient[Any, Any]
SECRET = "hook-s3cret-7d1e"
TOKEN = "oauth-token-1f0af717"
ADMIN = {"Authorization": "Bearer adm"}


def github_site(**over: Any) -> dict[str, Any]:
    repo = {"name": "site", "full_name": "acme/site", "owner": {"login": "acme", "name": "acme"}}
    return github_push(repository=repo, **over)


class World:
    """Vendors, two projects of services and some images, made through the API."""

    def __init__(self, api: Client, headers: dict[str, str]) -> None:
        self.api = api
        self.headers = headers
        self.ids: dict[str, str] = {}
        self.projects: dict[str, str] = {}

    async def call(self, method: str, path: str, body: Any) -> dict[str, Any]:
        resp = await self.api.request(method, path, json=body, headers=self.headers)
        assert resp.status in (200, 201, 204), await resp.text()
        return await resp.json() if resp.status != 204 else {}

    async def vendor(self, name: str, **fields: Any) -> None:
        await self.call("PUT", f"/api/vendors/{name}", {"token": TOKEN, **fields})

    async def service(self, project: str, name: str, source: dict[str, Any] | None) -> None:
        if project not in self.projects:
            self.projects[project] = (await self.call("POST", "/api/projects", {"name": project}))[
                "id"
            ]
        body = await self.call(
            "POST", f"/api/projects/{project}/services", {"name": name, "source": source}
        )
        self.ids[name] = body["id"]

    async def image(self, name: str, source: dict[str, Any]) -> None:
        self.ids[name] = (await self.call("POST", "/api/images", {"name": name, "source": source}))[
            "id"
        ]


def src(hub: str, repo: str = "site", branch: str = "master", owner: str = "acme") -> Any:
    return {"hub": hub, "owner": owner, "repo": repo, "branch": branch}


async def make_world(api: Client, headers: dict[str, str] | None = None) -> World:
    world = World(api, headers or {})
    await world.vendor("github", webhook_secret=SECRET)
    await world.vendor("gitlab", host="gitlab.example.com:8443", webhook_secret=SECRET)
    await world.vendor("bitbucket", webhook_secret=SECRET)
    await world.service("demo", "web", src("github.com"))
    await world.service("demo", "dev", src("github.com", branch="dev"))
    await world.service("demo", "other", src("github.com", repo="other"))
    await world.service("demo", "fork", src("github.com", owner="someone"))
    await world.service("demo", "plain", None)
    await world.service("demo", "gl", src("gitlab.example.com", branch="main"))
    await world.service("demo", "bb", src("bitbucket.org"))
    await world.service("two", "web2", src("github"))  # the vendor's name as its hub
    await world.image("acme/site", src("github.com"))
    await world.image("acme/site-dev", src("github.com", branch="dev"))
    await world.image("acme/bb-feature", src("bitbucket.org", branch="feature/x"))
    return world


@pytest.fixture
async def world(make_client: ClientFactory, tmp_path: Path) -> World:
    return await make_world(await make_client(data_dir=tmp_path))


async def post_hook(
    api: Client, vendor: str, payload: Any, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    raw = json.dumps(payload).encode()
    resp = await api.post(
        f"/api/hooks/{vendor}",
        data=raw,
        headers={"Content-Type": "application/json", **headers},
    )
    return resp.status, await resp.json()


def github_headers(raw: bytes, secret: str = SECRET, event: str = "push") -> dict[str, str]:
    return {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": str(uuid.uuid4()),  # each call a new delivery: not a replay
        "X-Hub-Signature-256": sign(secret, raw),
    }


async def builds_in(etcd: RawEtcd) -> dict[str, dict[str, Any]]:
    return {
        key: json.loads(value) for key, value in (await dump(etcd)).items() if "/builds/" in key
    }


def service_build(world: World, project: str, name: str, n: int = 1) -> str:
    return keys.build(world.projects[project], world.ids[name], n)


def image_build(world: World, name: str, n: int = 1) -> str:
    return keys.image_build(world.ids[name], n)


# GitHub -----------------------------------------------------------------------------------------


async def test_github_push_builds_the_matching_services_and_images_only(
    world: World, etcd: RawEtcd
) -> None:
    payload = github_site()
    status, body = await post_hook(
        world.api, "github", payload, github_headers(json.dumps(payload).encode())
    )
    assert status == 202, body
    made = await builds_in(etcd)
    assert set(made) == {
        service_build(world, "demo", "web"),
        service_build(world, "two", "web2"),
        image_build(world, "acme/site"),
    }
    for build in made.values():
        assert build["status"] == "queued"
        assert build["commit"] == SHA
        assert build["commitMessage"] == "Merge pull request #218"
        assert build["committer"] == "unloop"
    assert sorted(body["builds"], key=json.dumps) == sorted(
        [
            {"service": world.ids["web"], "project": world.projects["demo"], "number": 1},
            {"service": world.ids["web2"], "project": world.projects["two"], "number": 1},
            {"image": world.ids["acme/site"], "number": 1},
        ],
        key=json.dumps,
    )

    again = github_site(after="b" * 40, head_commit={"id": "b" * 40, "message": "next"})
    status, body = await post_hook(
        world.api, "github", again, github_headers(json.dumps(again).encode())
    )
    assert status == 202
    assert {b["number"] for b in body["builds"]} == {2}
    made = await builds_in(etcd)
    assert made[service_build(world, "demo", "web", 2)]["commit"] == "b" * 40


async def test_github_push_to_another_branch_builds_that_branch(
    world: World, etcd: RawEtcd
) -> None:
    payload = github_site(ref="refs/heads/dev")
    status, _ = await post_hook(
        world.api, "github", payload, github_headers(json.dumps(payload).encode())
    )
    assert status == 202
    assert set(await builds_in(etcd)) == {
        service_build(world, "demo", "dev"),
        image_build(world, "acme/site-dev"),
    }


async def test_a_push_nobody_builds_from_is_202_with_no_builds(world: World, etcd: RawEtcd) -> None:
    payload = github_site(ref="refs/heads/nobody")
    before = await dump(etcd)
    headers = github_headers(json.dumps(payload).encode())
    status, body = await post_hook(world.api, "github", payload, headers)
    assert (status, body) == (202, {"builds": []})
    written = set(await dump(etcd)) - set(before)  # only the delivery, so a replay stays a no-op
    assert written == {keys.hook_delivery("github", headers["X-GitHub-Delivery"])}


@pytest.mark.parametrize(
    "headers",
    [
        lambda raw: {"X-GitHub-Event": "push"},
        lambda raw: github_headers(raw, secret="not-the-secret"),
        lambda raw: github_headers(raw + b" "),
        lambda raw: {**github_headers(raw), "X-Hub-Signature-256": "sha256=" + "0" * 64},
        lambda raw: {"X-GitHub-Event": "push", "X-Hub-Signature": sign(SECRET, raw)},
        lambda raw: {"X-GitHub-Event": "push", "X-Gitlab-Token": SECRET},
    ],
    ids=["missing", "other-secret", "other-body", "zeros", "sha1-header-name", "gitlab-token"],
)
async def test_github_bad_signature_is_401_and_writes_nothing(
    world: World, etcd: RawEtcd, headers: Any
) -> None:
    payload = github_site()
    revision, before = await etcd.status(), await dump(etcd)
    status, body = await post_hook(
        world.api, "github", payload, headers(json.dumps(payload).encode())
    )
    assert status == 401, body
    assert body["errors"][0]["detail"] == REFUSED
    assert "X-Hub-Signature-256" in REFUSED
    assert await etcd.status() == revision
    assert await dump(etcd) == before


async def test_ping_and_other_events_start_nothing(world: World, etcd: RawEtcd) -> None:
    revision = await etcd.status()
    ping = {"zen": "Keep it logically awesome.", "hook_id": 1}
    status, body = await post_hook(
        world.api, "github", ping, github_headers(json.dumps(ping).encode(), event="ping")
    )
    assert status == 200
    assert body["builds"] == []
    assert "ping" in body["ignored"]
    tag = github_site(ref="refs/tags/v1")
    status, body = await post_hook(
        world.api, "github", tag, github_headers(json.dumps(tag).encode())
    )
    assert (status, body) == (202, {"builds": []})
    assert await etcd.status() == revision


async def test_no_webhook_secret_refuses_every_hook(world: World, etcd: RawEtcd) -> None:
    await world.call("PUT", "/api/vendors/github", {"token": TOKEN, "webhook_secret": ""})
    payload = github_site()
    revision = await etcd.status()
    for secret in (SECRET, ""):
        status, body = await post_hook(
            world.api, "github", payload, github_headers(json.dumps(payload).encode(), secret)
        )
        assert status == 401
        assert body["errors"][0]["detail"] == REFUSED
    assert await etcd.status() == revision
    await world.call("DELETE", "/api/vendors/github", None)
    revision = await etcd.status()
    status, body = await post_hook(
        world.api, "github", payload, github_headers(json.dumps(payload).encode())
    )
    assert status == 401
    assert body["errors"][0]["detail"] == REFUSED
    assert await etcd.status() == revision


async def test_unknown_hook_vendor_is_the_same_401(world: World) -> None:
    for vendor in ("slack", "jira"):
        status, body = await post_hook(world.api, vendor, {}, {})
        assert status == 401
        assert body["errors"][0]["detail"] == REFUSED
        assert "github|gitlab|bitbucket" in REFUSED


async def test_hooks_need_no_bearer_token_but_everything_else_still_does(
    make_client: ClientFactory, tmp_path: Path, etcd: RawEtcd
) -> None:
    api = await make_client(data_dir=tmp_path, admin_tokens=("adm",), read_tokens=("ro",))
    world = await make_world(api, ADMIN)
    payload = github_site()
    raw = json.dumps(payload).encode()
    status, body = await post_hook(api, "github", payload, github_headers(raw))
    assert status == 202, body
    assert len(body["builds"]) == 3
    revision = await etcd.status()
    status, body = await post_hook(api, "github", payload, {"X-GitHub-Event": "push"})
    assert status == 401
    assert "X-Hub-Signature-256" in body["errors"][0]["detail"]
    for method, path in (("GET", "/api/vendors"), ("POST", "/api/images"), ("GET", "/api/hooks/x")):
        resp = await api.request(method, path, json={})
        assert resp.status == 401, (method, path)
    assert await etcd.status() == revision
    assert world.ids


# GitLab -----------------------------------------------------------------------------------------


async def test_gitlab_push_with_its_token_builds_on_the_self_hosted_hub(
    world: World, etcd: RawEtcd
) -> None:
    headers = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET}
    status, body = await post_hook(world.api, "gitlab", gitlab_push(), headers)
    assert status == 202, body
    made = await builds_in(etcd)
    assert set(made) == {service_build(world, "demo", "gl")}
    build = made[service_build(world, "demo", "gl")]
    assert (build["commit"], build["commitMessage"], build["committer"]) == (
        SHA,
        "fix the proxy",
        "Ada",
    )


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Gitlab-Event": "Push Hook"},
        {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET.upper()},
        {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET[:-1]},
    ],
    ids=["missing", "other-case", "prefix"],
)
async def test_gitlab_wrong_token_is_401_and_writes_nothing(
    world: World, etcd: RawEtcd, headers: dict[str, str]
) -> None:
    revision = await etcd.status()
    status, body = await post_hook(world.api, "gitlab", gitlab_push(), headers)
    assert status == 401, body
    assert body["errors"][0]["detail"] == REFUSED
    assert await etcd.status() == revision


# Bitbucket --------------------------------------------------------------------------------------


async def test_bitbucket_push_builds_each_changed_branch(world: World, etcd: RawEtcd) -> None:
    payload = bitbucket_push(
        bitbucket_change("master", SHA),
        bitbucket_change("feature/x", "c" * 40),
        bitbucket_change("v2", "d" * 40, kind="tag"),
    )
    raw = json.dumps(payload).encode()
    headers = {"X-Event-Key": "repo:push", "X-Hub-Signature": sign(SECRET, raw)}
    status, body = await post_hook(world.api, "bitbucket", payload, headers)
    assert status == 202, body
    made = await builds_in(etcd)
    assert set(made) == {
        service_build(world, "demo", "bb"),
        image_build(world, "acme/bb-feature"),
    }
    assert made[service_build(world, "demo", "bb")]["commit"] == SHA
    assert made[image_build(world, "acme/bb-feature")]["commit"] == "c" * 40
    assert made[image_build(world, "acme/bb-feature")]["commitMessage"] == "work on feature/x"


async def test_bitbucket_bad_signature_is_401_and_writes_nothing(
    world: World, etcd: RawEtcd
) -> None:
    payload = bitbucket_push(bitbucket_change("master", SHA))
    raw = json.dumps(payload).encode()
    revision = await etcd.status()
    for headers in (
        {"X-Event-Key": "repo:push"},
        {"X-Event-Key": "repo:push", "X-Hub-Signature": sign("wrong", raw)},
        {"X-Event-Key": "repo:push", "X-Hub-Signature-256": sign(SECRET, raw)},
    ):
        status, body = await post_hook(world.api, "bitbucket", payload, headers)
        assert status == 401, body
    assert await etcd.status() == revision


async def test_a_signed_payload_without_a_repository_is_422_and_writes_nothing(
    world: World, etcd: RawEtcd
) -> None:
    payload = github_site()
    del payload["repository"]
    revision = await etcd.status()
    status, body = await post_hook(
        world.api, "github", payload, github_headers(json.dumps(payload).encode())
    )
    assert status == 422
    assert body["errors"][0]["detail"].startswith("repository.name:")
    assert await etcd.status() == revision
