"""The gc controller removes what crashes and lost nodes leave, and nothing that is alive."""

from __future__ import annotations

import asyncio
import io
import os
import time
import zipfile
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lastbackend import codec
from lastbackend.controllers.gc import BLOB_GRACE, TEMP_MAX_AGE, GarbageCollector
from lastbackend.controllers.runner import ControllerRunner
from lastbackend.model.apps import BitsPackage, BuildpackLifecycle, Droplet
from lastbackend.model.common import new_id, now
from lastbackend.model.platform import Container, Meta
from lastbackend.model.pods import Pod, PodSpec
from lastbackend.sources.blobs import BlobStore
from lastbackend.store import keys
from lastbackend.store.etcd import Op
from tests.conftest import ClientFactory, dump
from tests.support import RawEtcd, eventually

pytestmark = pytest.mark.etcd

PID, SID, GONE = (
    "0b3a2f2e-8f5e-4a4b-9a55-5d0b7f7a1c11",
    "1c4b3e3f-9a6f-4b5c-8b66-6e1c8a8b2d22",
    "2d5c4f40-ab70-4c6d-9c77-7f2d9b9c3e33",
)


def container(cid: str, pod: str) -> bytes:
    t = now()
    return codec.dumps(Container(cid, "running", t, t, {}, pod=pod, node="n1"))


def pod(pod_id: str, service: str) -> bytes:
    return codec.dumps(Pod(pod_id, PID, service, "n1", "t1", PodSpec(image="busybox"), now()))


@pytest.fixture
async def gc(etcd: RawEtcd) -> AsyncIterator[ControllerRunner]:
    runner = ControllerRunner(GarbageCollector(), etcd, lease_ttl=2)
    yield runner
    await runner.stop(grace=1)


async def test_sweeps_orphans_and_keeps_the_living(etcd: RawEtcd, gc: ControllerRunner) -> None:
    t = now()
    await etcd.put(keys.service_part(PID, SID, "meta"), codec.dumps(Meta("web", t, t)))
    alive = {
        keys.pod_spec("n1", "live-pod"): pod("live-pod", SID),
        keys.pod("live-pod"): f"{PID}:{SID}".encode(),
        keys.container(PID, SID, "c-live"): container("c-live", "live-pod"),
        keys.container(PID, SID, "c-manual"): container("c-manual", ""),  # not ours to judge
    }
    garbage = {
        keys.container(PID, SID, "c-dead-node"): container("c-dead-node", "moved-pod"),
        keys.pod("lonely-helper"): f"{PID}:{SID}".encode(),
        keys.pod_spec("n1", "pod-of-gone"): pod("pod-of-gone", GONE),
    }
    for key, value in {**alive, **garbage}.items():
        await etcd.put(key, value)
    gc.start()

    async def swept() -> bool:
        found = {kv.key for kv in (await etcd.range(keys.ROOT)).kvs}
        return not (found & garbage.keys())

    for _ in range(200):
        if await swept():
            break
        await asyncio.sleep(0.05)
    found = {kv.key for kv in (await etcd.range(keys.ROOT)).kvs}
    assert not (found & garbage.keys()), found & garbage.keys()
    assert alive.keys() <= found


async def test_a_sweep_walks_what_it_judges_not_the_tree(
    etcd: RawEtcd, gc: ControllerRunner
) -> None:
    """A tree of many services and few containers: the sweep's index holds the containers,
    follows their changes, and an orphan written later is still removed. (Sweeping every key
    of the tree on each change made a cold start over 100,000 services O(N^2).)"""
    t = now()
    meta = codec.dumps(Meta("web", t, t))
    ops = [Op.put(keys.service_part(PID, f"svc-{n}", part), meta) for n in range(300)
           for part in ("meta", "config")]  # fmt: skip
    for chunk in range(0, len(ops), 100):
        await etcd.txn([], ops[chunk : chunk + 100])
    live = keys.container(PID, "svc-1", "c-manual")
    await etcd.put(live, container("c-manual", ""))
    gc.start()

    async def synced() -> bool:
        return gc.synced

    await eventually(synced)
    controller = gc.controller
    assert isinstance(controller, GarbageCollector)
    assert set(controller.judged.kinds["containers"]) == {live}
    assert sum(len(kind) for kind in controller.judged.kinds.values()) == 1

    orphan = keys.container(PID, "svc-2", "c-dead-node")
    await etcd.put(orphan, container("c-dead-node", "moved-pod"))
    # the pods cache must pass the orphan's revision before it is judged: a pod written after it
    await etcd.put(keys.pod_spec("n1", "live-pod"), pod("live-pod", "svc-1"))
    await etcd.put(keys.pod("live-pod"), f"{PID}:svc-1".encode())

    async def removed() -> bool:
        return await etcd.get(orphan) is None

    await eventually(removed)
    assert await etcd.get(live) is not None

    async def forgotten() -> bool:
        return set(controller.judged.kinds["containers"]) == {live}

    await eventually(forgotten)


