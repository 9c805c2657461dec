"""``/api/repos/...`` and ``/api/data`` (seed 003) against a real etcd.

The document's sequence over HTTP at every level, what lands in etcd (one key per object, read
back as an admin with ``etcdctl`` would), replacement, bad input that writes nothing, ETags,
dry runs, tokens and concurrent PUTs under one new branch.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import ClientFactory, dump
from tests.support import RawEtcd

pytestmark = pytest.mark.etcd

Client = TestClient[Any, Any]

REPO = "/api/repos/qpid-jms"
BRANCH = f"{REPO}/branches/main"
TAG = f"{BRANCH}/tags/untested"
KEYS = "/lastbackend/repos/qpid-jms"

FILE = {"type": "file", "url": "https://files.example.com/amq-broker-7.1.zip"}
CONTAINER = {
    "type": "container",
    "registry_url": "https://quay.io",
    "repository": "amq/broker",
    "image_id": "sha256:9f2c4a1b",
}
MAVEN = {
    "type": "maven",
    "repository_url": "https://repo.example.com/maven2",
    "group_id": "org.apache.qpid",
    "artifact_id": "qpid-jms-client",
    "version": "0.40.0",
}
RPM = {
    "type": "rpm",
    "repository_url": "https://rpm.example.com/el7",
    "name": "qpid-proton-cpp-devel",
    "version": "0.26.0",
    "release": "1.el7",
}
ARTIFACTS = {
    "amq-broker.zip": FILE,
    "sha256:9f2c4a1b": CONTAINER,
    "qpid-jms-client": MAVEN,
    "qpid-proton-cpp-devel": RPM,
}
TAG_BODY = {
    "build_id": "1234",
    "build_url": "https://ci.example.com/job/qpid-jms/1234",
    "commit_id": "5e8f1a7",
    "artifacts": ARTIFACTS,
}
TAG_FIELDS = {k: v for k, v in TAG_BODY.items() if k != "artifacts"}


async def call(api: Client, method: str, path: str, body: Any = None, **kw: Any) -> Any:
    """The response's status and JSON body (``None`` when it has none)."""
    resp = await api.request(method, path, json=body, **kw)
    text = await resp.text()
    return resp.status, (json.loads(text) if text else None)


async def ok(api: Client, method: str, path: str, body: Any = None) -> Any:
    status, data = await call(api, method, path, body)
    assert status == 200, (method, path, data)
    return data


def detail(data: Any) -> str:
    assert set(data) == {"errors"}, data
    return " | ".join(e["detail"] for e in data["errors"])


# --- the document's sequence ---------------------------------------------------------------------


async def test_the_documents_sequence_at_every_level(api: Client) -> None:
    source = {"source_url": "https://github.com/apache/qpid-jms"}
    assert await ok(api, "PUT", REPO, source) == {**source, "branches": {}}
    assert await ok(api, "GET", REPO) == {**source, "branches": {}}

    job = {"job_url": "https://ci.example.com/job/qpid-jms"}
    assert await ok(api, "PUT", BRANCH, job) == {**job, "tags": {}}
    assert await ok(api, "GET", REPO) == {**source, "branches": {"main": {**job, "tags": {}}}}

    assert await ok(api, "PUT", TAG, TAG_BODY) == TAG_BODY
    tag = TAG_BODY
    branch = {**job, "tags": {"untested": tag}}
    repo = {**source, "branches": {"main": branch}}

    assert await ok(api, "GET", REPO) == repo
    assert await ok(api, "GET", BRANCH) == branch
    assert await ok(api, "GET", TAG) == tag
    for artifact_id, artifact in ARTIFACTS.items():
        assert await ok(api, "GET", f"{TAG}/artifacts/{artifact_id}") == artifact

    assert await ok(api, "GET", "/api/repos") == {"qpid-jms": repo}
    assert await ok(api, "GET", f"{REPO}/branches") == {"main": branch}
    assert await ok(api, "GET", f"{BRANCH}/tags") == {"untested": tag}
    assert await ok(api, "GET", f"{REPO}/tags") == {"main/untested": tag}
    assert await ok(api, "GET", f"{TAG}/artifacts") == ARTIFACTS
    everything = await ok(api, "GET", "/api/data")
    assert set(everything) == {"repos", "revision"}
    assert everything["repos"] == {"qpid-jms": repo}
    assert isinstance(everything["revision"], int)

    # Delete from the bottom up: each answers with what it deleted, then is gone everywhere.
    levels = [
        (f"{TAG}/artifacts/qpid-jms-client", MAVEN),
        (TAG, {**tag, "artifacts": {k: v for k, v in ARTIFACTS.items() if v is not MAVEN}}),
        (BRANCH, {**job, "tags": {}}),
        (REPO, {**source, "branches": {}}),
    ]
    for path, was in levels:
        assert await ok(api, "DELETE", path) == was
        for method in ("GET", "HEAD", "DELETE"):
            resp = await api.request(method, path)
            assert resp.status == 404, (method, path)
        _, data = await call(api, "GET", path)
        assert "not found" in detail(data)
    assert await ok(api, "GET", "/api/repos") == {}
    assert (await ok(api, "GET", "/api/data"))["repos"] == {}


