"""``/api/registries`` against a real etcd: CRUD, the password's secrecy, bad input, ETags, auth.

The password must never come back: every response shows ``***``, no response body, log line or
etcd value holds it, and etcd holds a Fernet token that the process's key decrypts. Storage is
checked by reading etcd directly, as an admin with ``etcdctl`` would.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from lastbackend.api.state import STATE
from lastbackend.cli.keytree import _render
from lastbackend.model.registries import RegistryAuth, registry_host
from lastbackend.secrets import SecretError, Secrets, generate_key
from lastbackend.store.registries import credentials_for, registry_auth
from tests.conftest import ClientFactory, dump
from tests.support import RawEtcd

pytestmark = pytest.mark.etcd

Client = TestClient[Any, Any]

BASE = "/api/registries"
HOST = "registry.local:5000"
KEY = f"/lastbackend/registries/{HOST}"
PASSWORD = "s3cr3t-Pa55word-7f1d"
NEW_PASSWORD = "an0ther-Pa55word-91c2"
ACCOUNT = {"host": HOST, "username": "deploy", "password": PASSWORD, "email": "ops@example.com"}
SECRETS_SEEN = (PASSWORD, NEW_PASSWORD)


class Recorder:
    """The API client, keeping every response body, so a test can prove none held a password."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.bodies: list[str] = []

    async def request(self, method: str, path: str, **kwargs: Any) -> ClientResponse:
        resp = await self.client.request(method, path, **kwargs)
        text = await resp.text()
        self.bodies.append(text + json.dumps(dict(resp.headers)))
        return resp

    async def post(self, path: str, **kwargs: Any) -> ClientResponse:
        return await self.request("POST", path, **kwargs)

    async def get(self, path: str, **kwargs: Any) -> ClientResponse:
        return await self.request("GET", path, **kwargs)

    async def put(self, path: str, **kwargs: Any) -> ClientResponse:
        return await self.request("PUT", path, **kwargs)

    async def patch(self, path: str, **kwargs: Any) -> ClientResponse:
        return await self.request("PATCH", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> ClientResponse:
        return await self.request("DELETE", path, **kwargs)

    @property
    def secrets(self) -> Secrets:
        return self.client.server.app[STATE].secrets


@pytest.fixture
async def api(make_client: ClientFactory, tmp_path: Path) -> AsyncIterator[Recorder]:
    """The API with its key file in a temporary data dir; afterwards, no body held a password."""
    recorder = Recorder(await make_client(data_dir=tmp_path, secret_key=""))  # the key file
    yield recorder
    for text in recorder.bodies:
        for secret in SECRETS_SEEN:
            assert secret not in text


async def create(api: Recorder, **fields: Any) -> dict[str, Any]:
    resp = await api.post(BASE, json={**ACCOUNT, **fields})
    assert resp.status == 201, await resp.text()
    return await resp.json()


def etag(resp: ClientResponse) -> str:
    return resp.headers["ETag"]


async def expect_error(resp: ClientResponse, status: int) -> str:
    """The status and DESIGN.md section 8's error shape; the details, joined."""
    assert resp.status == status, await resp.text()
    errors = (await resp.json())["errors"]
    assert errors
    for error in errors:
        assert set(error) == {"code", "title", "detail"}
        assert error["title"].startswith("CF-")
    return "; ".join(e["detail"] for e in errors)


def stored(raw: bytes) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(raw)
    return value


# create and read --------------------------------------------------------------------------------


async def test_create_stores_the_document_object_with_a_fernet_token(
    api: Recorder, etcd: RawEtcd
) -> None:
    resp = await api.post(BASE, json=ACCOUNT)
    assert resp.status == 201, await resp.text()
    assert resp.headers["Location"] == f"{BASE}/{HOST}"
    body = await resp.json()
    assert body["host"] == HOST
    assert body["username"] == "deploy"
    assert body["email"] == "ops@example.com"
    assert body["password"] == "***"
    assert body["created"] == body["updated"]
    assert body["links"] == {"self": {"href": f"{BASE}/{HOST}"}}

    tree = await dump(etcd)
    assert list(tree) == [KEY]
    raw = tree[KEY]
    kv = await etcd.get(KEY)
    assert kv is not None
    assert etag(resp) == f'"{kv.mod_revision}"'
    assert PASSWORD.encode() not in raw
    value = stored(raw)
    assert set(value) == {"email", "password", "username", "host", "created", "updated"}
    assert value["password"].startswith("gAAAAA")
    assert api.secrets.decrypt(value["password"]) == PASSWORD
    assert _render(raw)["password"] == "***"  # what `lastbackend tree` prints


async def test_the_key_file_decrypts_what_etcd_holds(
    api: Recorder, etcd: RawEtcd, tmp_path: Path
) -> None:
    await create(api)
    key_file = tmp_path / "secret.key"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    token = stored((await dump(etcd))[KEY])["password"]
    assert Secrets(key_file.read_bytes().strip()).decrypt(token) == PASSWORD


async def test_get_and_list_hide_the_password(api: Recorder) -> None:
    await create(api)
    await create(api, host="ghcr.io", username="bot", email="")
    resp = await api.get(f"{BASE}/{HOST}")
    assert resp.status == 200
    one = await resp.json()
    assert one["password"] == "***"
    assert one["username"] == "deploy"
    resp = await api.get(BASE)
    assert resp.status == 200
    listed = await resp.json()
    assert [r["host"] for r in listed["resources"]] == ["ghcr.io", HOST]
    assert [r["password"] for r in listed["resources"]] == ["***", "***"]
    assert listed["resources"][1] == one
    assert listed["pagination"]["total_results"] == 2
    assert int(resp.headers["X-Etcd-Revision"]) > 0


async def test_list_pages_and_orders_by_host(api: Recorder) -> None:
    for host in ("a.example", "b.example", "c.example"):
        await create(api, host=host)
    resp = await api.get(f"{BASE}?per_page=2&order_by=-host")
    page = await resp.json()
    assert [r["host"] for r in page["resources"]] == ["c.example", "b.example"]
    assert page["pagination"]["total_results"] == 3
    assert page["pagination"]["total_pages"] == 2
    assert page["pagination"]["previous"] is None
    assert "page=2" in page["pagination"]["next"]["href"]
    resp = await api.get(f"{BASE}?per_page=2&page=2&order_by=-host")
    assert [r["host"] for r in (await resp.json())["resources"]] == ["a.example"]
    detail = await expect_error(await api.get(f"{BASE}?order_by=name"), 400)
    assert "order_by" in detail


async def test_ip_hosts_work_in_paths(api: Recorder) -> None:
    for host in ("10.0.0.5:5000", "localhost", "[::1]:5000"):
        resp = await api.post(BASE, json={**ACCOUNT, "host": host})
        assert resp.status == 201, await resp.text()
        resp = await api.get(resp.headers["Location"])
        assert resp.status == 200, host
        assert (await resp.json())["host"] == host


async def test_unknown_and_invalid_hosts_are_404(api: Recorder) -> None:
    await expect_error(await api.get(f"{BASE}/nowhere.example"), 404)
    await expect_error(await api.get(f"{BASE}/Not%20A%20Host"), 404)
    await expect_error(await api.delete(f"{BASE}/nowhere.example"), 404)
    await expect_error(await api.patch(f"{BASE}/nowhere.example", json={}), 404)


async def test_duplicate_host_is_409_and_changes_nothing(api: Recorder, etcd: RawEtcd) -> None:
    await create(api)
    before = await dump(etcd)
    resp = await api.post(BASE, json={**ACCOUNT, "username": "someone-else"})
    detail = await expect_error(resp, 409)
    assert HOST in detail
    assert await dump(etcd) == before


# update -----------------------------------------------------------------------------------------


async def test_put_replaces_every_field_and_reencrypts(api: Recorder, etcd: RawEtcd) -> None:
    created = await create(api)
    new = {"host": HOST, "username": "ci", "password": NEW_PASSWORD}
    resp = await api.put(f"{BASE}/{HOST}", json=new)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["username"] == "ci"
    assert body["email"] == ""
    assert body["password"] == "***"
    assert body["created"] == created["created"]
    value = stored((await dump(etcd))[KEY])
    assert api.secrets.decrypt(value["password"]) == NEW_PASSWORD
    creds = await credentials_for(etcd, api.secrets, HOST)
    assert creds is not None
    assert creds.password == NEW_PASSWORD


async def test_put_needs_the_password(api: Recorder, etcd: RawEtcd) -> None:
    await create(api)
    before = await dump(etcd)
    resp = await api.put(f"{BASE}/{HOST}", json={"host": HOST, "username": "ci"})
    assert "password: is required" in await expect_error(resp, 422)
    resp = await api.put(f"{BASE}/{HOST}", json={**ACCOUNT, "password": "***"})
    assert "password: '***' is how responses hide the password" in await expect_error(resp, 422)
    assert await dump(etcd) == before


async def test_patch_without_password_keeps_it(api: Recorder, etcd: RawEtcd) -> None:
    await create(api)
    token = stored((await dump(etcd))[KEY])["password"]
    resp = await api.patch(f"{BASE}/{HOST}", json={"username": "ci", "email": ""})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["username"] == "ci"
    assert body["password"] == "***"
    value = stored((await dump(etcd))[KEY])
    assert value["username"] == "ci"
    assert value["password"] == token  # the very same ciphertext
    creds = await credentials_for(etcd, api.secrets, HOST)
    assert creds is not None
    assert creds.username == "ci"
    assert creds.password == PASSWORD


async def test_patch_with_a_password_changes_it(api: Recorder, etcd: RawEtcd) -> None:
    await create(api)
    resp = await api.patch(f"{BASE}/{HOST}", json={"password": NEW_PASSWORD})
    assert resp.status == 200, await resp.text()
    creds = await credentials_for(etcd, api.secrets, HOST)
    assert creds is not None
    assert creds.password == NEW_PASSWORD
    assert NEW_PASSWORD.encode() not in (await dump(etcd))[KEY]


async def test_a_write_that_changes_nothing_is_skipped(api: Recorder, etcd: RawEtcd) -> None:
    created = await api.post(BASE, json=ACCOUNT)
    before = await etcd.get(KEY)
    for method, payload in (("PATCH", {}), ("PATCH", {"password": PASSWORD}), ("PUT", ACCOUNT)):
        resp = await api.request(method, f"{BASE}/{HOST}", json=payload)
        assert resp.status == 200, await resp.text()
        assert etag(resp) == etag(created)
    assert await etcd.get(KEY) == before


async def test_a_new_host_moves_the_account(api: Recorder, etcd: RawEtcd) -> None:
    await create(api)
    await create(api, host="taken.example")
    moved = {"host": "taken.example", "password": PASSWORD}
    resp = await api.patch(f"{BASE}/{HOST}", json=moved)
    assert "taken.example" in await expect_error(resp, 409)
    resp = await api.patch(f"{BASE}/{HOST}", json={**moved, "host": "moved.example:443"})
    assert resp.status == 200, await resp.text()
    assert sorted(await dump(etcd)) == [
        "/lastbackend/registries/moved.example:443",
        "/lastbackend/registries/taken.example",
    ]
    creds = await credentials_for(etcd, api.secrets, "moved.example:443")
    assert creds is not None
    assert creds.password == PASSWORD


async def test_delete(api: Recorder, etcd: RawEtcd) -> None:
    await create(api)
    await create(api, host="registry.local:50001")
    resp = await api.delete(f"{BASE}/{HOST}")
    assert resp.status == 204
    assert list(await dump(etcd)) == ["/lastbackend/registries/registry.local:50001"]
    await expect_error(await api.get(f"{BASE}/{HOST}"), 404)
    assert await credentials_for(etcd, api.secrets, HOST) is None


# If-Match ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "payload"),
    [("PUT", ACCOUNT), ("PATCH", {"username": "ci"}), ("DELETE", None)],
)
async def test_stale_if_match_is_412_and_changes_nothing(
    api: Recorder, etcd: RawEtcd, method: str, payload: Any
) -> None:
    first = await api.post(BASE, json=ACCOUNT)
    stale = etag(first)
    resp = await api.patch(f"{BASE}/{HOST}", json={"email": "new@example.com"})
    current = etag(resp)
    assert current != stale
    before = await dump(etcd)
    resp = await api.request(method, f"{BASE}/{HOST}", json=payload, headers={"If-Match": stale})
    await expect_error(resp, 412)
    assert await dump(etcd) == before
    resp = await api.request(method, f"{BASE}/{HOST}", json=payload, headers={"If-Match": current})
    assert resp.status in (200, 204), await resp.text()


