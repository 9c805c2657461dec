"""DockerRuntime on a real engine: the seam's promises, checked from the outside with the raw SDK.

Containers come from the offline busybox image; names and labels are unique per test and the
``runtime`` fixture force-removes whatever carries the session's test label afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import tarfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import docker
import pytest
from aiohttp import web

from lastbackend.runtime.base import (
    ContainerNotFound,
    ContainerRuntimeError,
    ContainerSpec,
    ContainerState,
    ContainerTimeout,
    ImageConfig,
    ImageError,
    RegistryAuth,
    Runtime,
    RuntimeEvent,
)
from lastbackend.runtime.docker import DockerRuntime
from tests.baseimage import INDEX_HTML
from tests.e2e.conftest import Registry

SERVE = "httpd -f -p 8080 -h /www"


def spec(image: str, labels: dict[str, str], **kwargs: Any) -> ContainerSpec:
    return ContainerSpec(
        name=f"lb-test-{uuid.uuid4().hex[:12]}", image=image, labels=labels, **kwargs
    )


async def eventually(
    probe: Callable[[], Awaitable[Any]], timeout_s: float = 10, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def exited(runtime: DockerRuntime, name: str) -> ContainerState:
    async def probe() -> ContainerState | None:
        state = await runtime.inspect(name)
        return state if state and state.status == "exited" else None

    result: ContainerState = await eventually(probe, what=f"{name} to exit")
    return result


async def all_logs(runtime: DockerRuntime, name: str, **kwargs: Any) -> bytes:
    async with contextlib.aclosing(runtime.logs(name, **kwargs)) as chunks:
        return b"".join([chunk async for chunk in chunks])


def stream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("lastbackend-docker-")]


async def threads_back_to(count: int) -> None:
    """A stream's thread ends soon after its consumer stops (its socket is shut)."""

    async def probe() -> bool:
        return len(stream_threads()) == count

    await eventually(probe, what="the stream thread to end")


async def next_event(events: AsyncIterator[RuntimeEvent], action: str) -> RuntimeEvent:
    async with asyncio.timeout(10):
        async for event in events:
            if event.action == action:
                return event
    raise AssertionError(f"the event stream ended before a {action!r} event")


@pytest.mark.docker
async def test_info_reads_capacity(runtime: DockerRuntime) -> None:
    capacity = await runtime.info()
    assert isinstance(runtime, Runtime)
    assert capacity.memory_mb > 0
    assert capacity.cpus >= 1
    assert capacity.docker_version


@pytest.mark.docker
async def test_serves_http_on_a_published_port_with_a_memory_limit(
    runtime: DockerRuntime, base_image: str, labels: dict[str, str], docker_api: docker.APIClient
) -> None:
    s = spec(base_image, labels, command=SERVE, ports={"8080/TCP": 0}, memory_mb=64)
    state = await runtime.run(s)
    assert state.status == "running"
    assert state.name == s.name
    assert state.labels == labels
    assert set(state.ports) == {"8080/TCP"}

    async def get() -> bytes | None:
        with contextlib.suppress(aiohttp.ClientError):
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{state.ports['8080/TCP']}/") as response,
            ):
                return await response.read() if response.status == 200 else None
        return None

    assert await eventually(get, what="httpd to answer") == INDEX_HTML
    assert docker_api.inspect_container(state.id)["HostConfig"]["Memory"] == 64 * 1024 * 1024


@pytest.mark.docker
async def test_command_is_a_shell_line_with_the_env(
    runtime: DockerRuntime, base_image: str, labels: dict[str, str]
) -> None:
    s = spec(
        base_image,
        labels,
        command='echo "$GREETING, $WHO" && exit 3',
        env={"GREETING": "hello", "WHO": "world of $HOME"},
    )
    await runtime.run(s)
    state = await exited(runtime, s.name)
    assert state.exit_code == 3
    assert await all_logs(runtime, s.name) == b"hello, world of $HOME\n"


@pytest.mark.docker
async def test_empty_command_runs_the_image_default(
    runtime: DockerRuntime, base_image: str, labels: dict[str, str], docker_api: docker.APIClient
) -> None:
    s = spec(base_image, labels)
    state = await runtime.run(s)
    assert docker_api.inspect_container(state.id)["Path"] == "/bin/sh"  # the image's CMD
    assert (await exited(runtime, s.name)).exit_code == 0