async def test_each_object_is_its_own_key(api: Client, etcd: RawEtcd) -> None:
    body = {
        "source_url": "git@github.com:apache/qpid-jms.git",
        "branches": {
            "main": {"job_url": "https://ci/job/1", "tags": {"untested": TAG_BODY}},
            "1.x": {"job_url": "https://ci/job/2", "tags": {}},
        },
    }
    assert await ok(api, "PUT", REPO, body) == {
        **body,
        "branches": {"1.x": body["branches"]["1.x"], "main": body["branches"]["main"]},
    }
    tag_keys = f"{KEYS}/branches/main/tags/untested"
    expected = {
        f"{KEYS}/meta": {"source_url": body["source_url"]},
        f"{KEYS}/branches/main/meta": {"job_url": "https://ci/job/1"},
        f"{KEYS}/branches/1.x/meta": {"job_url": "https://ci/job/2"},
        f"{tag_keys}/meta": TAG_FIELDS,
        **{f"{tag_keys}/artifacts/{a}": v for a, v in ARTIFACTS.items()},
    }
    stored = await dump(etcd, "/lastbackend/repos/")
    assert {k: json.loads(v) for k, v in stored.items()} == expected
    for value in stored.values():  # compact JSON, as every value in the tree
        assert value == json.dumps(json.loads(value), separators=(",", ":")).encode()
    # Whatever the body's order, GET answers in id order, nested whole.
    assert list((await ok(api, "GET", REPO))["branches"]) == ["1.x", "main"]


async def test_put_creates_missing_parents_with_empty_fields(api: Client, etcd: RawEtcd) -> None:
    artifact = f"{TAG}/artifacts/amq-broker.zip"
    assert await ok(api, "PUT", artifact, FILE) == FILE
    assert await ok(api, "GET", REPO) == {
        "source_url": "",
        "branches": {
            "main": {
                "job_url": "",
                "tags": {
                    "untested": {
                        "build_id": "",
                        "build_url": "",
                        "commit_id": "",
                        "artifacts": {"amq-broker.zip": FILE},
                    }
                },
            }
        },
    }
    assert sorted(await dump(etcd, "/lastbackend/repos/")) == [
        f"{KEYS}/branches/main/meta",
        f"{KEYS}/branches/main/tags/untested/artifacts/amq-broker.zip",
        f"{KEYS}/branches/main/tags/untested/meta",
        f"{KEYS}/meta",
    ]
    # A PUT below an existing parent leaves the parent's fields alone.
    await ok(api, "PUT", REPO, {"source_url": "https://x/y", "branches": {"main": {}}})
    await ok(api, "PUT", TAG, {"build_id": "7"})
    assert (await ok(api, "GET", REPO))["source_url"] == "https://x/y"


# --- replacement ---------------------------------------------------------------------------------


async def test_put_replaces_children_not_in_the_body_are_deleted(
    api: Client, etcd: RawEtcd
) -> None:
    await ok(api, "PUT", TAG, TAG_BODY)
    smaller = {**TAG_FIELDS, "artifacts": {"amq-broker.zip": FILE}}
    assert await ok(api, "PUT", TAG, smaller) == smaller
    assert await ok(api, "GET", f"{TAG}/artifacts") == {"amq-broker.zip": FILE}
    assert sorted(await dump(etcd, f"{KEYS}/branches/main/tags/untested/artifacts/")) == [
        f"{KEYS}/branches/main/tags/untested/artifacts/amq-broker.zip"
    ]

    # A repo PUT without branches removes every branch, tag and artifact under it.
    await ok(api, "PUT", f"{REPO}/branches/1.x/tags/tested", TAG_BODY)
    assert await ok(api, "PUT", REPO, {"source_url": "s"}) == {"source_url": "s", "branches": {}}
    assert list(await dump(etcd, "/lastbackend/repos/")) == [f"{KEYS}/meta"]
    # ...and never touches a repo whose id merely starts the same.
    await ok(api, "PUT", "/api/repos/qpid-jms2/branches/main", {"job_url": "j"})
    await ok(api, "PUT", REPO, {"source_url": "t"})
    assert (await ok(api, "GET", "/api/repos/qpid-jms2/branches/main")) == {
        "job_url": "j",
        "tags": {},
    }