# bad input --------------------------------------------------------------------------------------


BAD_BODIES = [
    ({k: v for k, v in ACCOUNT.items() if k != "host"}, "host: is required"),
    ({**ACCOUNT, "host": "Not A Host"}, "host: 'Not A Host' is not a registry host"),
    ({**ACCOUNT, "host": "Registry.Local"}, "host: 'Registry.Local' is not a registry host"),
    ({**ACCOUNT, "host": "evil/../x"}, "host: 'evil/../x' is not a registry host"),
    ({**ACCOUNT, "host": "5000"}, "'5000' is no IPv4 address, and a host name's last label"),
    ({**ACCOUNT, "host": "10.0.0.256:5000"}, "'10.0.0.256' is no IPv4 address"),
    ({**ACCOUNT, "host": "r.local:99999"}, "the port must be a number from 1 to 65535"),
    ({**ACCOUNT, "host": 5000}, "host: must be a string, got a number"),
    ({**ACCOUNT, "username": ["deploy"]}, "username: must be a string, got an array"),
    ({**ACCOUNT, "username": ""}, "username: must not be empty"),
    ({**ACCOUNT, "password": 12345}, "password: must be a string, got a number"),
    ({**ACCOUNT, "password": ""}, "password: must not be empty"),
    ({**ACCOUNT, "email": True}, "email: must be a string, got a boolean"),
    ({**ACCOUNT, "email": "not-an-email"}, "email: 'not-an-email' is not an email address"),
    ({**ACCOUNT, "token": "x"}, "token: unknown field"),
    ([ACCOUNT], "body: must be a JSON object, got an array"),
]