@pytest.mark.docker
async def test_named_volume_is_created_labelled_and_outlives_its_container(
    runtime: DockerRuntime, base_image: str, labels: dict[str, str]
) -> None:
    volume = f"lb-test-{uuid.uuid4().hex[:12]}"
    writer = spec(base_image, labels, command="echo kept > /data/f", volumes={volume: "/data"})
    await runtime.run(writer)
    assert (await exited(runtime, writer.name)).exit_code == 0
    assert await runtime.volumes(labels) == [volume]
    with pytest.raises(ContainerRuntimeError, match="in use"):
        await runtime.remove_volume(volume)

    await runtime.remove(writer.name)
    reader = spec(base_image, labels, command="cat /data/f", volumes={volume: "/data"})
    await runtime.run(reader)
    await exited(runtime, reader.name)
    assert await all_logs(runtime, reader.name) == b"kept\n"

    await runtime.remove(reader.name)
    await runtime.remove_volume(volume)
    await runtime.remove_volume(volume)  # gone already: nothing to do
    assert await runtime.volumes(labels) == []


@pytest.mark.docker
async def test_run_adopts_the_container_of_the_same_name(
    runtime: DockerRuntime, base_image: str, labels: dict[str, str]
) -> None:
    s = spec(base_image, labels, command="sleep 600", ports={"8080/TCP": 0})
    first = await runtime.run(s)
    assert (await runtime.run(s)).id == first.id
    await runtime.stop(s.name, timeout_s=0)
    assert (await runtime.inspect(s.name)).status == "exited"  # type: ignore[union-attr]
    await runtime.stop(s.name, timeout_s=0)  # stopped already: nothing to do

    again = await runtime.run(s)  # a stopped container is started, not duplicated
    assert again.id == first.id
    assert again.status == "running"
    assert set(again.ports) == {"8080/TCP"}
    assert [c.id for c in await runtime.list(labels)] == [first.id]


@pytest.mark.docker
async def test_list_and_inspect_select_by_labels_id_and_name(
    runtime: DockerRuntime, base_image: str, labels: dict[str, str]
) -> None:
    web_spec = spec(base_image, {**labels, "io.lastbackend.role": "web"}, command="sleep 600")
    job_spec = spec(base_image, {**labels, "io.lastbackend.role": "job"}, command="true")
    web_state = await runtime.run(web_spec)
    job_state = await runtime.run(job_spec)
    await exited(runtime, job_spec.name)

    assert {c.id for c in await runtime.list(labels)} == {web_state.id, job_state.id}
    only_web = await runtime.list({**labels, "io.lastbackend.role": "web"})
    assert [c.name for c in only_web] == [web_spec.name]
    assert await runtime.list({**labels, "io.lastbackend.role": "db"}) == []
    by_id = await runtime.inspect(web_state.id)
    assert by_id is not None
    assert by_id.name == web_spec.name
    assert by_id.started_at is not None
    assert by_id.exit_code is None
    assert await runtime.inspect("lb-test-no-such-container") is None


@pytest.mark.docker
async def test_remove_is_forced_and_idempotent(
    runtime: DockerRuntime, base_image: str, labels: dict[str, str]
) -> None:
    s = spec(base_image, labels, command="sleep 600")
    await runtime.run(s)
    await runtime.remove(s.name)
    assert await runtime.inspect(s.name) is None
    await runtime.remove(s.name)
    assert await runtime.list(labels) == []


@pytest.mark.docker
async def test_run_without_the_image_is_an_image_error(
    runtime: DockerRuntime, labels: dict[str, str]
) -> None:
    with pytest.raises(ImageError, match="ensure_image"):
        await runtime.run(spec("lastbackend-test/absent:1", labels))


