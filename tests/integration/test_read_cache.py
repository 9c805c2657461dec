"""The API's read cache (store/cache.py) on a real etcd: answers from memory that are still
linearizable, equal to etcd's at the revision they report, right across compaction and relist,
and a 503 rather than a stale answer when etcd is gone."""

from __future__ import annotations

import asyncio
import re
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lastbackend import codec
from lastbackend.api.app import make_app
from lastbackend.api.state import STATE
from lastbackend.config import Settings
from lastbackend.model.common import new_id, now
from lastbackend.model.platform import Meta
from lastbackend.model.pods import Rollout, ServiceStatus
from lastbackend.store import keys
from lastbackend.store import repos as repo_store
from lastbackend.store.cache import ReadCache
from lastbackend.store.embedded import EmbeddedEtcd
from lastbackend.store.etcd import Op, StoreUnavailable
from tests.conftest import new_etcd_server
from tests.integration.test_daemon import Daemon
from tests.support import RawEtcd, eventually, free_ports

pytestmark = pytest.mark.etcd


def cache_of(client: TestClient[Any, Any]) -> ReadCache:
    cache = client.server.app[STATE].cache
    assert cache is not None
    return cache


async def synced(client: TestClient[Any, Any]) -> ReadCache:
    cache = cache_of(client)
    await asyncio.wait_for(cache.informer.synced.wait(), 10)
    return cache


async def create(client: TestClient[Any, Any], name: str, description: str = "") -> dict[str, Any]:
    resp = await client.post("/api/projects", json={"name": name, "description": description})
    assert resp.status == 201, await resp.text()
    return dict(await resp.json())


async def names_at(etcd: RawEtcd, revision: int) -> list[tuple[str, str, str]]:
    """(name, id, description) of every project at ``revision``, in name order, from etcd."""
    index = await etcd.range(keys.HELPER_PROJECTS, revision=revision)
    entries = [
        (name, kv.value.decode())
        for kv in index.kvs
        if (name := keys.entry_of(keys.HELPER_PROJECTS, kv.key)) is not None
    ]
    metas = await etcd.read_many([keys.project_meta(pid) for _, pid in entries], revision=revision)
    found = []
    for name, pid in entries:
        meta = codec.loads(metas[keys.project_meta(pid)].value, Meta)
        assert meta.name == name
        found.append((name, pid, meta.description))
    return found


def listed(body: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(r["name"], r["id"], r["description"]) for r in body["resources"]]


# --- a list at revision R is etcd's list at R ---------------------------------------------------


async def test_a_list_is_what_etcd_holds_at_the_revision_it_reports(make_client, etcd) -> None:
    api = await make_client()
    cache = await synced(api)
    for n in range(30):
        await create(api, f"p{n:02d}", f"first {n}")

    async def churn(n: int) -> None:
        for round_ in range(5):
            name = f"p{(n * 7 + round_) % 30:02d}"
            await api.patch(f"/api/projects/{name}", json={"description": f"w{n} r{round_}"})
        await api.delete(f"/api/projects/p{n:02d}")
        await create(api, f"q{n:02d}", "late")

    writers = asyncio.gather(*(churn(n) for n in range(8)))
    checked = 0
    while not writers.done() or checked < 5:
        for query in ("", "?per_page=7&page=2", "?order_by=-name&per_page=9&page=3"):
            resp = await api.get(f"/api/projects{query}")
            assert resp.status == 200
            revision = int(resp.headers["X-Etcd-Revision"])
            body = await resp.json()
            everything = await names_at(etcd, revision)
            pg = dict(p.split("=") for p in query.lstrip("?").split("&") if p)
            per_page, page = int(pg.get("per_page", 50)), int(pg.get("page", 1))
            ordered = everything[::-1] if pg.get("order_by") == "-name" else everything
            assert listed(body) == ordered[(page - 1) * per_page : page * per_page], revision
            assert body["pagination"]["total_results"] == len(everything)
            checked += 1
        await asyncio.sleep(0)
    await writers
    assert cache.hits > 0, "the lists were answered from the cache"


# --- read your writes across two API processes -------------------------------------------------


