"""``/v3/packages`` against a real etcd and a real blob directory: each package type as seed 000
shows it, secrets that never come back and never reach etcd in clear, bits uploads good and bad,
lists, deletes and the app cascade.

Apps are made through ``/api/projects/{p}/services`` (every service is an app), so these tests
do not depend on ``/v3/apps``.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import tarfile
import time
import zipfile
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from lastbackend import codec
from lastbackend.api.state import STATE
from lastbackend.model.apps import BitsPackage, Package
from lastbackend.model.common import now
from lastbackend.sources.blobs import BlobStore
from lastbackend.store import keys
from tests.conftest import ClientFactory, dump
from tests.support import RawEtcd

pytestmark = pytest.mark.etcd

Client = TestClient[Any, Any]
PASSWORD = "s3cr3t-Docker-Pa55-4e1f"
GIT_PASSWORD = "g1t-Pa55word-0b7c"
API_KEY = "api-key-9f8e7d6c5b4a"
SECRETS = (PASSWORD, GIT_PASSWORD, API_KEY)
DOCKER_CREDS = {
    "user": "deploy",
    "password": PASSWORD,
    "email": "ops@example.com",
    "login_server": "https://index.docker.io/v1/",
}
GIT_CREDS = {"user": "git-user", "password": GIT_PASSWORD, "api_key": API_KEY}


# helpers -----------------------------------------------------------------------------------------


class Recorder:
    """The API client, keeping every response, so a test can prove none held a secret."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.bodies: list[str] = []

    async def request(self, method: str, path: str, **kwargs: Any) -> ClientResponse:
        resp = await self.client.request(method, path, **kwargs)
        self.bodies.append(await resp.text() + json.dumps(dict(resp.headers)))
        return resp

    async def call(self, method: str, path: str, expect: int = 200, **kwargs: Any) -> Any:
        resp = await self.request(method, path, **kwargs)
        text = await resp.text()
        assert resp.status == expect, f"{method} {path} -> {resp.status} {text}"
        return json.loads(text) if text and resp.content_type == "application/json" else text

    @property
    def blobs(self) -> BlobStore:
        return self.client.server.app[STATE].blobs

    @property
    def state(self) -> Any:
        return self.client.server.app[STATE]


@pytest.fixture
async def api(make_client: ClientFactory, tmp_path: Path) -> AsyncIterator[Recorder]:
    """The API with its blobs and key file in a temporary data dir; afterwards, no response
    held a secret."""
    recorder = Recorder(await make_client(data_dir=tmp_path))
    yield recorder
    for text in recorder.bodies:
        for secret in SECRETS:
            assert secret not in text


async def make_app(api: Recorder, project: str = "demo", name: str = "web") -> tuple[str, str]:
    """A project (made if missing) and a service in it: an app. Returns (pid, app guid)."""
    resp = await api.request("GET", f"/api/projects/{project}")
    if resp.status == 404:
        pid = (await api.call("POST", "/api/projects", 201, json={"name": project}))["id"]
    else:
        pid = (await resp.json())["id"]
    service = await api.call("POST", f"/api/projects/{pid}/services", 201, json={"name": name})
    return pid, service["id"]


def rel(app: str) -> dict[str, Any]:
    return {"relationships": {"app": {"guid": app}}}


async def create(api: Recorder, app: str, kind: str = "bits", **fields: Any) -> dict[str, Any]:
    body = {"type": kind, **fields, **rel(app)}
    return dict(await api.call("POST", "/v3/packages", 201, json=body))