@pytest.mark.docker
async def test_docker_kill_emits_die_and_cancelling_ends_the_stream_thread(
    runtime: DockerRuntime, base_image: str, labels: dict[str, str], docker_api: docker.APIClient
) -> None:
    before = len(stream_threads())
    events = runtime.events(labels)  # subscribed now: the kills below are not missed
    stranger = await runtime.run(
        spec(base_image, {**labels, "io.lastbackend.case": "other"}, command="sleep 600")
    )
    state = await runtime.run(spec(base_image, labels, command="sleep 600"))
    docker_api.kill(stranger.id)  # not selected by the labels: never delivered
    docker_api.kill(state.id)

    die = await next_event(events, "die")
    assert die.container_id == state.id
    assert die.exit_code == 137
    assert die.name == state.name
    assert die.labels == labels

    consumer = asyncio.create_task(next_event(events, "never"))
    await asyncio.sleep(0.1)
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    await threads_back_to(before)


@pytest.mark.docker
async def test_logs_tail_and_follow(
    runtime: DockerRuntime, base_image: str, labels: dict[str, str]
) -> None:
    s = spec(
        base_image,
        labels,
        # stdout and stderr are separate pipes: pauses keep their order in the log certain
        command="for i in 1 2 3 4 5; do echo line$i; done; sleep 1; echo oops >&2; sleep 1; "
        "echo late",
    )
    await runtime.run(s)

    async def printed() -> bool:
        return b"oops" in await all_logs(runtime, s.name)

    await eventually(printed, what="the first lines")
    assert await all_logs(runtime, s.name, tail=2) == b"line5\noops\n"

    followed = await asyncio.wait_for(all_logs(runtime, s.name, follow=True, tail=1), 10)
    assert followed == b"oops\nlate\n"  # ends by itself when the container exits
    assert await all_logs(runtime, s.name) == b"line1\nline2\nline3\nline4\nline5\noops\nlate\n"
    with pytest.raises(ContainerNotFound):
        await all_logs(runtime, "lb-test-no-such-container")


@pytest.mark.docker
async def test_followed_logs_stop_when_cancelled(
    runtime: DockerRuntime, base_image: str, labels: dict[str, str]
) -> None:
    before = len(stream_threads())
    s = spec(base_image, labels, command="echo up; sleep 600")
    await runtime.run(s)
    async with contextlib.aclosing(runtime.logs(s.name, follow=True)) as chunks:
        assert await asyncio.wait_for(anext(chunks), 10) == b"up\n"
    await threads_back_to(before)


def push(api: docker.APIClient, source: str, target: str, registry: Registry) -> None:
    repository, tag = target.rsplit(":", 1)
    api.tag(source, repository, tag)
    auth = {"username": registry.username, "password": registry.password}
    for line in api.push(repository, tag, auth_config=auth, stream=True, decode=True):
        assert "error" not in line, line
    api.remove_image(target)  # the tag only: the base image keeps its own


@pytest.mark.docker
async def test_ensure_image_pulls_from_a_private_registry(
    runtime: DockerRuntime, base_image: str, registry: Registry, docker_api: docker.APIClient
) -> None:
    image = f"{registry.host}/team/app:{uuid.uuid4().hex[:8]}"
    push(docker_api, base_image, image, registry)
    wrong = RegistryAuth(
        username=registry.username, password="not-" + registry.password, server=registry.host
    )

    with pytest.raises(ImageError) as failed:
        await runtime.ensure_image(image, wrong)
    assert image in str(failed.value)
    assert wrong.password not in str(failed.value)
    assert wrong.password not in repr(wrong)
    with pytest.raises(ImageError):
        await runtime.ensure_image(image, None)

    await runtime.ensure_image(image, registry.auth)
    assert docker_api.inspect_image(image)["Id"] == docker_api.inspect_image(base_image)["Id"]
    await runtime.ensure_image(image, wrong)  # present, tag not latest: no pull
    with pytest.raises(ImageError):
        await runtime.ensure_image(image, wrong, always_pull=True)

    with pytest.raises(ImageError, match="team/absent"):
        await runtime.ensure_image(f"{registry.host}/team/absent:1", registry.auth)