@pytest.fixture(scope="module")
def two_apis(
    etcd_server: EmbeddedEtcd, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Daemon, Daemon]]:
    """Two ``lastbackend api`` processes on the session etcd, each with its own read cache."""
    tmp = tmp_path_factory.mktemp("apis")
    if not etcd_server.running:
        etcd_server.start()
    started = []
    for port in free_ports(2):
        args = ["api", "--etcd", etcd_server.endpoint, "--listen", f"127.0.0.1:{port}"]
        started.append(Daemon(tmp, [*args, "--data-dir", str(tmp / f"data-{port}")], port))
    try:
        for daemon in started:
            daemon.wait_ready()
        yield started[0], started[1]
    finally:
        for daemon in started:
            daemon.cleanup()


Step = tuple[str, bool]  # (what, write on the first API rather than the second)
steps = st.lists(
    st.tuples(st.sampled_from(["describe", "rename", "describe", "delete"]), st.booleans()),
    min_size=1,
    max_size=5,
)


async def _writer(
    http: aiohttp.ClientSession, apis: tuple[str, str], tag: str, plan: list[Step]
) -> int:
    """Create a project, then write it per ``plan``; after every acknowledged write, a read on
    the *other* API must show it. Returns the reads checked."""
    name, checked = f"{tag}-0", 0
    async with http.post(apis[0] + "/api/projects", json={"name": name}) as resp:
        assert resp.status == 201
        project = await resp.json()
        revision = int(resp.headers["ETag"].strip('"'))
    reader = apis[1]
    for n, (what, first) in enumerate([("create", True), *plan]):
        writer, reader = (apis[0], apis[1]) if first else (apis[1], apis[0])
        if what == "describe":
            async with http.patch(
                f"{writer}/api/projects/{name}", json={"description": f"d{n}"}
            ) as resp:
                assert resp.status == 200
                project = await resp.json()
                revision = int(resp.headers["ETag"].strip('"'))
        elif what == "rename":
            new = f"{tag}-{n}"
            async with http.patch(f"{writer}/api/projects/{name}", json={"name": new}) as resp:
                assert resp.status == 200
                project = await resp.json()
                revision = int(resp.headers["ETag"].strip('"'))
            name = new
        elif what == "delete":
            async with http.delete(f"{writer}/api/projects/{name}") as resp:
                assert resp.status == 204
            for ref in (name, project["id"]):
                async with http.get(f"{reader}/api/projects/{ref}") as resp:
                    assert resp.status == 404, f"{ref} read on the other API after its delete"
            async with http.get(f"{reader}/api/projects?per_page=5000") as resp:
                names = {r["name"] for r in (await resp.json())["resources"]}
                assert name not in names, "a deleted project still listed on the other API"
            return checked + 3
        # The write is acknowledged: a read that starts now, on the other API, sees it.
        for ref in (name, project["id"]):
            async with http.get(f"{reader}/api/projects/{ref}") as resp:
                assert resp.status == 200, f"{ref} not found on the other API after {what}"
                seen = await resp.json()
                assert int(resp.headers["ETag"].strip('"')) == revision, (what, ref)
                assert (seen["name"], seen["description"]) == (name, project["description"])
        async with http.get(f"{reader}/api/projects?per_page=5000") as resp:
            assert int(resp.headers["X-Etcd-Revision"]) >= revision
            mine = [r for r in (await resp.json())["resources"] if r["id"] == project["id"]]
            assert [(r["name"], r["description"]) for r in mine] == [(name, project["description"])]
        checked += 3
    return checked


async def _memory_reads(http: aiohttp.ClientSession, url: str) -> float:
    async with http.get(url + "/metrics") as resp:
        text = await resp.text()
    found = re.search(r'^lastbackend_api_cache_reads\{answer="memory"\} (\S+)$', text, re.M)
    assert found, "the API exposes its cache's reads"
    return float(found.group(1))


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plans=st.lists(steps, min_size=2, max_size=8))
def test_writes_acknowledged_by_one_api_are_read_by_the_other(
    two_apis: tuple[Daemon, Daemon], plans: list[list[Step]]
) -> None:
    urls = (two_apis[0].url, two_apis[1].url)
    example = new_id()[:8]

    async def run() -> tuple[int, float, float]:
        async with aiohttp.ClientSession() as http:
            before = await _memory_reads(http, urls[1])
            checked = await asyncio.gather(
                *(_writer(http, urls, f"ryw-{example}-{i}", plan) for i, plan in enumerate(plans))
            )
            after = await _memory_reads(http, urls[1])
            return sum(checked), before, after

    checked, before, after = asyncio.run(run())
    assert checked >= 2 * 3
    assert after > before, "the second API answered from its cache"


