"""``store/builds.py`` against a real etcd: numbering, statuses, cancel rules, key parsing.

Targets are written straight into etcd (a project and service, an image) as the API leaves them;
what is asserted is what an admin reading the tree or a client listing builds would see.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime

import pytest

from lastbackend import codec
from lastbackend.model.platform import Build, Meta, ServiceSource
from lastbackend.store import keys
from lastbackend.store.builds import (
    CANCELED_MESSAGE,
    NEXT,
    Builds,
    InvalidTransition,
    NoSource,
    Target,
    advance,
    build_of,
    highest,
    work_key_of,
)
from lastbackend.store.etcd import Cmp, Op
from lastbackend.store.objects import Conflict, NotFound
from tests.conftest import dump
from tests.support import RawEtcd

pytestmark = pytest.mark.etcd

WHEN = datetime(2026, 1, 1, tzinfo=UTC)
SOURCE = ServiceSource("github.com", "acme", "site", "main")  # type: ignore[arg-type]


async def service(etcd: RawEtcd, *, source: bool = True) -> Target:
    pid, sid = str(uuid.uuid4()), str(uuid.uuid4())
    await etcd.put(keys.project_meta(pid), codec.dumps(Meta("demo", WHEN, WHEN)))  # type: ignore[arg-type]
    await etcd.put(keys.service_part(pid, sid, "meta"), codec.dumps(Meta("web", WHEN, WHEN)))  # type: ignore[arg-type]
    if source:
        await etcd.put(keys.service_part(pid, sid, "source"), codec.dumps(SOURCE))
    return Target("service", sid, pid)


async def image(etcd: RawEtcd) -> Target:
    iid = str(uuid.uuid4())
    meta = {"name": "registry.local/acme/site", "created": "2026-01-01T00:00:00Z"}
    await etcd.put(keys.image_part(iid, "meta"), json.dumps(meta))
    await etcd.put(keys.image_part(iid, "source"), codec.dumps(SOURCE))
    return Target("image", iid)


async def put_build(etcd: RawEtcd, target: Target, number: int, status: str = "queued") -> None:
    await etcd.put(target.key(number), codec.dumps(Build(status, WHEN, WHEN)))


# numbering -------------------------------------------------------------------------------------


async def test_builds_are_numbered_from_one_at_the_documented_keys(etcd: RawEtcd) -> None:
    target = await service(etcd)
    builds = Builds(etcd)
    first = await builds.create(
        target, commit="a454517", commit_message="Merge #218", committer="u"
    )
    second = await builds.create(target)
    assert (first, second) == (1, 2)
    raw = await etcd.get(f"/lastbackend/projects/{target.project}/services/{target.id}/builds/1")
    assert raw is not None
    stored = json.loads(raw.value)
    assert stored["status"] == "queued"
    assert stored["commit"] == "a454517"
    assert stored["commitMessage"] == "Merge #218"  # the document's spelling
    assert stored["committer"] == "u"
    assert stored["message"] == ""
    listed, _ = await builds.list(target)
    assert [b.number for b in listed] == [1, 2]


async def test_numbers_compare_as_numbers_not_as_key_strings(etcd: RawEtcd) -> None:
    """etcd lists ``builds/10`` before ``builds/9``: the next build must still be 11."""
    target = await service(etcd)
    for number in (1, 9, 10):
        await put_build(etcd, target, number, "success")
    found = await etcd.range(target.prefix)
    assert [keys.leaf(kv.key) for kv in found.kvs] == ["1", "10", "9"]
    assert highest(found.kvs) == 10
    assert await Builds(etcd).create(target) == 11
    listed, _ = await Builds(etcd).list(target)
    assert [b.number for b in listed] == [1, 9, 10, 11]


async def test_twenty_concurrent_creates_get_distinct_consecutive_numbers(etcd: RawEtcd) -> None:
    target = await service(etcd)
    builds = Builds(etcd)
    numbers = await asyncio.gather(*(builds.create(target) for _ in range(20)))
    assert sorted(numbers) == list(range(1, 21))
    found = await etcd.range(target.prefix)
    assert len(found.kvs) == 20


async def test_each_target_counts_on_its_own(etcd: RawEtcd) -> None:
    one, other, img = await service(etcd), await service(etcd), await image(etcd)
    builds = Builds(etcd)
    assert [await builds.create(one) for _ in range(3)] == [1, 2, 3]
    assert await builds.create(other) == 1
    assert [await builds.create(img) for _ in range(2)] == [1, 2]
    assert await etcd.get(f"/lastbackend/images/{img.id}/builds/2") is not None


async def test_unknown_target_or_no_source_writes_nothing(etcd: RawEtcd) -> None:
    builds = Builds(etcd)
    no_source = await service(etcd, source=False)
    before = await dump(etcd)
    revision = await etcd.status()
    ghost = Target("service", str(uuid.uuid4()), no_source.project)
    with pytest.raises(NotFound, match="not found"):
        await builds.create(ghost)
    with pytest.raises(NotFound):
        await builds.create(Target("image", str(uuid.uuid4())))
    with pytest.raises(NoSource, match="has no source"):
        await builds.create(no_source)
    assert await dump(etcd) == before
    assert await etcd.status() == revision


# statuses --------------------------------------------------------------------------------------


def test_statuses_only_move_forward() -> None:
    build = Build("queued", WHEN, WHEN)
    path = ["fetching", "building", "pushing", "success"]
    for status in path:
        build = advance(build, status)
        assert build.status == status
        assert build.updated > WHEN
    for final in ("success", "failed", "canceled"):
        assert final not in NEXT
        with pytest.raises(InvalidTransition, match=f"from {final} to"):
            advance(Build(final, WHEN, WHEN), "queued")
    with pytest.raises(InvalidTransition, match="from queued to pushing"):
        advance(Build("queued", WHEN, WHEN), "pushing")
    with pytest.raises(InvalidTransition, match="from building to fetching"):
        advance(Build("building", WHEN, WHEN), "fetching")
    failed = advance(Build("building", WHEN, WHEN), "failed", message="clone repo failed: x")
    assert failed.message == "clone repo failed: x"
    for status in ("queued", "fetching", "building", "pushing"):
        assert {"failed", "canceled"} <= NEXT[status]


async def test_cancel_queued_and_running_builds_but_not_finished_ones(etcd: RawEtcd) -> None:
    target = await service(etcd)
    builds = Builds(etcd)
    await put_build(etcd, target, 1, "queued")
    await put_build(etcd, target, 2, "building")
    for number in (1, 2):
        canceled = await builds.cancel(target, number)
        assert canceled.build.status == "canceled"
        assert canceled.build.message == CANCELED_MESSAGE
        stored = await builds.get(target, number)
        assert stored.build.status == "canceled"
        assert stored.kv.mod_revision == canceled.kv.mod_revision
    for number, status in ((3, "success"), (4, "failed")):
        await put_build(etcd, target, number, status)
    revision = await etcd.status()
    for number in (1, 3, 4):
        with pytest.raises(Conflict, match="already finished"):
            await builds.cancel(target, number)
    with pytest.raises(NotFound, match="build 9"):
        await builds.cancel(target, 9)
    assert await etcd.status() == revision


async def test_a_cancel_wins_over_a_controller_write_read_before_it(etcd: RawEtcd) -> None:
    """The controller writes each step comparing the build as it last wrote it; a cancel in
    between makes that write fail, so a canceled build is never moved on."""
    target = await service(etcd)
    await put_build(etcd, target, 1, "fetching")
    builds = Builds(etcd)
    seen = await builds.get(target, 1)
    await builds.cancel(target, 1)
    moved = advance(seen.build, "building")
    result = await etcd.txn(
        [Cmp.unchanged(seen.kv, seen.kv.key)], [Op.put(seen.kv.key, codec.dumps(moved))]
    )
    assert not result.succeeded
    assert (await builds.get(target, 1)).build.status == "canceled"


# keys -------------------------------------------------------------------------------------------


def test_build_keys_and_only_build_keys_map_to_their_target() -> None:
    pid, sid, iid = (str(uuid.uuid4()) for _ in range(3))
    svc = Target("service", sid, pid)
    img = Target("image", iid)
    assert build_of(keys.build(pid, sid, 12)) == (svc, 12)
    assert build_of(keys.image_build(iid, 3)) == (img, 3)
    assert work_key_of(keys.build(pid, sid, 1)) == f"service:{pid}:{sid}"
    assert Target.from_work_key(f"service:{pid}:{sid}") == svc
    assert Target.from_work_key(f"image:{iid}") == img
    for other in (
        keys.container(pid, sid, "12"),
        keys.service_part(pid, sid, "meta"),
        keys.builds(pid, sid) + "012",
        keys.builds(pid, sid) + "x",
        keys.image_part(iid, "meta"),
        keys.droplet(pid, sid, str(uuid.uuid4())),
        keys.pod_spec("n1", "12"),
    ):
        assert build_of(other) is None, other
        assert work_key_of(other) is None
    assert svc.log_name(7) == f"{sid}-7"
