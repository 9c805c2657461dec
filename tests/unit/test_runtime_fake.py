"""FakeRuntime keeps the seam's promises, so controller tests written against it can trust it.

The same expectations are checked on a real engine in ``tests/e2e/test_runtime_docker.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import tarfile
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest

from lastbackend.model.registries import registry_host
from lastbackend.runtime.base import (
    ContainerNotFound,
    ContainerRuntimeError,
    ContainerSpec,
    ContainerTimeout,
    ImageConfig,
    ImageError,
    NodeCapacity,
    RegistryAuth,
    Runtime,
    RuntimeEvent,
    must_pull,
    split_image,
)
from tests.fakeruntime import FIRST_PORT, FakeProcess, FakeRuntime

IMAGE = "registry.example:5000/team/app:1"
LABELS = {"io.lastbackend.service": "s1"}


BASE = ContainerSpec(name="lb-pod-1", image=IMAGE, labels=LABELS, ports={"8080/TCP": 0})


def web(name: str = "lb-pod-1", **changes: Any) -> ContainerSpec:
    return attrs.evolve(BASE, name=name, **changes)


@pytest.fixture
def rt() -> FakeRuntime:
    return FakeRuntime(images=[IMAGE])


async def actions(events: AsyncIterator[RuntimeEvent], count: int) -> list[str]:
    return [(await asyncio.wait_for(anext(events), 1)).action for _ in range(count)]


def test_it_is_a_runtime(rt: FakeRuntime) -> None:
    assert isinstance(rt, Runtime)


async def test_capacity_is_settable(rt: FakeRuntime) -> None:
    rt.capacity = NodeCapacity(memory_mb=512, cpus=1, hostname="n1", docker_version="x")
    assert (await rt.info()).memory_mb == 512


async def test_run_starts_with_free_ports_and_deterministic_ids(rt: FakeRuntime) -> None:
    first = await rt.run(web("a"))
    second = await rt.run(web("b", ports={"8080/tcp": 0, "53/UDP": 9053}))
    assert first.status == "running"
    assert first.ports == {"8080/TCP": FIRST_PORT}
    assert second.ports == {"8080/TCP": FIRST_PORT + 1, "53/UDP": 9053}
    assert len(first.id) == 64
    assert (await FakeRuntime(images=[IMAGE]).run(web("a"))).id == first.id
    assert first.started_at is not None
    assert first.exit_code is None


async def test_a_taken_host_port_fails_the_start_like_docker(rt: FakeRuntime) -> None:
    await rt.run(web("a", ports={"8080/TCP": 9000}))
    with pytest.raises(ContainerRuntimeError, match="already allocated"):
        await rt.run(web("b", ports={"8080/TCP": 9000}))
    assert (await rt.inspect("b")).status == "created"  # type: ignore[union-attr]


async def test_run_adopts_by_name_and_starts_what_stopped(rt: FakeRuntime) -> None:
    first = await rt.run(web())
    assert (await rt.run(web())).id == first.id
    await rt.stop(first.id)
    stopped = await rt.inspect(first.name)
    assert stopped is not None
    assert stopped.status == "exited"
    assert stopped.ports == {}
    again = await rt.run(web())
    assert again.id == first.id
    assert again.status == "running"
    assert len(await rt.list(LABELS)) == 1


async def test_list_and_inspect(rt: FakeRuntime) -> None:
    a = await rt.run(web("a", labels={**LABELS, "role": "web"}))
    b = await rt.run(web("b", labels={**LABELS, "role": "job"}))
    assert [c.id for c in await rt.list(LABELS)] == [a.id, b.id]
    assert [c.id for c in await rt.list({"role": "job"})] == [b.id]
    assert await rt.list({"role": "db"}) == []
    assert await rt.inspect(a.id) == a
    assert await rt.inspect("a") == a
    assert await rt.inspect("nope") is None


async def test_deletes_are_idempotent(rt: FakeRuntime) -> None:
    state = await rt.run(web())
    await rt.remove(state.id)
    await rt.remove(state.id)
    await rt.stop(state.id)
    await rt.remove_volume("never-made")
    assert await rt.list(LABELS) == []


async def test_volumes_are_created_labelled_and_refuse_removal_in_use(rt: FakeRuntime) -> None:
    state = await rt.run(web(volumes={"lb-s1-data": "/data"}))
    assert await rt.volumes(LABELS) == ["lb-s1-data"]
    assert await rt.volumes({"other": "x"}) == []
    with pytest.raises(ContainerRuntimeError, match="in use"):
        await rt.remove_volume("lb-s1-data")
    await rt.remove(state.id)
    await rt.remove_volume("lb-s1-data")
    assert await rt.volumes(LABELS) == []


async def test_events_from_subscription_on_filtered_by_labels(rt: FakeRuntime) -> None:
    await rt.run(web("before"))
    events = rt.events(LABELS)  # subscribed here, before the first step
    await rt.run(ContainerSpec(name="stranger", image=IMAGE, labels={"other": "x"}))
    state = await rt.run(web())
    rt.kill(state.id)
    assert await actions(events, 4) == ["create", "start", "kill", "die"]
    assert (await rt.inspect(state.id)).exit_code == 137  # type: ignore[union-attr]
    await events.aclose()  # type: ignore[attr-defined]
    assert rt._subscribers == []


async def test_die_carries_the_exit_code_and_oom(rt: FakeRuntime) -> None:
    state = await rt.run(web())
    events = rt.events({})
    rt.kill(state.name, oom=True)
    oom, die = [await asyncio.wait_for(anext(events), 1) for _ in range(2)]
    assert (oom.action, die.action) == ("oom", "die")
    assert die.exit_code == 137
    assert die.labels == LABELS
    with pytest.raises(ContainerNotFound):
        rt.kill(state.name)  # not running any more


async def test_stop_and_remove_emit_what_docker_emits(rt: FakeRuntime) -> None:
    state = await rt.run(web())
    events = rt.events(LABELS)
    await rt.stop(state.id)
    await rt.remove(state.id)
    assert await actions(events, 4) == ["kill", "die", "stop", "destroy"]


async def test_pull_policy_and_failures(rt: FakeRuntime) -> None:
    await rt.ensure_image(IMAGE)
    assert rt.pulls == []  # present and tagged: no pull
    await rt.ensure_image(IMAGE, always_pull=True)
    await rt.ensure_image("busybox")  # missing: pulled
    await rt.ensure_image("busybox")  # no tag means latest: pulled again
    assert [image for image, _ in rt.pulls] == [IMAGE, "busybox", "busybox"]
    rt.fail_pull("broken:1", "manifest unknown")
    with pytest.raises(ImageError, match="manifest unknown"):
        await rt.ensure_image("broken:1")
    with pytest.raises(ImageError, match="not present"):
        await rt.run(web(image="broken:1"))


async def test_private_registries_need_their_credentials(rt: FakeRuntime) -> None:
    auth = RegistryAuth(username="u", password="s3cret", server="registry.example:5000")
    rt.require_auth(auth)
    wrong = RegistryAuth(username="u", password="guess", server="registry.example:5000")
    with pytest.raises(ImageError) as failed:
        await rt.ensure_image("registry.example:5000/team/other:1", wrong)
    assert "guess" not in str(failed.value)
    await rt.ensure_image("registry.example:5000/team/other:1", auth)
    assert rt.pulls[-1] == ("registry.example:5000/team/other:1", auth)
    assert "s3cret" not in repr(auth)


async def test_logs_tail_follow_and_end(rt: FakeRuntime) -> None:
    state = await rt.run(web())
    rt.write_log(state.id, b"one\ntwo\nthree\n")
    chunks = [c async for c in rt.logs(state.id, tail=2)]
    assert chunks == [b"two\n", b"three\n"]

    async def follow() -> bytes:
        async with contextlib.aclosing(rt.logs(state.name, follow=True, tail=0)) as stream:
            return b"".join([c async for c in stream])

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0)
    rt.write_log(state.id, b"four\n")
    await asyncio.sleep(0)
    rt.kill(state.id)
    assert await asyncio.wait_for(follower, 1) == b"four\n"
    with pytest.raises(ContainerNotFound):
        await anext(rt.logs("nope"))


async def test_followed_logs_are_cancellable(rt: FakeRuntime) -> None:
    state = await rt.run(web())
    follower = asyncio.create_task(anext(rt.logs(state.id, follow=True)))
    await asyncio.sleep(0)
    follower.cancel()
    with pytest.raises(asyncio.CancelledError):
        await follower


def test_image_references() -> None:
    assert split_image("busybox") == ("busybox", "latest", "")
    assert split_image("127.0.0.1:5000/team/app:1") == ("127.0.0.1:5000/team/app", "1", "")
    assert split_image("127.0.0.1:5000/team/app") == ("127.0.0.1:5000/team/app", "latest", "")
    assert split_image("app@sha256:" + "a" * 64) == ("app", "", "sha256:" + "a" * 64)
    assert registry_host("127.0.0.1:5000/team/app:1") == "127.0.0.1:5000"
    assert registry_host("localhost/app") == "localhost"
    assert registry_host("library/busybox:1") == "docker.io"
    assert registry_host("busybox") == "docker.io"


def test_pull_policy_is_kubernetes_default() -> None:
    digest = "app@sha256:" + "a" * 64
    assert must_pull("app:1", present=False, always_pull=False)
    assert not must_pull("app:1", present=True, always_pull=False)
    assert must_pull("app:1", present=True, always_pull=True)
    assert must_pull("app:latest", present=True, always_pull=False)
    assert must_pull("app", present=True, always_pull=False)
    assert not must_pull(digest, present=True, always_pull=True)


# -- the staging part of the seam: create, archives, wait, commit, images


def tar_of(files: dict[str, bytes], uid: int = 1000, mode: int = 0o640) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.uid, info.gid, info.mode = len(data), uid, uid, mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def members(data: bytes) -> dict[str, tuple[int, int, bytes | None]]:
    """name -> (uid, mode, content or None for a directory)."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for info in tar:
            body = tar.extractfile(info) if info.isfile() else None
            out[info.name] = (info.uid, info.mode & 0o7777, body.read() if body else None)
    return out