def zip_of(files: dict[str, bytes], *, stored: bool = False) -> bytes:
    buffer = io.BytesIO()
    method = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def tar_gz_of(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            archive.addfile(info)
    return gzip.compress(buffer.getvalue())


def form(data: bytes, field: str = "bits", filename: str = "app.zip") -> aiohttp.FormData:
    out = aiohttp.FormData()
    out.add_field(field, data, filename=filename, content_type="application/octet-stream")
    return out


async def upload(
    api: Recorder, guid: str, data: bytes, expect: int = 200, **kwargs: Any
) -> dict[str, Any]:
    return dict(
        await api.call("POST", f"/v3/packages/{guid}/upload", expect, data=form(data, **kwargs))
    )


def details(body: dict[str, Any]) -> str:
    for error in body["errors"]:
        assert set(error) == {"code", "title", "detail"}
        assert error["title"].startswith("CF-")
    return "; ".join(e["detail"] for e in body["errors"])


async def revision(etcd: RawEtcd) -> int:
    return await etcd.status()


async def stored_package(etcd: RawEtcd, pid: str, app: str, guid: str) -> Package:
    kv = await etcd.get(keys.package(pid, app, guid))
    assert kv is not None
    return codec.loads(kv.value, Package)  # type: ignore[arg-type, no-any-return]


SITE = {"index.html": b"<h1>hello</h1>", "css/site.css": b"h1 { color: red }"}


# creating and showing each type ----------------------------------------------------------------


async def test_bits_package_awaits_upload(api: Recorder, etcd: RawEtcd) -> None:
    pid, app = await make_app(api)
    resp = await api.request("POST", "/v3/packages", json={"type": "bits", **rel(app)})
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    guid = body["guid"]
    assert resp.headers["Location"] == f"/v3/packages/{guid}"
    assert set(body) == {
        "guid",
        "type",
        "state",
        "error",
        "hash",
        "created_at",
        "updated_at",
        "links",
    }
    assert body["type"] == "bits"
    assert body["state"] == "AWAITING_UPLOAD"
    assert body["error"] is None
    assert body["hash"] == {"type": "sha1", "value": None}
    assert body["created_at"].endswith("Z")
    assert body["links"]["self"]["href"] == f"/v3/packages/{guid}"
    assert body["links"]["app"]["href"] == f"/v3/apps/{app}"
    assert body["links"]["upload"] == {"href": f"/v3/packages/{guid}/upload", "method": "POST"}
    raw = await dump(etcd)
    assert raw[keys.package_owner(guid)] == f"{pid}:{app}".encode()
    assert json.loads(raw[keys.package(pid, app, guid)])["state"] == "AWAITING_UPLOAD"
    assert await api.call("GET", f"/v3/packages/{guid}") == body


async def test_docker_package_is_ready_and_its_password_secret(
    api: Recorder, etcd: RawEtcd
) -> None:
    pid, app = await make_app(api)
    body = await create(api, app, "docker", image="cloudfoundry/runtime-ci:latest",
                        credentials=DOCKER_CREDS)  # fmt: skip
    assert set(body) == {
        "guid",
        "type",
        "state",
        "image_path",
        "credentials",
        "created_at",
        "updated_at",
        "links",
    }
    assert body["state"] == "READY"
    assert body["image_path"] == "cloudfoundry/runtime-ci:latest"
    assert body["credentials"] == {**DOCKER_CREDS, "password": "***"}
    assert "upload" not in body["links"]
    guid = body["guid"]
    assert await api.call("GET", f"/v3/packages/{guid}") == body
    listed = await api.call("GET", "/v3/packages")
    assert listed["resources"] == [body]

    raw = await dump(etcd)
    assert all(PASSWORD.encode() not in value for value in raw.values())
    value = json.loads(raw[keys.package(pid, app, guid)])
    token = value["credentials"]["password"]
    assert token.startswith("gAAAAA"), "stored as a Fernet token"
    assert api.state.secrets.decrypt(token) == PASSWORD
    package = await stored_package(etcd, pid, app, guid)
    clear = api.state.packages.clear_credentials(package)
    assert clear is not None
    assert clear.password == PASSWORD
    assert clear.user == "deploy"


async def test_git_package_with_a_ref_and_secrets(api: Recorder, etcd: RawEtcd) -> None:
    pid, app = await make_app(api)
    body = await create(api, app, "git", url="http://git.awesome.com:master", credentials=GIT_CREDS)
    assert set(body) == {
        "guid",
        "type",
        "state",
        "url",
        "credentials",
        "created_at",
        "updated_at",
        "links",
    }
    assert body["state"] == "READY"
    assert body["url"] == "http://git.awesome.com:master"
    assert body["credentials"] == {"user": "git-user", "password": "***", "api_key": "***"}
    raw = await dump(etcd)
    for secret in (GIT_PASSWORD, API_KEY):
        assert all(secret.encode() not in value for value in raw.values())
    stored = json.loads(raw[keys.package(pid, app, body["guid"])])["credentials"]
    assert stored["password"].startswith("gAAAAA")
    assert stored["api_key"].startswith("gAAAAA")
    package = await stored_package(etcd, pid, app, body["guid"])
    clear = api.state.packages.clear_credentials(package)
    assert clear is not None
    assert (clear.password, clear.api_key) == (GIT_PASSWORD, API_KEY)


async def test_packages_without_credentials_show_null(api: Recorder) -> None:
    _, app = await make_app(api)
    docker = await create(api, app, "docker", image="busybox")
    assert docker["credentials"] is None
    git = await create(api, app, "git", url="https://example.com/repo.git")
    assert git["credentials"] is None
    partial = await create(api, app, "git", url="https://example.com/r.git",
                           credentials={"user": "u", "api_key": API_KEY})  # fmt: skip
    assert partial["credentials"] == {"user": "u", "password": "", "api_key": "***"}


async def test_create_under_the_app(api: Recorder, etcd: RawEtcd) -> None:
    pid, app = await make_app(api)
    body = await api.call("POST", f"/v3/apps/{app}/packages", 201, json={"type": "bits"})
    assert (await etcd.get(keys.package(pid, app, body["guid"]))) is not None
    await api.call("POST", f"/v3/apps/{app}/packages", 201, json={"type": "bits", **rel(app)})
    _, other = await make_app(api, name="other")
    before = await revision(etcd)
    resp = await api.request(
        "POST", f"/v3/apps/{app}/packages", json={"type": "bits", **rel(other)}
    )
    assert resp.status == 422
    assert "relationships.app.guid" in details(await resp.json())
    missing = "0b3a2f2e-8f5e-4a4b-9a55-5d0b7f7a1c11"
    resp = await api.request("POST", f"/v3/apps/{missing}/packages", json={"type": "bits"})
    assert resp.status == 404
    assert await revision(etcd) == before


UNKNOWN_APP = "3f2c8a54-1b7e-4d2a-9c6f-0e5b7a1d2c3e"


@pytest.mark.parametrize(
    ("payload", "field", "reason"),
    [
        ({"type": "bits"}, "relationships.app.guid", "is required"),
        ({"type": "bits", **rel(UNKNOWN_APP)}, "relationships.app.guid", "not found"),
        ({"type": "bits", **rel("not-a-uuid")}, "relationships.app.guid", "not a UUID"),
        ({"type": "zip", **rel(UNKNOWN_APP)}, "type", "must be one of bits, docker, git"),
        ({**rel(UNKNOWN_APP)}, "type", "must be one of"),
        ({"type": "docker", "image": "Not An Image!"}, "image", "not a docker image"),
        ({"type": "docker"}, "image", "is required"),
        ({"type": "git", "url": "ftp://x"}, "url", "not a git URL"),
        (
            {"type": "docker", "image": "busybox", "credentials": {"password": 1}},
            "credentials.password",
            "must be a string",
        ),
        ({"type": "bits", "extra": 1}, "extra", "unknown field"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
async def test_bad_create_writes_nothing(
    api: Recorder, etcd: RawEtcd, payload: dict[str, Any], field: str, reason: str
) -> None:
    _, app = await make_app(api)
    if "relationships" not in payload and payload.get("type") in ("docker", "git"):
        payload = {**payload, **rel(app)}
    if payload.get("extra"):
        payload = {**payload, **rel(app)}
    before = await revision(etcd)
    resp = await api.request("POST", "/v3/packages", json=payload)
    assert resp.status == 422, await resp.text()
    text = details(await resp.json())
    assert field in text
    assert reason in text
    assert await revision(etcd) == before


# uploads -----------------------------------------------------------------------------------------


async def test_upload_zip_makes_it_ready(api: Recorder, etcd: RawEtcd) -> None:
    pid, app = await make_app(api)
    guid = (await create(api, app))["guid"]
    archive = zip_of(SITE)
    body = await upload(api, guid, archive)
    assert body["state"] == "READY"
    assert body["error"] is None
    assert body["hash"] == {"type": "sha1", "value": hashlib.sha1(archive).hexdigest()}
    assert await api.call("GET", f"/v3/packages/{guid}") == body
    stored = await stored_package(etcd, pid, app, guid)
    assert isinstance(stored, BitsPackage)
    assert stored.hash.value == hashlib.sha1(archive).hexdigest()
    blob = api.blobs.package_path(guid)
    assert blob.is_file()
    with tarfile.open(blob) as tar:
        # What the zip holds: its implied "css" directory is made when staging unpacks it.
        assert sorted(tar.getnames()) == ["css/site.css", "index.html"]
        member = tar.extractfile("index.html")
        assert member is not None
        assert member.read() == SITE["index.html"]
    assert list((api.blobs.root / "tmp").iterdir()) == [], "temporary files are cleaned up"


async def test_upload_tar_gz_with_a_link(api: Recorder) -> None:
    _, app = await make_app(api)
    guid = (await create(api, app))["guid"]
    archive = tar_gz_of({"app/Procfile": b"web: ./run\n"}, links={"app/current": "Procfile"})
    body = await upload(api, guid, archive, filename="whatever.bin")
    assert body["state"] == "READY"
    assert body["hash"]["value"] == hashlib.sha1(archive).hexdigest()
    with tarfile.open(api.blobs.package_path(guid)) as tar:
        assert sorted(tar.getnames()) == ["app/Procfile", "app/current"]


async def test_uploads_larger_than_the_json_limit_stream(api: Recorder) -> None:
    """The app's client_max_size (1 MiB) is for JSON bodies; uploads stream past it."""
    _, app = await make_app(api)
    guid = (await create(api, app))["guid"]
    archive = zip_of({"big.bin": os.urandom(3 << 20)}, stored=True)
    body = await upload(api, guid, archive)
    assert body["state"] == "READY"
    assert api.blobs.package_path(guid).stat().st_size > 3 << 20


def _escape_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("../../etc/cron.d/evil")
        info.size = 1
        archive.addfile(info, io.BytesIO(b"x"))
    return buffer.getvalue()


def _device_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("index.html")
        info.size = 1
        archive.addfile(info, io.BytesIO(b"x"))
        info = tarfile.TarInfo("dev/sda")
        info.type = tarfile.BLKTYPE
        archive.addfile(info)
    return buffer.getvalue()


BAD_UPLOADS = {
    "not-an-archive": (b"hello, I am a text file\n" * 10, "is not a zip or tar.gz archive"),
    "escape": (_escape_tar(), "escapes the app directory"),
    "symlink": (
        tar_gz_of({"index.html": b"x"}, links={"passwd": "../../../etc/passwd"}),
        "symlink 'passwd' points outside the app directory",
    ),
    "device": (_device_tar(), "'dev/sda' is a device file"),
    "empty": (zip_of({}), "the archive holds no files"),
    "zip-bomb": (zip_of({"zeros": b"\0" * (16 << 20)}), "unpacks to more than the limit"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
async def test_bad_upload_fails_the_package(
    make_client: ClientFactory, tmp_path: Path, etcd: RawEtcd, case: str
) -> None:
    api = Recorder(await make_client(data_dir=tmp_path, max_upload_bytes=8 << 20))
    _, app = await make_app(api)
    guid = (await create(api, app))["guid"]
    data, reason = BAD_UPLOADS[case]
    resp = await api.request("POST", f"/v3/packages/{guid}/upload", data=form(data))
    assert resp.status == 422, await resp.text()
    text = details(await resp.json())
    assert text.startswith("bits: ")
    assert reason in text
    shown = await api.call("GET", f"/v3/packages/{guid}")
    assert shown["state"] == "FAILED"
    assert reason in shown["error"]
    assert shown["hash"]["value"] is None
    assert not api.blobs.exists("packages", guid)
    assert list((api.blobs.root / "tmp").iterdir()) == []
    # A failed upload may be retried.
    good = zip_of(SITE)
    retried = await upload(api, guid, good)
    assert retried["state"] == "READY"
    assert retried["error"] is None
    assert retried["hash"]["value"] == hashlib.sha1(good).hexdigest()


async def test_too_large_upload(make_client: ClientFactory, tmp_path: Path, etcd: RawEtcd) -> None:
    api = Recorder(await make_client(data_dir=tmp_path, max_upload_bytes=4096))
    _, app = await make_app(api)
    guid = (await create(api, app))["guid"]
    data = zip_of({"noise": os.urandom(64 << 10)}, stored=True)
    resp = await api.request("POST", f"/v3/packages/{guid}/upload", data=form(data))
    assert resp.status == 422, await resp.text()
    assert details(await resp.json()) == "bits: the upload is larger than the limit of 4 KiB"
    shown = await api.call("GET", f"/v3/packages/{guid}")
    assert shown["state"] == "FAILED"
    assert shown["error"] == "the upload is larger than the limit of 4 KiB"
    assert not api.blobs.exists("packages", guid)


async def test_upload_refused_for_docker_and_git(api: Recorder, etcd: RawEtcd) -> None:
    _, app = await make_app(api)
    for kind, fields in (("docker", {"image": "busybox"}), ("git", {"url": "https://h/r.git"})):
        guid = (await create(api, app, kind, **fields))["guid"]
        before = await revision(etcd)
        resp = await api.request("POST", f"/v3/packages/{guid}/upload", data=form(zip_of(SITE)))
        assert resp.status == 422
        assert f"only bits packages take an upload; this one is a {kind}" in details(
            await resp.json()
        )
        assert await revision(etcd) == before


async def test_upload_refused_when_ready(api: Recorder, etcd: RawEtcd) -> None:
    _, app = await make_app(api)
    guid = (await create(api, app))["guid"]
    first = await upload(api, guid, zip_of(SITE))
    before = await revision(etcd)
    resp = await api.request("POST", f"/v3/packages/{guid}/upload", data=form(zip_of({"a": b"b"})))
    assert resp.status == 422
    assert "already uploaded" in details(await resp.json())
    assert await revision(etcd) == before
    assert await api.call("GET", f"/v3/packages/{guid}") == first


async def test_upload_without_bits_writes_nothing(api: Recorder, etcd: RawEtcd) -> None:
    _, app = await make_app(api)
    guid = (await create(api, app))["guid"]
    before = await revision(etcd)
    for kwargs in (
        {"data": form(zip_of(SITE), field="file")},
        {"json": {"bits": "nope"}},
        {"data": b"raw bytes", "headers": {"Content-Type": "application/zip"}},
        {},
    ):
        resp = await api.request("POST", f"/v3/packages/{guid}/upload", **kwargs)
        assert resp.status in (400, 422), await resp.text()
        assert "bits" in details(await resp.json())
    assert await revision(etcd) == before
    assert (await api.call("GET", f"/v3/packages/{guid}"))["state"] == "AWAITING_UPLOAD"


async def test_processing_upload_is_taken_over_only_when_stale(
    api: Recorder, etcd: RawEtcd
) -> None:
    pid, app = await make_app(api)
    guid = (await create(api, app))["guid"]
    key = keys.package(pid, app, guid)
    package = await stored_package(etcd, pid, app, guid)
    busy = attrs.evolve(package, state="PROCESSING_UPLOAD", updated=now())
    await etcd.put(key, codec.dumps(busy))
    resp = await api.request("POST", f"/v3/packages/{guid}/upload", data=form(zip_of(SITE)))
    assert resp.status == 409
    assert "another upload" in details(await resp.json())
    stale = attrs.evolve(busy, updated=now() - timedelta(minutes=6))
    await etcd.put(key, codec.dumps(stale))
    body = await upload(api, guid, zip_of(SITE))
    assert body["state"] == "READY"


async def test_unknown_package(api: Recorder) -> None:
    missing = "0b3a2f2e-8f5e-4a4b-9a55-5d0b7f7a1c11"
    for method, path in (
        ("GET", f"/v3/packages/{missing}"),
        ("GET", "/v3/packages/not-a-guid"),
        ("DELETE", f"/v3/packages/{missing}"),
        ("POST", f"/v3/packages/{missing}/upload"),
        ("GET", f"/v3/apps/{missing}/packages"),
    ):
        resp = await api.request(method, path)
        assert resp.status == 404, (method, path)


# lists -------------------------------------------------------------------------------------------


async def test_lists_filter_and_page(api: Recorder) -> None:
    _, web = await make_app(api, name="web")
    _, worker = await make_app(api, name="worker")
    bits = await create(api, web)
    ready = await create(api, web)
    await upload(api, ready["guid"], zip_of(SITE))
    docker = await create(api, web, "docker", image="busybox")
    git = await create(api, worker, "git", url="https://example.com/r.git")

    async def guids(query: str, path: str = "/v3/packages") -> list[str]:
        body = await api.call("GET", f"{path}?{query}")
        return [r["guid"] for r in body["resources"]]

    everything = [bits["guid"], ready["guid"], docker["guid"], git["guid"]]
    assert sorted(await guids("")) == sorted(everything)
    assert await guids("types=docker,git") in (
        [docker["guid"], git["guid"]],
        [git["guid"], docker["guid"]],
    )
    assert sorted(await guids("states=READY")) == sorted(
        [ready["guid"], docker["guid"], git["guid"]]
    )
    assert await guids("states=AWAITING_UPLOAD") == [bits["guid"]]
    assert await guids(f"app_guids={worker}") == [git["guid"]]
    assert sorted(await guids(f"app_guids={worker},{web}&types=git,bits")) == sorted(
        [bits["guid"], ready["guid"], git["guid"]]
    )
    assert await guids("app_guids=0b3a2f2e-8f5e-4a4b-9a55-5d0b7f7a1c11") == []
    assert sorted(await guids("", f"/v3/apps/{web}/packages")) == sorted(everything[:3])
    assert await guids("types=docker", f"/v3/apps/{web}/packages") == [docker["guid"]]

    page = await api.call("GET", "/v3/packages?per_page=3&page=2")
    assert page["pagination"]["total_results"] == 4
    assert page["pagination"]["total_pages"] == 2
    assert len(page["resources"]) == 1
    assert page["pagination"]["next"] is None
    assert "page=1" in page["pagination"]["previous"]["href"]
    first = await api.call("GET", "/v3/packages?per_page=3&order_by=-created_at")
    assert len(first["resources"]) == 3
    assert "order_by=-created_at" in first["pagination"]["next"]["href"]

    for query, name in (
        ("states=DONE", "states"),
        ("types=svn", "types"),
        ("order_by=name", "order_by"),
        ("per_page=0", "per_page"),
    ):
        resp = await api.request("GET", f"/v3/packages?{query}")
        assert resp.status == 400
        assert f"query parameter {name}" in details(await resp.json())


# deletes -----------------------------------------------------------------------------------------


async def test_delete_removes_the_package_its_helper_and_its_bits(
    api: Recorder, etcd: RawEtcd
) -> None:
    pid, app = await make_app(api)
    guid = (await create(api, app))["guid"]
    await upload(api, guid, zip_of(SITE))
    assert api.blobs.exists("packages", guid)
    resp = await api.request("DELETE", f"/v3/packages/{guid}")
    assert resp.status == 204
    raw = await dump(etcd)
    assert keys.package(pid, app, guid) not in raw
    assert keys.package_owner(guid) not in raw
    assert not api.blobs.exists("packages", guid)
    assert (await api.request("GET", f"/v3/packages/{guid}")).status == 404
    assert (await api.request("DELETE", f"/v3/packages/{guid}")).status == 404


async def test_delete_with_a_stale_if_match(api: Recorder, etcd: RawEtcd) -> None:
    _, app = await make_app(api)
    guid = (await create(api, app))["guid"]
    resp = await api.request("GET", f"/v3/packages/{guid}")
    etag = resp.headers["ETag"]
    await upload(api, guid, zip_of(SITE))
    resp = await api.request("DELETE", f"/v3/packages/{guid}", headers={"If-Match": etag})
    assert resp.status == 412
    assert (await api.request("GET", f"/v3/packages/{guid}")).status == 200


async def test_deleting_the_app_removes_package_helpers(api: Recorder, etcd: RawEtcd) -> None:
    pid, app = await make_app(api)
    _, other = await make_app(api, name="other")
    mine = [(await create(api, app))["guid"] for _ in range(3)]
    theirs = (await create(api, other))["guid"]
    resp = await api.request("DELETE", f"/api/projects/{pid}/services/{app}")
    assert resp.status == 204
    raw = await dump(etcd)
    for guid in mine:
        assert keys.package_owner(guid) not in raw
        assert (await api.request("GET", f"/v3/packages/{guid}")).status == 404
    assert keys.package_owner(theirs) in raw
    assert not [k for k in raw if f"/services/{app}/" in k]


async def test_a_slow_upload_keeps_its_claim_fresh(
    api: Recorder, etcd: RawEtcd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While an archive is normalized the package's ``updated`` is refreshed (so neither gc nor
    another upload takes a live upload for a dead one), and the outcome still lands."""
    from lastbackend.api import packages as family
    from lastbackend.sources import archive

    real = archive.normalize

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(1.2)
        return real(*args, **kwargs)

    monkeypatch.setattr(family, "UPLOAD_HEARTBEAT", 0.2)
    monkeypatch.setattr(family.archive, "normalize", slow)
    pid, app = await make_app(api)
    guid = (await create(api, app))["guid"]
    key = keys.package(pid, app, guid)
    task = asyncio.create_task(upload(api, guid, zip_of(SITE)))
    seen: list[int] = []
    while not task.done():
        kv = await etcd.get(key)
        assert kv is not None
        if json.loads(kv.value)["state"] == "PROCESSING_UPLOAD" and kv.mod_revision not in seen:
            seen.append(kv.mod_revision)
        await asyncio.sleep(0.05)
    body = await task
    assert body["state"] == "READY"
    assert len(seen) >= 3, f"claimed once and refreshed at least twice: {seen}"