# --- compaction and relist while serving --------------------------------------------------------


@pytest.fixture
async def private(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedEtcd, RawEtcd, Settings]]:
    """A server of the test's own, which it may compact and stop, a client, and settings."""
    server = new_etcd_server(tmp_path)
    server.start()
    try:
        async with RawEtcd([server.endpoint], timeout=2.0) as client:
            yield server, client, Settings(etcd_endpoints=(server.endpoint,), data_dir=tmp_path)
    finally:
        server.stop()


@pytest.fixture
async def private_api(
    private: tuple[EmbeddedEtcd, RawEtcd, Settings],
) -> AsyncIterator[TestClient[Any, Any]]:
    _, etcd, cfg = private
    client = TestClient(TestServer(make_app(cfg, etcd)))
    await client.start_server()
    yield client
    await client.close()


async def test_answers_stay_right_across_compaction_and_relist(private, private_api) -> None:
    _, etcd, _ = private
    api = private_api
    cache = await synced(api)
    for n in range(10):
        await create(api, f"c{n}")
    now_at = (await etcd.range(keys.ROOT, count_only=True)).revision
    await eventually(lambda: _async(cache.informer.revision >= now_at))
    await etcd.compact(now_at)
    # Compacted under a running cache that has caught up: nothing changes for it.
    resp = await api.get("/api/projects")
    assert [r["name"] for r in (await resp.json())["resources"]] == [f"c{n}" for n in range(10)]
    assert cache.informer.lists == 1

    # Stop its watch, change the tree and compact the history it would resume from.
    task = cache._task
    assert task is not None
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    cache._task = None
    for n in range(5):
        await api.delete(f"/api/projects/c{n}")
    await api.patch("/api/projects/c7", json={"name": "renamed"})
    await create(api, "d0")
    last = (await etcd.range(keys.ROOT, count_only=True)).revision
    await etcd.compact(last)

    # A cache that cannot catch up answers nothing itself: reads go to etcd, and are right.
    fallbacks = cache.fallbacks
    want = sorted(["c5", "c6", "c8", "c9", "d0", "renamed"])
    resp = await api.get("/api/projects")
    assert [r["name"] for r in (await resp.json())["resources"]] == want
    assert (await api.get("/api/projects/c0")).status == 404
    assert (await api.get("/api/projects/renamed")).status == 200
    assert cache.fallbacks == fallbacks + 3

    # Resumed, its watch finds the history gone: it relists (deletes included) and serves again.
    cache.start()
    await eventually(lambda: _async(cache.informer.lists == 2 and cache.informer.revision >= last))
    hits = cache.hits
    resp = await api.get("/api/projects")
    assert int(resp.headers["X-Etcd-Revision"]) >= last
    assert [r["name"] for r in (await resp.json())["resources"]] == want
    for gone in ("c0", "c4", "c7"):
        assert (await api.get(f"/api/projects/{gone}")).status == 404
    assert cache.hits == hits + 4
    assert len(cache.projects) == 6


async def _async(value: object) -> object:
    return value


# --- writes the cache never sees --------------------------------------------------------------


async def test_writes_outside_the_tree_cost_one_wait_a_second_not_every_read(
    private, private_api
) -> None:
    """An etcd shared with another writer moves the revision where the cache's watch sees no
    event: reads then go to etcd, right, and only one a second waits the whole bound."""
    _, etcd, _ = private
    api = private_api
    cache = await synced(api)
    await create(api, "shared")
    stop = asyncio.Event()

    async def elsewhere() -> None:
        n = 0
        while not stop.is_set():
            await etcd.put(f"/someone-else/{n % 10}", str(n))
            n += 1
            await asyncio.sleep(0.005)

    writer = asyncio.create_task(elsewhere())
    try:
        await asyncio.sleep(0.05)
        started = asyncio.get_running_loop().time()
        for _ in range(20):
            resp = await api.get("/api/projects/shared")
            assert resp.status == 200
        elapsed = asyncio.get_running_loop().time() - started
    finally:
        stop.set()
        await writer
    assert cache.fallbacks >= 19
    assert elapsed < 5.0, f"20 reads took {elapsed:.1f} s: each waited the whole bound"