# apps, packages, droplets and their blobs ------------------------------------------------------


def package(state: str, updated: datetime) -> bytes:
    return codec.dumps(BitsPackage(created=updated, updated=updated, state=state))  # type: ignore[arg-type]


def droplet(package_guid: str) -> bytes:
    t = now()
    return codec.dumps(Droplet(t, t, package_guid, BuildpackLifecycle()))


async def test_sweeps_lost_app_helpers_and_fails_interrupted_uploads(
    etcd: RawEtcd, gc: ControllerRunner
) -> None:
    t = now()
    living_pkg, living_drop, stale_pkg, busy_pkg = (new_id() for _ in range(4))
    await etcd.put(keys.service_part(PID, SID, "meta"), codec.dumps(Meta("web", t, t)))
    alive = {
        keys.app_owner(SID): PID.encode(),
        keys.package(PID, SID, living_pkg): package("READY", t),
        keys.package_owner(living_pkg): f"{PID}:{SID}".encode(),
        keys.droplet(PID, SID, living_drop): droplet(living_pkg),
        keys.droplet_owner(living_drop): f"{PID}:{SID}".encode(),
        keys.package(PID, SID, stale_pkg): package("PROCESSING_UPLOAD", t - timedelta(minutes=6)),
        keys.package_owner(stale_pkg): f"{PID}:{SID}".encode(),
        keys.package(PID, SID, busy_pkg): package("PROCESSING_UPLOAD", t - timedelta(minutes=2)),
        keys.package_owner(busy_pkg): f"{PID}:{SID}".encode(),
    }
    garbage = {
        keys.app_owner(GONE): PID.encode(),
        keys.package_owner(new_id()): f"{PID}:{SID}".encode(),
        keys.package_owner(new_id()): f"{PID}:{GONE}".encode(),
        keys.package_owner(new_id()): b"not an owner",
        keys.droplet_owner(new_id()): f"{PID}:{SID}".encode(),
    }
    for key, value in {**alive, **garbage}.items():
        await etcd.put(key, value)
    gc.start()

    async def swept() -> bool:
        found = await dump(etcd)
        return not (found.keys() & garbage.keys()) and b"interrupted" in found.get(
            keys.package(PID, SID, stale_pkg), b""
        )

    await eventually(swept)
    found = await dump(etcd)
    assert alive.keys() <= found.keys()
    failed = codec.loads(found[keys.package(PID, SID, stale_pkg)], BitsPackage)
    assert failed.state == "FAILED"
    assert failed.error == "upload interrupted, upload again"
    busy = codec.loads(found[keys.package(PID, SID, busy_pkg)], BitsPackage)
    assert busy.state == "PROCESSING_UPLOAD", "a live upload (refreshed recently) is left alone"
    assert found[keys.package(PID, SID, living_pkg)] == alive[keys.package(PID, SID, living_pkg)]