async def test_a_put_that_changes_nothing_writes_nothing(api: Client, etcd: RawEtcd) -> None:
    first = await api.put(TAG, json=TAG_BODY)
    assert first.status == 200
    revision = await etcd.status()
    again = await api.put(TAG, json=TAG_BODY)
    assert again.status == 200
    assert await again.json() == TAG_BODY
    assert again.headers["ETag"] == first.headers["ETag"]
    assert await etcd.status() == revision


# --- ETags ---------------------------------------------------------------------------------------


async def test_etag_head_and_if_none_match(api: Client) -> None:
    put = await api.put(TAG, json=TAG_BODY)
    paths = [
        REPO,
        BRANCH,
        TAG,
        f"{TAG}/artifacts/amq-broker.zip",
        "/api/repos",
        f"{REPO}/branches",
        f"{REPO}/tags",
        f"{BRANCH}/tags",
        f"{TAG}/artifacts",
        "/api/data",
    ]
    for path in paths:
        got = await api.get(path)
        assert got.status == 200
        tag = got.headers["ETag"]
        assert re.fullmatch(r'"[0-9]+-[0-9]+"', tag), tag
        head = await api.head(path)
        assert head.status == 200
        assert head.headers["ETag"] == tag
        assert await head.read() == b""
        for offered in (tag, f"W/{tag}", f'"nope", {tag}', "*"):
            cached = await api.get(path, headers={"If-None-Match": offered})
            assert cached.status == 304, (path, offered)
            assert cached.headers["ETag"] == tag
            assert await cached.read() == b""
        other = await api.get(path, headers={"If-None-Match": '"1-1"'})
        assert other.status == 200
    assert put.headers["ETag"] == (await api.get(TAG)).headers["ETag"]


async def test_every_change_below_an_object_changes_its_etag(api: Client) -> None:
    """An ETag names content: each change gives one the client has not got, and an ETag seen
    before comes back only with the content it had then (here: after 'extra' came and went)."""
    await ok(api, "PUT", TAG, TAG_BODY)
    seen: dict[str, dict[str, Any]] = {TAG: {}, REPO: {}}

    async def look(path: str, before: str | None = None) -> str:
        resp = await api.get(path, headers={"If-None-Match": before} if before else {})
        assert resp.status == 200, path
        tag, body = resp.headers["ETag"], await resp.json()
        assert seen[path].setdefault(tag, body) == body, (path, tag)
        return tag

    tags = {path: await look(path) for path in seen}
    changes = [
        ("PUT", f"{TAG}/artifacts/extra", FILE),
        ("DELETE", f"{TAG}/artifacts/extra", None),  # the remaining keys are as they were
        ("DELETE", f"{TAG}/artifacts/qpid-jms-client", None),
        ("PUT", TAG, {**TAG_FIELDS, "artifacts": {"amq-broker.zip": FILE}}),  # deletes only
        ("PUT", TAG, {**TAG_FIELDS, "build_id": "1235", "artifacts": {"amq-broker.zip": FILE}}),
    ]
    for method, path, body in changes:
        await ok(api, method, path, body)
        for watched in seen:
            tags[watched] = await look(watched, before=tags[watched])
    assert len(seen[TAG]) == len(changes)  # all distinct but the one that came back
    # Deleting a whole repo changes the collection's and /api/data's ETags too.
    await ok(api, "PUT", "/api/repos/other", {})
    tags = {p: (await api.get(p)).headers["ETag"] for p in ("/api/repos", "/api/data")}
    await ok(api, "DELETE", "/api/repos/other")
    for path, before in tags.items():
        assert (await api.get(path, headers={"If-None-Match": before})).status == 200, path


# --- bad input -----------------------------------------------------------------------------------

MISSING = [
    (kind["type"], field)
    for kind in (FILE, CONTAINER, MAVEN, RPM)
    for field in kind
    if field != "type"
]