# --- etcd unreachable: 503, never a stale answer ------------------------------------------------


async def test_etcd_unreachable_is_a_503_not_a_stale_answer(private, private_api) -> None:
    server, _, _ = private
    api = private_api
    cache = await synced(api)
    made = await create(api, "kept")
    assert (await api.get("/api/projects/kept")).status == 200
    assert cache.hits >= 1

    server.stop()
    try:
        for path in ("/api/projects/kept", f"/api/projects/{made['id']}", "/api/projects"):
            resp = await api.get(path)
            assert resp.status == 503, (path, resp.status, await resp.text())
            assert "etcd" in (await resp.json())["errors"][0]["detail"]
    finally:
        server.start()
    await eventually(lambda: _status(api, "/api/projects/kept", 200))


async def _status(api: TestClient[Any, Any], path: str, want: int) -> bool:
    return (await api.get(path)).status == want


# --- memory per object --------------------------------------------------------------------------

OBJECTS = 10_000


async def test_memory_per_cached_project(private, capsys) -> None:
    """Python heap the cache holds per project (its KV, the decoded meta, the name index); on a
    server of its own, so no other test deletes 20,000 keys under the session's watchers."""
    _, etcd, _ = private
    t = now()
    ops = []
    for n in range(OBJECTS):
        pid = new_id()
        meta = Meta(f"mem-{n:05d}", t, t, "a project of the memory test")
        ops += [
            Op.put(keys.project_name(meta.name), pid),
            Op.put(keys.project_meta(pid), codec.dumps(meta)),
        ]
        if len(ops) >= 128:
            await etcd.txn([], ops)
            ops = []
    if ops:
        await etcd.txn([], ops)

    tracemalloc.start()
    try:
        base = tracemalloc.take_snapshot()
        cache = ReadCache(etcd)
        cache.start()
        await asyncio.wait_for(cache.informer.synced.wait(), 60)
        held = tracemalloc.take_snapshot()
        for n in range(OBJECTS):  # each read once: its record is then kept too
            assert cache.projects.find(f"mem-{n:05d}") is not None
        read = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    per_object = sum(s.size_diff for s in held.compare_to(base, "filename")) / OBJECTS
    per_read = sum(s.size_diff for s in read.compare_to(base, "filename")) / OBJECTS
    assert len(cache.projects) == OBJECTS
    await cache.close()
    with capsys.disabled():
        print(
            f"\nread cache: {per_object:.0f} bytes of Python heap per cached project, "
            f"{per_read:.0f} once each was read"
        )
    assert per_object < 4096, per_object
    assert per_read < 4096, per_read


# --- the shared revision read -------------------------------------------------------------------


async def test_concurrent_reads_share_revision_calls_and_each_sees_prior_writes(etcd) -> None:
    cache = ReadCache(etcd)
    written = await etcd.put(f"{keys.ROOT}x", "1")
    revisions = await asyncio.gather(*(cache.revisions.current() for _ in range(64)))
    assert min(revisions) >= written
    # One call for the first reader, one more for everyone who arrived while it was in flight.
    assert cache.revisions.calls <= 2
    # A read that begins after a write was acknowledged gets a revision at or past it, even
    # while an earlier call (sent before the write) is still in flight.
    first = asyncio.ensure_future(cache.revisions.current())
    await asyncio.sleep(0)
    written = await etcd.put(f"{keys.ROOT}x", "2")
    assert await cache.revisions.current() >= written
    await first
    await cache.close()


async def test_a_reader_that_gives_up_leaves_the_others_their_revision(etcd) -> None:
    """A client that disconnects mid-read cancels its handler: the read it shared must still
    answer everyone else, and a closed cache fails the reads still waiting, as 503s."""
    cache = ReadCache(etcd)
    written = await etcd.put(f"{keys.ROOT}x", "3")
    leaving, staying = (asyncio.ensure_future(cache.revisions.current()) for _ in range(2))
    await asyncio.sleep(0)
    leaving.cancel()
    assert await staying >= written
    with pytest.raises(asyncio.CancelledError):
        await leaving
    waiting = asyncio.ensure_future(cache.revisions.current())
    await asyncio.sleep(0)  # its call is in flight
    await cache.close()
    with pytest.raises(StoreUnavailable):
        await waiting