@pytest.mark.docker
async def test_latest_is_always_pulled(
    runtime: DockerRuntime, base_image: str, registry: Registry, docker_api: docker.APIClient
) -> None:
    image = f"{registry.host}/team/latest-{uuid.uuid4().hex[:8]}:latest"
    push(docker_api, base_image, image, registry)
    await runtime.ensure_image(image, registry.auth)
    repository = image.rsplit(":", 1)[0]
    with pytest.raises(ImageError):  # present, but ``:latest`` (or no tag) is pulled again
        await runtime.ensure_image(repository, RegistryAuth("x", "y", registry.host))


# -- the staging part of the seam: create, archives, wait, commit, import, tag, push


def tar_of(files: dict[str, bytes], uid: int = 1000, mode: int = 0o640) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.uid, info.gid, info.mode = len(data), uid, uid, mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def members(data: bytes) -> dict[str, tuple[int, int, bytes | None]]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for info in tar:
            body = tar.extractfile(info) if info.isfile() else None
            out[info.name] = (info.uid, info.mode & 0o7777, body.read() if body else None)
    return out


@pytest.mark.docker
async def test_create_copy_in_start_wait_and_copy_out(
    runtime: DockerRuntime, base_image: str, labels: dict[str, str]
) -> None:
    s = spec(base_image, labels, command="cat /tmp/in/a.txt > /tmp/out.txt; ls -n /tmp/in; exit 4")
    created = await runtime.create(s)
    assert created.status == "created"
    assert (await runtime.create(s)).id == created.id  # adopted by name
    await runtime.put_archive(s.name, "/tmp", tar_of({"in/a.txt": b"copied in\n"}))
    assert (await runtime.start(s.name)).name == s.name
    assert await runtime.wait(s.name, timeout_s=10) == 4
    out = await runtime.get_archive(s.name, "/tmp/out.txt")  # from a stopped container
    assert out is not None
    assert members(out)["out.txt"][2] == b"copied in\n"
    copied = await runtime.get_archive(s.name, "/tmp/in")
    assert copied is not None
    assert members(copied)["in/a.txt"] == (1000, 0o640, b"copied in\n")  # owner and mode kept
    assert b" 1000 " in await all_logs(runtime, s.name)
    assert await runtime.get_archive(s.name, "/tmp/absent") is None
    with pytest.raises(ContainerNotFound):
        await runtime.get_archive("lb-test-no-such-container", "/tmp")
    with pytest.raises(ContainerNotFound):
        await runtime.start("lb-test-no-such-container")


@pytest.mark.docker
async def test_wait_gives_up_after_its_timeout(
    runtime: DockerRuntime, base_image: str, labels: dict[str, str]
) -> None:
    s = spec(base_image, labels, command="sleep 600")
    await runtime.run(s)
    with pytest.raises(ContainerTimeout, match="still running"):
        await runtime.wait(s.name, timeout_s=1)


@pytest.mark.docker
async def test_commit_merges_config_and_the_image_runs(
    runtime: DockerRuntime, base_image: str, labels: dict[str, str], docker_api: docker.APIClient
) -> None:
    ref = f"lastbackend-test/commit:{uuid.uuid4().hex[:8]}"
    s, child = spec(base_image, labels), spec(ref, labels)
    await runtime.create(s)
    await runtime.put_archive(s.name, "/www", tar_of({"page.txt": b"committed\n"}, mode=0o644))
    try:
        image_id = await runtime.commit(
            s.name,
            ref,
            ImageConfig(
                cmd=("/bin/sh", "-c", 'echo "$GREETING from $(pwd) as $(id -u)"; cat page.txt'),
                env={"GREETING": "hello"},
                labels={"io.lastbackend.kind": "droplet"},
                exposed_ports=("8080/TCP",),
                workdir="/www",
                user="1000",
            ),
        )
        info = await runtime.inspect_image(ref)
        assert info is not None
        assert info.id == image_id
        assert ref in info.repo_tags
        assert info.repo_digests == ()  # never pushed
        assert info.labels == {**labels, "io.lastbackend.kind": "droplet"}  # merged, as Docker does
        assert info.env["GREETING"] == "hello"
        assert (info.exposed_ports, info.workdir, info.user) == (("8080/TCP",), "/www", "1000")
        assert await runtime.inspect_image("lastbackend-test/absent:1") is None

        await runtime.run(child)
        assert (await exited(runtime, child.name)).exit_code == 0
        assert await all_logs(runtime, child.name) == b"hello from /www as 1000\ncommitted\n"
    finally:
        for container in (s, child):
            await runtime.remove(container.name)
        await runtime.remove_image(ref)
    await runtime.remove_image(ref)  # gone already: nothing to do
    assert await runtime.inspect_image(ref) is None