async def test_deleting_an_app_leaves_blobs_that_gc_removes(
    etcd: RawEtcd, make_client: ClientFactory, tmp_path: Path
) -> None:
    client = await make_client(data_dir=tmp_path)
    blobs = BlobStore(tmp_path / "blobs")

    async def call(method: str, path: str, expect: int, **kwargs: Any) -> Any:
        resp = await client.request(method, path, **kwargs)
        assert resp.status == expect, await resp.text()
        return await resp.json() if resp.content_type == "application/json" else None

    pid = (await call("POST", "/api/projects", 201, json={"name": "demo"}))["id"]
    apps = [
        (await call("POST", f"/api/projects/{pid}/services", 201, json={"name": n}))["id"]
        for n in ("doomed", "kept")
    ]
    made: dict[str, tuple[str, str]] = {}  # app -> (package, droplet)
    for app in apps:
        body = {"type": "bits", "relationships": {"app": {"guid": app}}}
        guid = (await call("POST", "/v3/packages", 201, json=body))["guid"]
        form = aiohttp.FormData()
        form.add_field("bits", zip_bytes({"index.html": b"hi"}), filename="a.zip")
        await call("POST", f"/v3/packages/{guid}/upload", 200, data=form)
        drop = (await call("POST", f"/v3/packages/{guid}/droplets", 201, json={}))["guid"]
        blobs.append_log(drop, "-----> staged")
        made[app] = (guid, drop)
    await call("DELETE", f"/api/projects/{pid}/services/{apps[0]}", 204)
    doomed_pkg, doomed_drop = made[apps[0]]
    kept_pkg, kept_drop = made[apps[1]]
    assert blobs.exists("packages", doomed_pkg), "files are not part of the etcd txn"
    assert blobs.exists("droplets", doomed_drop)
    # Old enough to be judged: a blob younger than BLOB_GRACE is left for a later sweep.
    long_ago = time.time() - 2 * BLOB_GRACE
    for path in (*blobs.root.glob("packages/*"), *blobs.root.glob("droplets/*")):
        os.utime(path, (long_ago, long_ago))
    young_orphan = new_id()
    blobs.write("packages", young_orphan, b"just renamed into place")
    abandoned = blobs.temp_path("upload")
    abandoned.write_bytes(b"cut off")
    os.utime(abandoned, (time.time() - 2 * TEMP_MAX_AGE,) * 2)

    async def orphans_gone() -> bool:
        left = (blobs.exists("packages", doomed_pkg), blobs.exists("droplets", doomed_drop))
        return not any(left) and not abandoned.exists()

    runner = ControllerRunner(GarbageCollector(blobs), etcd, lease_ttl=2)
    runner.start()
    try:
        await eventually(orphans_gone)
    finally:
        await runner.stop(grace=1)
    assert blobs.exists("packages", kept_pkg)
    assert blobs.exists("droplets", kept_drop)
    assert blobs.exists("packages", young_orphan)


async def test_build_logs_of_deleted_services_and_images_are_removed(
    etcd: RawEtcd, make_client: ClientFactory, tmp_path: Path
) -> None:
    client = await make_client(data_dir=tmp_path)
    blobs = BlobStore(tmp_path / "blobs")

    async def call(method: str, path: str, expect: int, **kwargs: Any) -> Any:
        resp = await client.request(method, path, **kwargs)
        assert resp.status == expect, await resp.text()
        return await resp.json() if resp.content_type == "application/json" else None

    source = {"hub": "github.com", "owner": "acme", "repo": "site", "branch": "main"}
    pid = (await call("POST", "/api/projects", 201, json={"name": "demo"}))["id"]
    services = f"/api/projects/{pid}/services"
    doomed_svc, kept_svc = [
        (await call("POST", services, 201, json={"name": n, "source": source}))["id"]
        for n in ("doomed", "kept")
    ]
    doomed_img, kept_img = [
        (await call("POST", "/api/images", 201, json={"name": n, "source": source}))["id"]
        for n in ("acme/doomed", "acme/kept")
    ]
    builds = [f"{services}/{sid}/builds" for sid in (doomed_svc, kept_svc)]
    builds += [f"/api/images/{iid}/builds" for iid in (doomed_img, kept_img)]
    for url in builds:
        for _ in range(2):
            await call("POST", url, 201)
    owners = (doomed_svc, kept_svc, doomed_img, kept_img)
    logs = {f"{owner}-{n}" for owner in owners for n in (1, 2)}
    never_built = f"{kept_svc}-3"  # a number its service never had: its key cannot exist
    for name in (*logs, never_built):
        blobs.append_log(name, "-----> Build 1", kind="build-logs")
    await call("DELETE", f"{services}/{doomed_svc}", 204)
    await call("DELETE", f"/api/images/{doomed_img}", 204)
    assert await etcd.get(keys.build(pid, doomed_svc, 1)) is None
    assert await etcd.get(keys.image_build(doomed_img, 1)) is None
    assert await etcd.get(keys.image_build(kept_img, 2)) is not None
    long_ago = time.time() - 2 * BLOB_GRACE
    for path in blobs.root.glob("build-logs/*"):
        os.utime(path, (long_ago, long_ago))
    young = f"{doomed_img}-9"  # written a moment ago: judged only after BLOB_GRACE
    blobs.append_log(young, "-----> Build 9", kind="build-logs")
    doomed = {name for name in logs if name.startswith((doomed_svc, doomed_img))}
    doomed.add(never_built)

    async def orphans_gone() -> bool:
        return not any(blobs.exists("build-logs", name) for name in doomed)

    runner = ControllerRunner(GarbageCollector(blobs), etcd, lease_ttl=2)
    runner.start()
    try:
        await eventually(orphans_gone)
    finally:
        await runner.stop(grace=1)
    kept = logs - doomed
    assert len(kept) == 4
    assert set(blobs.names("build-logs")) == kept | {young}
    for name in kept:
        assert blobs.read_log(name, kind="build-logs")[0] == b"-----> Build 1\n"


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()