async def test_create_does_not_start_and_adopts_by_name(rt: FakeRuntime) -> None:
    created = await rt.create(web())
    assert created.status == "created"
    assert created.ports == {}
    assert (await rt.create(web())).id == created.id
    started = await rt.start(created.name)
    assert started.status == "running"
    assert set(started.ports) == {"8080/TCP"}
    assert (await rt.start(created.id)).id == created.id  # running already: nothing
    with pytest.raises(ContainerNotFound):
        await rt.start("nope")
    with pytest.raises(ImageError, match="not present"):
        await rt.create(web("x", image="absent:1"))


async def test_programs_decide_what_a_started_container_does(rt: FakeRuntime) -> None:
    seen: list[str] = []

    def program(process: FakeProcess) -> int | None:
        seen.append(process.name)
        if process.spec.command != "work":
            return None  # not ours: keeps running
        process.print(f"working in {process.env['WHERE']}")
        process.write("/out/result", b"done", uid=1000)
        return 3

    rt.on_start(program)
    await rt.create(web("job", command="work", env={"WHERE": "here"}))
    await rt.start("job")
    assert await rt.wait("job", timeout_s=1) == 3
    assert [c async for c in rt.logs("job")] == [b"working in here\n"]
    assert rt.files("job")["/out/result"] == b"done"
    server = await rt.run(web("server"))
    assert server.running
    with pytest.raises(ContainerTimeout, match="still running"):
        await rt.wait("server", timeout_s=0.05)
    waiting = asyncio.create_task(rt.wait("server"))
    await asyncio.sleep(0)
    rt.kill("server")
    assert await asyncio.wait_for(waiting, 1) == 137
    assert seen == ["job", "server"]
    with pytest.raises(ContainerNotFound):
        await rt.wait("nope")


