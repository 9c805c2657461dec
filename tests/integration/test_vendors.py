"""``/api/vendors`` and source resolution against a real etcd and a real git server.

Tokens and webhook secrets must never come back: every response shows ``***``, no response body
holds them, and etcd holds Fernet tokens that the process's key decrypts (checked by reading etcd
directly, as an admin with ``etcdctl`` would). ``resolve()`` is checked by cloning with what it
gives from a smart-HTTP git server that demands each vendor's credentials.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from lastbackend.api.state import STATE
from lastbackend.model.platform import ServiceSource
from lastbackend.secrets import Secrets, is_token
from lastbackend.sources.git import GitError, clone
from lastbackend.sources.vendors import resolve
from tests.conftest import ClientFactory, dump
from tests.gitserver import GitServer, make_repo
from tests.support import RawEtcd

pytestmark = pytest.mark.etcd

Client = TestClient[Any, Any]
BASE = "/api/vendors"
KEY = "/lastbackend/vendors/"
TOKEN = "a4f29b4c1a7fa86e8b1f308ffec6feeea979f98e"
NEW_TOKEN = "9c0f1e2d3b4a59687766554433221100ffeeddcc"
HOOK = "hook-Secret-5e1f"
SECRETS_SEEN = (TOKEN, NEW_TOKEN, HOOK)
GITHUB = {
    "host": "github.com",
    "username": "unloop",
    "email": "pastor.konstantin@gmail.com",
    "service_id": "1877907",
    "token": TOKEN,
    "token_type": "bearer",
    "webhook_secret": HOOK,
}


class Recorder:
    """The API client, keeping every response, so a test can prove none held a secret."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.bodies: list[str] = []

    async def request(self, method: str, path: str, **kwargs: Any) -> ClientResponse:
        resp = await self.client.request(method, path, **kwargs)
        self.bodies.append(await resp.text() + json.dumps(dict(resp.headers)))
        return resp

    @property
    def secrets(self) -> Secrets:
        return self.client.server.app[STATE].secrets


@pytest.fixture
async def api(make_client: ClientFactory, tmp_path: Path) -> AsyncIterator[Recorder]:
    recorder = Recorder(await make_client(data_dir=tmp_path))
    yield recorder
    for text in recorder.bodies:
        for secret in SECRETS_SEEN:
            assert secret not in text


async def connect(api: Recorder, vendor: str, status: int = 201, **fields: Any) -> dict[str, Any]:
    resp = await api.request("PUT", f"{BASE}/{vendor}", json=fields)
    assert resp.status == status, await resp.text()
    return await resp.json()


async def expect_error(resp: ClientResponse, status: int) -> str:
    assert resp.status == status, await resp.text()
    errors = (await resp.json())["errors"]
    for error in errors:
        assert set(error) == {"code", "title", "detail"}
    return "; ".join(e["detail"] for e in errors)


# connect, read, disconnect ----------------------------------------------------------------------


async def test_connect_shows_the_document_object_with_secrets_masked(
    api: Recorder, etcd: RawEtcd
) -> None:
    body = await connect(api, "github", **GITHUB)
    assert list(body)[:10] == [
        "vendor",
        "host",
        "username",
        "email",
        "service_id",
        "token",
        "token_type",
        "updated",
        "created",
        "scheme",
    ]
    assert body["vendor"] == "github"
    assert body["token"] == "***"
    assert body["webhook_secret"] == "***"
    assert body["scheme"] == "https"
    assert "expiry" not in body
    assert body["links"]["hook"] == {"href": "/api/hooks/github"}

    stored = json.loads((await dump(etcd))[f"{KEY}github"])
    assert is_token(stored["token"])
    assert is_token(stored["webhook_secret"])
    assert TOKEN not in json.dumps(stored)
    assert api.secrets.decrypt(stored["token"]) == TOKEN
    assert api.secrets.decrypt(stored["webhook_secret"]) == HOOK
    assert {k: v for k, v in stored.items() if k not in ("token", "webhook_secret")} == {
        k: v for k, v in body.items() if k not in ("token", "webhook_secret", "links")
    }

    resp = await api.request("GET", f"{BASE}/github")
    assert resp.status == 200
    assert (await resp.json())["token"] == "***"
    assert resp.headers["ETag"]


async def test_the_vendor_map_has_every_vendor(api: Recorder) -> None:
    resp = await api.request("GET", BASE)
    assert await resp.json() == {"github": {}, "bitbucket": {}, "gitlab": {}, "slack": {}}
    await connect(api, "gitlab", token=TOKEN, expiry="2027-03-14T09:49:45Z")
    body = await (await api.request("GET", BASE)).json()
    assert list(body) == ["github", "bitbucket", "gitlab", "slack"]
    assert body["github"] == body["bitbucket"] == body["slack"] == {}
    gitlab = body["gitlab"]
    assert (gitlab["host"], gitlab["token"], gitlab["expiry"]) == (
        "gitlab.com",
        "***",
        "2027-03-14T09:49:45Z",
    )
    assert gitlab["webhook_secret"] == ""