@pytest.mark.parametrize(("kind", "field"), MISSING)
async def test_an_artifact_missing_a_field_is_refused(
    api: Client, etcd: RawEtcd, kind: str, field: str
) -> None:
    await ok(api, "PUT", TAG, TAG_BODY)
    before, revision = await dump(etcd), await etcd.status()
    artifact = next(a for a in (FILE, CONTAINER, MAVEN, RPM) if a["type"] == kind)
    broken = {k: v for k, v in artifact.items() if k != field}
    cases = [
        (f"{TAG}/artifacts/x", broken, f"{field}: is required"),
        (TAG, {**TAG_BODY, "artifacts": {"x": broken}}, f"artifacts['x'].{field}: is required"),
        (
            REPO,
            {"branches": {"b": {"tags": {"t": {"artifacts": {"x": broken}}}}}},
            f"branches['b'].tags['t'].artifacts['x'].{field}: is required",
        ),
        (f"{TAG}/artifacts/x", {**artifact, field: ""}, f"{field}: must not be empty"),
        (f"{TAG}/artifacts/x", {**artifact, field: None}, f"{field}: must be a string, got null"),
    ]
    for path, body, expected in cases:
        status, data = await call(api, "PUT", path, body)
        assert status == 422, (path, data)
        assert expected in detail(data), (expected, data)
    assert await dump(etcd) == before
    assert await etcd.status() == revision


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        (
            {"type": "zip", "url": "u"},
            "type",
            'must be one of file, container, maven, rpm, got "zip"',
        ),
        ({"url": "u"}, "type", "must be one of file, container, maven, rpm, got null"),
        ({"type": "file", "url": "u", "size": 1}, "size", "unknown field"),
        ({"type": "file", "url": "a\nb"}, "url", "must not contain control characters"),
        ([FILE], "", "must be an object, got an array"),
    ],
)
async def test_a_bad_artifact_is_refused(
    api: Client, etcd: RawEtcd, body: Any, field: str, reason: str
) -> None:
    revision = await etcd.status()
    cases = [
        (f"{TAG}/artifacts/x", body, f"{field or 'body'}: {reason}"),
        (
            TAG,
            {"artifacts": {"x": body}},
            f"artifacts['x']{'.' + field if field else ''}: {reason}",
        ),
    ]
    for path, sent, expected in cases:
        status, data = await call(api, "PUT", path, sent)
        assert status == 422, data
        assert expected in detail(data), (expected, data)
    assert await etcd.status() == revision
    assert await dump(etcd) == {}


@pytest.mark.parametrize(
    ("path", "segment"),
    [
        ("/api/repos/a%20b", "repo"),
        ("/api/repos/" + "x" * 129, "repo"),
        ("/api/repos/r/branches/a%25b", "branch"),
        ("/api/repos/r/branches/b/tags/a%2Fb", "tag"),
        ("/api/repos/r/branches/b/tags/t/artifacts/caf%C3%A9", "artifact"),
    ],
)
async def test_a_bad_id_in_the_path_is_a_400_naming_it(
    api: Client, etcd: RawEtcd, path: str, segment: str
) -> None:
    revision = await etcd.status()
    for method in ("PUT", "GET", "DELETE"):
        body = FILE if segment == "artifact" else {}
        resp = await api.request(method, path, json=body if method == "PUT" else None)
        assert resp.status == 400, (method, path, await resp.text())
        assert detail(await resp.json()).startswith(f"{segment} id in the path: ")
    assert await etcd.status() == revision


async def test_bad_ids_in_a_body_are_refused_and_good_ones_kept(api: Client, etcd: RawEtcd) -> None:
    revision = await etcd.status()
    for bad in ("..", "a/b", "", "x" * 129, "sp ace"):
        status, data = await call(api, "PUT", REPO, {"branches": {bad: {}}})
        assert status == 422, (bad, data)
        assert detail(data).startswith(f"branches[{bad!r}]: "), data
    assert await etcd.status() == revision
    odd = ["1.0+build.7", "name@sha256:ab", "sha256:9f2c", "a~b", "_x-y.z", "-"]
    await ok(api, "PUT", REPO, {"branches": {b: {} for b in odd}})
    assert sorted(await ok(api, "GET", f"{REPO}/branches")) == sorted(odd)
    for b in odd:
        assert await ok(api, "GET", f"{REPO}/branches/{b}") == {"job_url": "", "tags": {}}