async def test_archives_keep_owners_and_modes(rt: FakeRuntime) -> None:
    await rt.create(web())
    await rt.put_archive("lb-pod-1", "/", tar_of({"app/a.txt": b"A", "app/sub/b.txt": b"B"}))
    got = await rt.get_archive("lb-pod-1", "/app")
    assert got is not None
    found = members(got)
    assert found["app/a.txt"] == (1000, 0o640, b"A")
    assert found["app/sub/b.txt"] == (1000, 0o640, b"B")
    assert set(found) == {"app", "app/a.txt", "app/sub", "app/sub/b.txt"}
    assert await rt.get_archive("lb-pod-1", "/nothing") is None
    with pytest.raises(ContainerRuntimeError):  # like Docker: the directory must exist
        await rt.put_archive("lb-pod-1", "/nothing", tar_of({"x": b""}))
    with pytest.raises(ContainerNotFound):
        await rt.get_archive("nope", "/app")


async def test_commit_merges_config_like_docker(rt: FakeRuntime) -> None:
    base = ImageConfig(
        cmd=("/bin/sh",),
        env={"PATH": "/bin", "HOME": "/"},
        labels={"stack": "busybox"},
        workdir="/",
        user="root",
    )
    rt.add_image("stack:1", base, {"/bin/sh": b"#!"})
    await rt.create(ContainerSpec(name="c", image="stack:1", labels={"from": "container"}))
    await rt.put_archive("c", "/", tar_of({"workspace/index.html": b"hi"}))
    image_id = await rt.commit(
        "c",
        "droplets/app:1",
        ImageConfig(
            cmd=("/bin/sh", "-c", "serve"),
            env={"PORT": "8080", "HOME": "/workspace"},
            labels={"kind": "droplet"},
            exposed_ports=("8080/TCP",),
            workdir="/workspace",
            user="lb",
        ),
    )
    info = await rt.inspect_image("droplets/app:1")
    assert info is not None
    assert info.id == image_id
    assert info.repo_tags == ("droplets/app:1",)
    assert info.cmd == ("/bin/sh", "-c", "serve")
    assert info.env == {"PATH": "/bin", "HOME": "/workspace", "PORT": "8080"}
    assert info.labels == {"stack": "busybox", "from": "container", "kind": "droplet"}
    assert (info.exposed_ports, info.workdir, info.user) == (("8080/TCP",), "/workspace", "lb")
    assert rt.image_files("droplets/app:1")["/workspace/index.html"] == b"hi"
    # a container of the image has its files and inherits its labels, as on Docker
    child = await rt.create(ContainerSpec(name="child", image="droplets/app:1"))
    assert child.labels == info.labels
    assert rt.files("child")["/workspace/index.html"] == b"hi"