@pytest.mark.parametrize(("payload", "message"), BAD_BODIES)
async def test_bad_create_is_422_naming_the_field(
    api: Recorder, etcd: RawEtcd, payload: Any, message: str
) -> None:
    revision = await etcd.status()
    detail = await expect_error(await api.post(BASE, json=payload), 422)
    assert message in detail
    assert await etcd.status() == revision  # nothing written, not even a rewrite
    assert await dump(etcd) == {}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"host": "Not A Host"}, "host: 'Not A Host' is not a registry host"),
        ({"username": 7}, "username: must be a string, got a number"),
        ({"password": "***"}, "password: '***' is how responses hide the password"),
        ({"password": 1}, "password: must be a string, got a number"),
        ({"created": "2020-01-01T00:00:00Z"}, "created: unknown field"),
    ],
)
async def test_bad_patch_is_422_naming_the_field(
    api: Recorder, etcd: RawEtcd, payload: Any, message: str
) -> None:
    await create(api)
    revision = await etcd.status()
    detail = await expect_error(await api.patch(f"{BASE}/{HOST}", json=payload), 422)
    assert message in detail
    assert await etcd.status() == revision


# secrecy ----------------------------------------------------------------------------------------


async def test_the_password_reaches_no_log_line(
    api: Recorder, etcd: RawEtcd, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as events:
        await create(api)
        await api.get(f"{BASE}/{HOST}")
        await api.get(BASE)
        await api.patch(f"{BASE}/{HOST}", json={"password": NEW_PASSWORD})
        await api.put(f"{BASE}/{HOST}", json={**ACCOUNT, "password": PASSWORD})
        await api.post(BASE, json={**ACCOUNT, "email": "bad"})  # a 422 with a password inside
        await api.post(BASE, json=ACCOUNT)  # a 409 with a password inside
        await credentials_for(etcd, api.secrets, HOST)
    assert any(e.get("event") == "request" for e in events)
    logged = repr(events) + caplog.text
    for secret in SECRETS_SEEN:
        assert secret not in logged


async def test_no_etcd_value_holds_the_password(api: Recorder, etcd: RawEtcd) -> None:
    await create(api)
    await create(api, host="other.example", password=NEW_PASSWORD)
    for key, raw in (await dump(etcd)).items():
        for secret in SECRETS_SEEN:
            assert secret.encode() not in raw, key
        assert stored(raw)["password"].startswith("gAAAAA")


async def test_credentials_repr_hides_the_password(api: Recorder, etcd: RawEtcd) -> None:
    await create(api)
    creds = await credentials_for(etcd, api.secrets, HOST)
    assert creds is not None
    assert PASSWORD not in repr(creds)
    auth = await registry_auth(etcd, api.secrets, HOST)
    assert auth == RegistryAuth("deploy", PASSWORD, HOST)
    assert PASSWORD not in repr(auth)


# credentials_for --------------------------------------------------------------------------------


async def test_credentials_for_reads_hosts_case_insensitively(api: Recorder, etcd: RawEtcd) -> None:
    await create(api)
    creds = await credentials_for(etcd, api.secrets, "Registry.LOCAL:5000")
    assert creds is not None
    assert creds.host == HOST
    assert await credentials_for(etcd, api.secrets, "elsewhere.example") is None
    assert await credentials_for(etcd, api.secrets, "not a host") is None


async def test_docker_hub_names_are_aliases(api: Recorder, etcd: RawEtcd) -> None:
    await create(api, host="index.docker.io", username="hubuser")
    creds = await credentials_for(etcd, api.secrets, registry_host("library/nginx:1.27"))
    assert creds is not None
    assert creds.username == "hubuser"
    assert creds.host == "index.docker.io"


async def test_credentials_under_another_key_are_a_clear_error(
    api: Recorder, etcd: RawEtcd
) -> None:
    await create(api)
    with pytest.raises(SecretError, match="encrypted with another key"):
        await credentials_for(etcd, Secrets(generate_key()), HOST)


async def test_configured_key_encrypts_and_no_key_file_is_made(
    make_client: ClientFactory, etcd: RawEtcd, tmp_path: Path
) -> None:
    key = generate_key()
    client = await make_client(data_dir=tmp_path, secret_key=key)
    resp = await client.post(BASE, json=ACCOUNT)
    assert resp.status == 201, await resp.text()
    token = stored((await dump(etcd))[KEY])["password"]
    assert Secrets(key).decrypt(token) == PASSWORD
    assert not (tmp_path / "secret.key").exists()


@pytest.mark.parametrize(
    ("image", "host"),
    [
        ("nginx", "docker.io"),
        ("library/nginx:1.27", "docker.io"),
        ("registry.local:5000/web:v2", "registry.local:5000"),
        ("localhost/app", "localhost"),
        ("Registry.Example.com/team/app@sha256:" + "a" * 64, "registry.example.com"),
        ("ghcr.io/owner/app", "ghcr.io"),
    ],
)
def test_registry_host_of_an_image(image: str, host: str) -> None:
    assert registry_host(image) == host


# auth -------------------------------------------------------------------------------------------


async def test_read_token_reads_but_cannot_write(
    make_client: ClientFactory, etcd: RawEtcd, tmp_path: Path
) -> None:
    client = await make_client(admin_tokens=("a",), read_tokens=("r",), data_dir=tmp_path)
    admin = {"Authorization": "Bearer a"}
    read = {"Authorization": "Bearer r"}
    resp = await client.post(BASE, json=ACCOUNT, headers=admin)
    assert resp.status == 201, await resp.text()
    before = await dump(etcd)
    for method, payload in (
        ("POST", {**ACCOUNT, "host": "other.example"}),
        ("PUT", ACCOUNT),
        ("PATCH", {"username": "x"}),
        ("DELETE", None),
    ):
        path = BASE if method == "POST" else f"{BASE}/{HOST}"
        resp = await client.request(method, path, json=payload, headers=read)
        await expect_error(resp, 403)
        resp = await client.request(method, path, json=payload)
        await expect_error(resp, 401)
    assert await dump(etcd) == before
    resp = await client.get(f"{BASE}/{HOST}", headers=read)
    assert resp.status == 200
    assert (await resp.json())["password"] == "***"
    assert (await client.get(BASE, headers=read)).status == 200


async def test_openapi_documents_the_family(api: Recorder) -> None:
    spec = await (await api.get("/openapi.json")).json()
    assert set(spec["paths"][BASE]) == {"get", "post"}
    assert set(spec["paths"][f"{BASE}/{{host}}"]) == {"get", "put", "patch", "delete"}
    registry = spec["components"]["schemas"]["Registry"]
    assert registry["properties"]["password"]["enum"] == ["***"]