async def test_a_body_too_big_for_one_transaction_is_a_413(api: Client, etcd: RawEtcd) -> None:
    revision = await etcd.status()
    many = {f"a{i}": FILE for i in range(130)}
    status, data = await call(api, "PUT", TAG, {"artifacts": many})
    assert status == 413, data
    assert "PUT the children separately" in detail(data)
    assert await etcd.status() == revision
    fits = {f"a{i}": FILE for i in range(100)}
    assert await ok(api, "PUT", TAG, {"artifacts": fits}) == {
        **dict.fromkeys(TAG_FIELDS, ""),
        "artifacts": fits,
    }


# --- dry run -------------------------------------------------------------------------------------


async def test_dry_run_validates_and_writes_nothing(api: Client, etcd: RawEtcd) -> None:
    revision = await etcd.status()
    for flag in ("1", "true"):
        resp = await api.put(f"{TAG}?dry-run={flag}", json=TAG_BODY)
        assert resp.status == 200
        assert await resp.json() == TAG_BODY
        status, data = await call(api, "PUT", f"{TAG}?dry-run={flag}", {"artifacts": {"x": {}}})
        assert status == 422, data
    assert await etcd.status() == revision
    assert (await api.get(TAG)).status == 404
    assert (await api.delete(f"{TAG}?dry-run=1")).status == 404

    await ok(api, "PUT", TAG, TAG_BODY)
    revision = await etcd.status()
    assert await ok(api, "DELETE", f"{REPO}?dry-run=true") == await ok(api, "GET", REPO)
    changed = {**TAG_BODY, "build_id": "9"}
    assert await ok(api, "PUT", f"{TAG}?dry-run=1", changed) == changed
    assert await etcd.status() == revision
    assert await ok(api, "GET", TAG) == TAG_BODY
    status, data = await call(api, "PUT", f"{TAG}?dry-run=maybe", TAG_BODY)
    assert status == 400
    assert "dry-run" in detail(data)


# --- tokens --------------------------------------------------------------------------------------


async def test_a_read_token_reads_but_cannot_write(
    make_client: ClientFactory, etcd: RawEtcd
) -> None:
    api = await make_client(admin_tokens=("adm",), read_tokens=("ro",))
    admin = {"Authorization": "Bearer adm"}
    read = {"Authorization": "Bearer ro"}
    resp = await api.put(TAG, json=TAG_BODY, headers=admin)
    assert resp.status == 200
    before, revision = await dump(etcd), await etcd.status()
    for path in (REPO, TAG, f"{TAG}/artifacts", "/api/data"):
        assert (await api.get(path, headers=read)).status == 200
        assert (await api.head(path, headers=read)).status == 200
    for method, path in [("PUT", REPO), ("PUT", TAG), ("DELETE", TAG), ("DELETE", REPO)]:
        resp = await api.request(method, path, json={} if method == "PUT" else None, headers=read)
        assert resp.status == 403, (method, path)
        resp = await api.request(f"{method}", f"{path}?dry-run=1", headers=read)
        assert resp.status == 403
    assert (await api.get(REPO)).status == 401
    assert await dump(etcd) == before
    assert await etcd.status() == revision


# --- concurrency ---------------------------------------------------------------------------------


async def test_concurrent_puts_under_one_new_branch_all_land(api: Client, etcd: RawEtcd) -> None:
    tags = [f"build-{i}" for i in range(12)]
    bodies = {t: {**TAG_BODY, "build_id": t} for t in tags}
    results = await asyncio.gather(
        *(call(api, "PUT", f"{BRANCH}/tags/{t}", bodies[t]) for t in tags)
    )
    assert [status for status, _ in results] == [200] * len(tags)
    assert await ok(api, "GET", f"{BRANCH}/tags") == bodies
    # The repo and the branch were created once, by whichever PUT got there first.
    for key in (f"{KEYS}/meta", f"{KEYS}/branches/main/meta"):
        kv = await etcd.get(key)
        assert kv is not None
        assert kv.version == 1, key


async def test_collections_of_a_missing_parent_are_404(api: Client) -> None:
    for path in (
        f"{REPO}/branches",
        f"{REPO}/tags",
        f"{BRANCH}/tags",
        f"{TAG}/artifacts",
        f"{TAG}/artifacts/x",
    ):
        status, data = await call(api, "GET", path)
        assert status == 404, path
        assert "not found" in detail(data)
    assert await ok(api, "GET", "/api/repos") == {}
    assert (await ok(api, "GET", "/api/data"))["repos"] == {}