async def test_import_tag_push_and_remove_images(rt: FakeRuntime) -> None:
    image_id = await rt.import_image(tar_of({"bin/busybox": b"ELF"}), "stack:2", ImageConfig())
    assert rt.image_files("stack:2") == {"/bin/busybox": b"ELF"}
    target = "registry.example:5000/droplets/app:d1"
    await rt.tag("stack:2", target)
    assert (await rt.inspect_image(target)).id == image_id  # type: ignore[union-attr]
    auth = RegistryAuth("u", "s3cret", "registry.example:5000")
    rt.require_auth(auth)
    with pytest.raises(ImageError) as refused:
        await rt.push(target, RegistryAuth("u", "guess", "registry.example:5000"))
    assert "guess" not in str(refused.value)
    digest = await rt.push(target, auth)
    assert digest.startswith("sha256:")
    assert rt.pushes[-1] == (target, auth)
    pinned = f"registry.example:5000/droplets/app@{digest}"
    info = await rt.inspect_image(pinned)
    assert info is not None
    assert info.id == image_id
    assert info.digest_for(target) == pinned
    with pytest.raises(ImageError, match="does not exist"):
        await rt.push("registry.example:5000/absent:1", auth)
    await rt.remove_image(target)
    await rt.remove_image(target)  # gone already: nothing to do
    assert await rt.inspect_image(target) is None
    assert await rt.inspect_image("stack:2") is not None


async def test_pulled_images_are_pinned_by_digest(rt: FakeRuntime) -> None:
    await rt.ensure_image("registry.example:5000/team/web:2")
    info = await rt.inspect_image("registry.example:5000/team/web:2")
    assert info is not None
    pinned = info.digest_for("registry.example:5000/team/web:2")
    assert pinned is not None
    assert pinned.startswith("registry.example:5000/team/web@sha256:")
    assert (await rt.inspect_image(pinned)).id == info.id  # type: ignore[union-attr]