# --- build tags from the cache ------------------------------------------------------------------

ARTIFACT = {"type": "file", "url": "https://files.example.com/a.zip"}


def tag_body(build: int, artifacts: int = 2) -> dict[str, Any]:
    return {
        "build_id": str(build),
        "build_url": f"https://ci.example.com/job/{build}",
        "commit_id": f"{build:07x}",
        "artifacts": {f"a{n}": ARTIFACT for n in range(artifacts)},
    }


async def test_build_tags_from_the_cache_are_etcd_at_the_revision_they_report(
    make_client, etcd
) -> None:
    api = await make_client()
    cache = await synced(api)

    async def writer(n: int) -> None:
        for round_ in range(4):
            path = f"/api/repos/r{n % 3}/branches/b{n}/tags/t{round_ % 2}"
            resp = await api.put(path, json=tag_body(n * 10 + round_, artifacts=1 + round_ % 3))
            assert resp.status == 200, await resp.text()
        resp = await api.delete(f"/api/repos/r{n % 3}/branches/b{n}/tags/t0")
        assert resp.status == 200

    writers = asyncio.gather(*(writer(n) for n in range(6)))
    hits = cache.hits
    checked = 0
    while not writers.done() or checked < 3:
        resp = await api.get("/api/data")
        assert resp.status == 200
        body = await resp.json()
        revision = body["revision"]
        at = repo_store.build((await etcd.range(keys.REPOS, revision=revision)).kvs, revision)
        want = {ids[0]: node for ids, node in at.objects.items() if len(ids) == 1}
        assert body["repos"] == codec.unstructure(want), revision
        assert resp.headers["ETag"] == f'"{at.version}"'
        checked += 1
        await asyncio.sleep(0)
    await writers
    assert cache.hits > hits

    # One tag, one artifact, a collection: what etcd holds now, and the same ETags.
    direct = await make_client()
    await cache_of(direct).close()
    direct.server.app[STATE].cache = None  # this one reads etcd
    for path in (
        "/api/repos/r1/branches/b1/tags/t1",
        "/api/repos/r1/branches/b1/tags/t1/artifacts/a0",
        "/api/repos/r1/branches/b1/tags",
        "/api/repos/r1/tags",
    ):
        cached = await api.get(path)
        fallback = await direct.get(path)
        assert cached.status == fallback.status == 200, path
        assert await cached.json() == await fallback.json(), path
        assert cached.headers["ETag"] == fallback.headers["ETag"], path
    assert (await api.get("/api/repos/r1/branches/b1/tags/t0")).status == 404


async def test_a_tag_written_on_one_api_is_read_on_another(make_client, etcd) -> None:
    first, second = await make_client(), await make_client()
    await synced(first)
    cache = await synced(second)
    hits = cache.hits

    async def one(n: int) -> None:
        path = f"/api/repos/ryw/branches/b{n}/tags/t"
        resp = await first.put(path, json=tag_body(n))
        assert resp.status == 200
        etag = resp.headers["ETag"]
        seen = await second.get(path)
        assert seen.status == 200
        assert seen.headers["ETag"] == etag
        data = await (await second.get("/api/data")).json()
        assert data["repos"]["ryw"]["branches"][f"b{n}"]["tags"]["t"]["build_id"] == str(n)
        resp = await second.delete(path)
        assert resp.status == 200
        assert (await first.get(path)).status == 404

    await asyncio.gather(*(one(n) for n in range(20)))
    assert cache.hits >= hits + 40


# --- services ------------------------------------------------------------------------------------