async def test_default_hosts_and_a_self_hosted_one(api: Recorder) -> None:
    assert (await connect(api, "bitbucket", token=TOKEN))["host"] == "bitbucket.org"
    assert (await connect(api, "slack", token=TOKEN))["host"] == "slack.com"
    body = await connect(api, "gitlab", token=TOKEN, host="git.example.com:8443")
    assert body["host"] == "git.example.com:8443"


async def test_put_again_changes_nothing_and_writes_nothing(api: Recorder, etcd: RawEtcd) -> None:
    first = await connect(api, "github", **GITHUB)
    revision = await etcd.status()
    again = await connect(api, "github", 200, **GITHUB)
    assert again == first
    assert await etcd.status() == revision


async def test_put_without_secrets_keeps_them_and_a_new_token_replaces(
    api: Recorder, etcd: RawEtcd
) -> None:
    await connect(api, "github", **GITHUB)
    before = json.loads((await dump(etcd))[f"{KEY}github"])
    fields = {k: v for k, v in GITHUB.items() if k not in ("token", "webhook_secret")}
    body = await connect(api, "github", 200, **{**fields, "username": "someone"})
    assert body["username"] == "someone"
    after = json.loads((await dump(etcd))[f"{KEY}github"])
    assert (after["token"], after["webhook_secret"]) == (before["token"], before["webhook_secret"])
    assert after["created"] == before["created"]

    await connect(api, "github", 200, **{**GITHUB, "token": NEW_TOKEN, "webhook_secret": ""})
    stored = json.loads((await dump(etcd))[f"{KEY}github"])
    assert api.secrets.decrypt(stored["token"]) == NEW_TOKEN
    assert stored["webhook_secret"] == ""


async def test_disconnect(api: Recorder, etcd: RawEtcd) -> None:
    await connect(api, "github", **GITHUB)
    resp = await api.request("DELETE", f"{BASE}/github")
    assert resp.status == 204
    assert await dump(etcd) == {}
    assert "not connected" in await expect_error(await api.request("GET", f"{BASE}/github"), 404)
    await expect_error(await api.request("DELETE", f"{BASE}/github"), 404)


async def test_if_match(api: Recorder) -> None:
    await connect(api, "github", **GITHUB)
    etag = (await api.request("GET", f"{BASE}/github")).headers["ETag"]
    stale = {"If-Match": '"1"'}
    await expect_error(await api.request("PUT", f"{BASE}/github", json=GITHUB, headers=stale), 412)
    await expect_error(await api.request("DELETE", f"{BASE}/github", headers=stale), 412)
    resp = await api.request("DELETE", f"{BASE}/github", headers={"If-Match": etag})
    assert resp.status == 204


# bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vendor", "fields", "status", "says"),
    [
        ("jira", GITHUB, 404, "github, bitbucket, gitlab, slack"),
        ("github", {"username": "x"}, 422, "token: is required"),
        ("github", {**GITHUB, "token": ""}, 422, "token: must not be empty"),
        ("github", {**GITHUB, "token": "***"}, 422, "token: '***' is how responses hide it"),
        ("github", {**GITHUB, "webhook_secret": "***"}, 422, "webhook_secret: '***'"),
        ("github", {**GITHUB, "host": "GitHub.com"}, 422, "host: 'GitHub.com' is not a vendor"),
        ("github", {**GITHUB, "host": "a.com/x"}, 422, "host: "),
        ("github", {**GITHUB, "host": "a.com:99999"}, 422, "host: "),
        ("github", {**GITHUB, "scheme": "ftp"}, 422, "scheme: must be one of https, http"),
        ("github", {**GITHUB, "vendor": "gitlab"}, 422, "vendor: must be 'github'"),
        ("github", {**GITHUB, "created": "2017-03-14T09:49:45Z"}, 422, "created: unknown field"),
        ("github", {**GITHUB, "email": "nope"}, 422, "email: 'nope' is not an email"),
        ("github", {**GITHUB, "expiry": "tomorrow"}, 422, "expiry: "),
        ("github", {**GITHUB, "token": 7}, 422, "token: must be a string"),
        ("github", {**GITHUB, "username": "a\nb"}, 422, "username: must not contain control"),
    ],
)
async def test_bad_input_is_refused_and_nothing_is_written(
    api: Recorder, etcd: RawEtcd, vendor: str, fields: dict[str, Any], status: int, says: str
) -> None:
    await connect(api, "slack", token=TOKEN)
    before, revision = await dump(etcd), await etcd.status()
    resp = await api.request("PUT", f"{BASE}/{vendor}", json=fields)
    assert says in await expect_error(resp, status)
    assert await dump(etcd) == before
    assert await etcd.status() == revision