@pytest.mark.docker
async def test_import_tag_and_push_to_a_private_registry(
    runtime: DockerRuntime, registry: Registry, docker_api: docker.APIClient
) -> None:
    ref = f"lastbackend-test/imported:{uuid.uuid4().hex[:8]}"
    target = f"{registry.host}/team/imported:{uuid.uuid4().hex[:8]}"
    rootfs = tar_of({"etc/motd": b"imported\n"}, uid=0, mode=0o644)
    config = ImageConfig(
        cmd=("/bin/sh",), labels={"k": 'a "quoted" $value\\'}, env={"E": "x y"}, user="1000"
    )
    try:
        image_id = await runtime.import_image(rootfs, ref, config)
        info = await runtime.inspect_image(ref)
        assert info is not None
        assert info.id == image_id
        assert info.labels == {"k": 'a "quoted" $value\\'}  # quoted through --change intact
        assert (info.cmd, info.env.get("E"), info.user) == (("/bin/sh",), "x y", "1000")

        await runtime.tag(ref, target)
        wrong = RegistryAuth(registry.username, "not-" + registry.password, registry.host)
        with pytest.raises(ImageError) as refused:
            await runtime.push(target, wrong)
        assert wrong.password not in str(refused.value)
        digest = await runtime.push(target, registry.auth)
        assert digest.startswith("sha256:")
        pinned = (await runtime.inspect_image(target)).digest_for(target)  # type: ignore[union-attr]
        assert pinned == f"{target.rsplit(':', 1)[0]}@{digest}"
        assert (await runtime.inspect_image(pinned)).id == image_id  # type: ignore[union-attr]
        with pytest.raises(ImageError):
            await runtime.tag("lastbackend-test/absent:1", target)
    finally:
        await runtime.remove_image(target)
        await runtime.remove_image(ref)


# -- the event stream's reconnection, against a stand-in for dockerd on a unix socket


async def test_events_reconnect_and_resume_after_the_last_event(tmp_path: Path) -> None:
    """dockerd restarting looks like the event stream ending: the runtime connects again,
    asking Docker for what happened since the last event it saw (no gap, no repeat)."""
    requests: list[dict[str, str]] = []
    times = [1_700_000_000_123_456_789, 1_700_000_001_000_000_000]

    def event(n: int) -> bytes:
        raw = {
            "Type": "container",
            "Action": "die",
            "Actor": {
                "ID": f"c{n}",
                "Attributes": {"name": f"lb-{n}", "app": "a", "exitCode": "1"},
            },
            "timeNano": times[n],
        }
        return json.dumps(raw).encode() + b"\n"

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"ApiVersion": "1.41", "Version": "stand-in"})

    async def events(request: web.Request) -> web.StreamResponse:
        requests.append(dict(request.query))
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(event(len(requests) - 1))
        if len(requests) > 1:
            await asyncio.sleep(60)  # stays open, like a live stream
        return response  # the first stream ends: "dockerd went away"

    app = web.Application()
    app.router.add_get("/version", version)
    app.router.add_get("/v1.41/events", events)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    socket_path = tmp_path / "docker.sock"
    await web.UnixSite(runner, str(socket_path)).start()
    rt = DockerRuntime(f"unix://{socket_path}")
    try:
        before = len(stream_threads())
        async with contextlib.aclosing(rt.events({"app": "a"})) as stream:
            first = await asyncio.wait_for(anext(stream), 10)
            second = await asyncio.wait_for(anext(stream), 10)
        assert [first.container_id, second.container_id] == ["c0", "c1"]
        assert first.labels == {"app": "a"}
        assert first.exit_code == 1
        assert json.loads(requests[0]["filters"]) == {"type": ["container"], "label": ["app=a"]}
        assert requests[1]["since"] == "1700000000.123456790"
        await threads_back_to(before)
    finally:
        await rt.close()
        await runner.cleanup()