async def test_a_service_written_on_one_api_is_read_on_another(make_client, etcd) -> None:
    first, second = await make_client(), await make_client()
    await synced(first)
    cache = await synced(second)
    other = await create(first, "svc-other")
    await create(first, "svc-ryw")
    hits = cache.hits

    async def one(n: int) -> None:
        base = "/api/projects/svc-ryw/services"
        resp = await first.post(base, json={"name": f"s{n}", "image": "busybox:1"})
        assert resp.status == 201, await resp.text()
        made = await resp.json()
        for ref in (f"s{n}", made["id"]):
            seen = await second.get(f"{base}/{ref}")
            assert seen.status == 200, ref
            assert seen.headers["ETag"] == resp.headers["ETag"]
        # A service id is found only under its own project.
        assert (
            await second.get(f"/api/projects/{other['id']}/services/{made['id']}")
        ).status == 404
        resp = await second.patch(f"{base}/s{n}", json={"name": f"t{n}", "description": "moved"})
        assert resp.status == 200, await resp.text()
        seen = await first.get(f"{base}/{made['id']}")
        assert (await seen.json())["name"] == f"t{n}"
        assert seen.headers["ETag"] == resp.headers["ETag"]
        assert (await first.get(f"{base}/s{n}")).status == 404, "the old name is gone"
        names = {s["name"] for s in (await (await first.get(base)).json())["resources"]}
        assert f"t{n}" in names
        assert f"s{n}" not in names
        assert (await first.delete(f"{base}/t{n}")).status in (200, 204)
        assert (await second.get(f"{base}/{made['id']}")).status == 404

    await asyncio.gather(*(one(n) for n in range(12)))
    assert cache.hits >= hits + 12 * 3, "the second API answered from its cache"
    assert (await (await second.get("/api/projects/svc-ryw/services")).json())["resources"] == []


async def test_a_status_written_by_a_controller_is_in_the_next_read(make_client, etcd) -> None:
    """The controller writes ``status`` straight into etcd: a read after that write sees it."""
    api = await make_client()
    cache = await synced(api)
    project = await create(api, "svc-status")
    resp = await api.post("/api/projects/svc-status/services", json={"name": "web"})
    assert resp.status == 201, await resp.text()
    sid = (await resp.json())["id"]
    path = f"/api/projects/svc-status/services/{sid}"
    assert (await (await api.get(path)).json())["status"]["rollout"] is None
    hits = cache.hits
    status_key = keys.service_part(project["id"], sid, "status")
    for n in range(5):
        rollout = Rollout("progressing", revision=n + 1, ready=n, desired=5, started=now())
        await etcd.put(status_key, codec.dumps(ServiceStatus(rollout)))
        seen = await api.get(path)
        assert seen.status == 200
        assert (await seen.json())["status"]["rollout"]["revision"] == n + 1
    assert cache.hits >= hits + 5


async def test_apps_from_the_cache_are_what_etcd_gives(make_client, etcd) -> None:
    """``/v3/apps`` (one app, and lists across spaces, filtered and ordered) from the cache of
    a second API, read-your-writes while a first one writes, then equal to an etcd read."""
    first, second = await make_client(), await make_client()
    await synced(first)
    cache = await synced(second)
    spaces = [(await create(first, f"space-{n}"))["id"] for n in range(3)]
    hits = cache.hits

    async def writer(n: int) -> None:
        body = {"name": f"app-{n}", "relationships": {"space": {"guid": spaces[n % 3]}}}
        resp = await first.post("/v3/apps", json=body)
        assert resp.status == 201, await resp.text()
        guid = (await resp.json())["guid"]
        seen = await second.get(f"/v3/apps/{guid}")
        assert seen.status == 200
        assert (await seen.json())["name"] == f"app-{n}"
        resp = await first.patch(f"/v3/apps/{guid}", json={"name": f"renamed-{n}"})
        assert resp.status == 200, await resp.text()
        listed = await (await second.get(f"/v3/apps?names=renamed-{n}")).json()
        assert [a["guid"] for a in listed["resources"]] == [guid]
        if n % 4 == 0:
            assert (await first.delete(f"/v3/apps/{guid}")).status == 204
            assert (await second.get(f"/v3/apps/{guid}")).status == 404

    await asyncio.gather(*(writer(n) for n in range(16)))
    assert cache.hits >= hits + 16 * 2

    direct = await make_client()
    await cache_of(direct).close()
    direct.server.app[STATE].cache = None  # this one reads etcd
    for query in (
        "",
        "?order_by=name&per_page=5&page=2",
        "?order_by=-created_at&per_page=4",
        f"?space_guids={spaces[1]},{spaces[2]}&order_by=-name",
        "?names=renamed-3,renamed-5,nothing",
    ):
        cached, fallback = (
            await second.get(f"/v3/apps{query}"),
            await direct.get(f"/v3/apps{query}"),
        )
        assert cached.status == fallback.status == 200, query
        mine, theirs = await cached.json(), await fallback.json()
        assert mine["resources"] == theirs["resources"], query
        assert mine["pagination"]["total_results"] == theirs["pagination"]["total_results"]