async def test_unknown_vendor_is_404_on_every_method(api: Recorder) -> None:
    for method in ("GET", "DELETE"):
        detail = await expect_error(await api.request(method, f"{BASE}/jira"), 404)
        assert "github, bitbucket, gitlab, slack" in detail


# resolve: what a build clones -------------------------------------------------------------------


@pytest.fixture
async def repos(tmp_path: Path) -> Path:
    root = tmp_path / "repos"
    root.mkdir()
    return root


async def serve(root: Path, user: str, password: str) -> GitServer:
    server = GitServer(root, user, password)
    await server.start()
    return server


@pytest.mark.parametrize(
    ("vendor", "user", "hub"),
    [
        ("github", "ci-user", "127.0.0.1"),  # GitHub: the account's user name, the token
        ("gitlab", "oauth2", "gitlab"),  # GitLab: oauth2 and the token; hub named by vendor
        ("bitbucket", "x-token-auth", "127.0.0.1"),  # Bitbucket: x-token-auth and the token
    ],
)
async def test_resolve_clones_with_the_vendor_token(
    api: Recorder, etcd: RawEtcd, repos: Path, tmp_path: Path, vendor: str, user: str, hub: str
) -> None:
    sha = make_repo(repos, "acme/site", {"index.html": "hi\n"}, branch="main")
    server = await serve(repos, user, TOKEN)
    try:
        host = f"127.0.0.1:{server.port}"
        await connect(api, vendor, token=TOKEN, host=host, scheme="http", username="ci-user")
        remote = await resolve(etcd, api.secrets, ServiceSource(hub, "acme", "site", "main"))
        assert remote.url == f"http://{host}/acme/site.git"
        assert (remote.branch, remote.vendor) == ("main", vendor)
        assert TOKEN not in repr(remote)
        out = await clone(remote.url, tmp_path / "co", ref=remote.branch, auth=remote.auth)
        assert out.commit == sha
        assert (out.path / "index.html").read_text() == "hi\n"
    finally:
        await server.stop()


async def test_resolve_with_a_wrong_token_fails_to_clone(
    api: Recorder, etcd: RawEtcd, repos: Path, tmp_path: Path
) -> None:
    make_repo(repos, "acme/site", {"index.html": "hi\n"}, branch="main")
    server = await serve(repos, "oauth2", TOKEN)
    try:
        host = f"127.0.0.1:{server.port}"
        await connect(api, "gitlab", token=NEW_TOKEN, host=host, scheme="http")
        remote = await resolve(etcd, api.secrets, ServiceSource("gitlab", "acme", "site", "main"))
        with pytest.raises(GitError) as info:
            await clone(remote.url, tmp_path / "co", ref="main", auth=remote.auth, time_limit=30)
        assert str(info.value).startswith("clone repo failed:")
        assert NEW_TOKEN not in str(info.value)
        assert server.requests >= 1  # refused by the server, not by a typo in the URL
    finally:
        await server.stop()


async def test_resolve_without_a_vendor_is_a_public_https_clone(
    api: Recorder, etcd: RawEtcd
) -> None:
    await connect(api, "gitlab", token=TOKEN, host="git.example.com")
    remote = await resolve(etcd, api.secrets, ServiceSource("github.com", "acme", "site", "dev"))
    assert (remote.url, remote.auth, remote.vendor) == (
        "https://github.com/acme/site.git",
        None,
        None,
    )
    remote = await resolve(etcd, api.secrets, ServiceSource("bitbucket", "acme", "site"))
    assert remote.url == "https://bitbucket.org/acme/site.git"
    assert remote.branch == "master"
    # slack is a vendor, but not a git host
    await connect(api, "slack", token=TOKEN, host="slack.example.com")
    remote = await resolve(etcd, api.secrets, ServiceSource("slack.example.com", "a", "b"))
    assert remote.auth is None


async def test_openapi_documents_vendors_images_and_unsigned_hooks(api: Recorder) -> None:
    spec = await (await api.request("GET", "/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    assert schemas["Vendor"]["properties"]["token"]["enum"] == ["***"]
    assert set(schemas["VendorMap"]["properties"]) == {"github", "bitbucket", "gitlab", "slack"}
    assert "webhook_secret" in schemas["VendorConnect"]["properties"]
    assert schemas["ImageCreate"]["required"] == ["name", "source"]
    paths = spec["paths"]
    assert set(paths["/api/vendors/{vendor}"]) == {"get", "put", "delete"}
    assert set(paths["/api/images/{image}"]) == {"get", "put", "patch", "delete"}
    assert paths["/api/hooks/{vendor}"]["post"]["security"] == []
    assert "security" not in paths["/api/vendors/{vendor}"]["put"]
