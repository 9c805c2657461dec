"""``GET /api/events``: server-sent events of the key tree on a real etcd.

The API is served as ``lastbackend`` serves it (aiohttp's runner on a real port, which does not
cancel a handler whose client left), and read line by line with an aiohttp client, as a
dashboard's EventSource would. What the stream says is checked against etcd's own watch of the
same revisions, so "exactly once, in order" is measured, not assumed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp import web

from lastbackend.api.app import make_app
from lastbackend.api.event_stream import shown
from lastbackend.api.middlewares import INFLIGHT
from lastbackend.api.state import STATE
from lastbackend.config import Settings
from lastbackend.secrets import Secrets, generate_key
from lastbackend.store import keys
from lastbackend.store.embedded import EmbeddedEtcd
from lastbackend.store.etcd import Etcd, WatchEvent
from tests.support import RawEtcd, eventually

pytestmark = pytest.mark.etcd

ROOT = keys.ROOT
ADMIN, READ = "events-admin-token", "events-read-token"
PASSWORD = "s3cr3t-Registry-Pa55-77aa"
DOCKER_PASSWORD = "s3cr3t-Docker-Pa55-99bb"
WITHIN = 10.0
HOST = "reg.local:5000"


# an SSE client -----------------------------------------------------------------------------------


@attrs.frozen
class Message:
    event: str
    data: Any
    id: str | None


class Stream:
    """One open ``/api/events`` response, parsed as the SSE spec says (comments counted)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.raw = b""
        self.heartbeats = 0
        self.last_id: str | None = None

    async def next(self, within: float = WITHIN) -> Message:
        fields: dict[str, str] = {}
        async with asyncio.timeout(within):
            while True:
                line = await self.response.content.readline()
                if not line:
                    raise EOFError("the stream ended")
                self.raw += line
                text = line.decode().rstrip("\n")
                if text.startswith(":"):
                    self.heartbeats += text == ": heartbeat"
                elif text:
                    name, _, value = text.partition(": ")
                    fields[name] = value
                elif fields:
                    if "id" in fields:
                        self.last_id = fields["id"]
                    return Message(fields["event"], json.loads(fields["data"]), fields.get("id"))

    async def take(self, count: int) -> list[Message]:
        return [await self.next() for _ in range(count)]

    async def through(self, revision: int) -> list[Message]:
        """Every message up to the last one of ``revision`` (the one whose id is ``revision``)."""
        out = []
        while True:
            out.append(await self.next())
            if out[-1].id == str(revision):
                return out

    async def ended(self) -> bool:
        """Whether the server ends the stream (with nothing but comments before the end)."""
        try:
            await self.next(within=5)
        except EOFError:
            return True
        return False

    def close(self) -> None:
        self.response.close()


@attrs.define
class Api:
    url: str
    etcd: RawEtcd
    runner: web.AppRunner
    http: aiohttp.ClientSession

    @property
    def app(self) -> web.Application:
        return self.runner.app

    async def open(
        self, *, headers: dict[str, str] | None = None, **params: str
    ) -> aiohttp.ClientResponse:
        return await self.http.get(f"{self.url}/api/events", params=params, headers=headers)

    async def stream(self, last_id: str | None = None, **params: str) -> Stream:
        headers = {"Last-Event-ID": last_id} if last_id is not None else None
        resp = await self.open(headers=headers, **params)
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"] == "text/event-stream"
        return Stream(resp)

    async def call(self, method: str, path: str, expect: int, **kwargs: Any) -> Any:
        async with self.http.request(method, f"{self.url}{path}", **kwargs) as resp:
            text = await resp.text()
            assert resp.status == expect, text
            return json.loads(text) if text else None


ApiFactory = Callable[..., Awaitable[Api]]


async def serve(settings: Settings, etcd: RawEtcd) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(make_app(settings, etcd), access_log=None, shutdown_timeout=2)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


@pytest.fixture
async def start_api(tmp_path: Path) -> AsyncIterator[ApiFactory]:
    made: list[Api] = []

    async def start(etcd: RawEtcd, endpoint: str, **overrides: Any) -> Api:
        settings = Settings(etcd_endpoints=(endpoint,), data_dir=tmp_path, **overrides)
        runner, url = await serve(settings, etcd)
        token = (overrides.get("admin_tokens") or ("",))[0]
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        api = Api(url, etcd, runner, aiohttp.ClientSession(headers=headers))
        made.append(api)
        return api

    yield start
    for api in made:
        await api.http.close()
        await api.runner.cleanup()


@pytest.fixture
async def api(start_api: ApiFactory, etcd: RawEtcd, settings: Settings) -> Api:
    return await start_api(etcd, settings.etcd_endpoints[0])


# helpers -----------------------------------------------------------------------------------------


async def history(etcd: RawEtcd, first: int, last: int, prefix: str = ROOT) -> list[WatchEvent]:
    """What etcd itself says changed from ``first`` through ``last``, in order."""
    out: list[WatchEvent] = []
    if last < first:
        return out
    async with asyncio.timeout(WITHIN):
        async for batch in etcd.watch(prefix, start_revision=first):
            out.extend(batch)
            if batch[-1].kv.mod_revision >= last:
                return out
    return out


def expected(events: list[WatchEvent]) -> list[tuple[str, str, int]]:
    kinds = []
    for e in events:
        if e.kind == "delete":
            kinds.append(("deleted", e.kv.key, e.kv.mod_revision))
        else:
            first = e.kv.create_revision == e.kv.mod_revision
            kinds.append(("created" if first else "updated", e.kv.key, e.kv.mod_revision))
    return kinds


def seen(messages: list[Message]) -> list[tuple[str, str, int]]:
    out = []
    for m in messages:
        assert m.event == m.data["kind"], m
        out.append((m.data["kind"], m.data["key"], m.data["revision"]))
    return out


def ids_are_positions(messages: list[Message]) -> None:
    """``R.n`` for the n-th event of revision R, plain ``R`` on its last."""
    for i, m in enumerate(messages):
        revision = m.data["revision"]
        last = i + 1 == len(messages) or messages[i + 1].data["revision"] != revision
        n = sum(1 for p in messages[: i + 1] if p.data["revision"] == revision)
        assert m.id == (str(revision) if last else f"{revision}.{n}"), (i, m)


async def make_project(api: Api, name: str) -> tuple[str, int]:
    async with api.http.post(f"{api.url}/api/projects", json={"name": name}) as resp:
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["id"]), int(resp.headers["ETag"].strip('"'))


# the stream's contents ---------------------------------------------------------------------------


async def test_changes_arrive_typed_in_order_with_their_revisions(api: Api, etcd: RawEtcd) -> None:
    stream = await api.stream()
    hello = await stream.next()
    start = await etcd.status()
    assert (hello.event, hello.data, hello.id) == ("hello", {"revision": start}, str(start))

    pid, created = await make_project(api, "demo")
    await api.call("PATCH", "/api/projects/demo", 200, json={"description": "changed"})
    body = {"name": "web", "config": {"image": "busybox:1.36"}}
    sid = (await api.call("POST", "/api/projects/demo/services", 201, json=body))["id"]
    await api.call("DELETE", "/api/projects/demo/services/web", 204)
    await api.call("DELETE", "/api/projects/demo", 204)
    last = await etcd.status()

    messages = await stream.through(last)
    truth = await history(etcd, start + 1, last)
    assert seen(messages) == expected(truth)  # each change once, in etcd's order
    ids_are_positions(messages)
    assert messages[0].data["revision"] == created == start + 1
    assert sorted({m.data["revision"] for m in messages}) == list(range(start + 1, last + 1))

    by = {(m.data["kind"], m.data["key"]): m.data["object"] for m in messages}
    meta = f"{ROOT}projects/{pid}/meta"
    service = f"{ROOT}projects/{pid}/services/{sid}/"
    assert by[("created", f"{ROOT}helper/projects/demo")] == pid  # a bare string value
    assert by[("created", meta)]["name"] == "demo"
    assert by[("updated", meta)]["description"] == "changed"
    assert by[("created", service + "image")] == "busybox:1.36"
    assert by[("created", service + "config")]["image"] == "busybox:1.36"
    # a delete carries the value it removed
    assert by[("deleted", service + "meta")]["name"] == "web"
    assert by[("deleted", meta)]["description"] == "changed"
    assert {m.data["revision"] for m in messages if m.data["key"] == service + "image"} == {
        start + 3,
        start + 4,
    }
    stream.close()


async def test_secrets_never_reach_the_stream(api: Api, etcd: RawEtcd) -> None:
    stream = await api.stream()
    start = (await stream.next()).data["revision"]
    account = {"host": HOST, "username": "u", "password": PASSWORD, "email": "ops@example.com"}
    await api.call("POST", "/api/registries", 201, json=account)
    await api.call("PATCH", f"/api/registries/{HOST}", 200, json={"password": "x" + PASSWORD})
    pid, _ = await make_project(api, "demo")
    sid = (await api.call("POST", f"/api/projects/{pid}/services", 201, json={"name": "web"}))["id"]
    package = {
        "type": "docker",
        "image": "busybox",
        "credentials": {"user": "deploy", "password": DOCKER_PASSWORD},
        "relationships": {"app": {"guid": sid}},
    }
    await api.call("POST", "/v3/packages", 201, json=package)
    await api.call("DELETE", f"/api/registries/{HOST}", 204)
    last = await etcd.status()

    messages = await stream.through(last)
    # the ciphertexts etcd held are not sent either
    stored = [e.kv.value for e in await history(etcd, start + 1, last) if e.kind == "put"]
    tokens = {
        t
        for value in stored
        for t in value.decode().replace('"', " ").split()
        if t.startswith("gAAAAA")
    }
    assert len(tokens) >= 3, tokens  # two registry passwords, one package password
    for secret in (PASSWORD, DOCKER_PASSWORD, *tokens):
        assert secret.encode() not in stream.raw
    registry = [m for m in messages if m.data["key"] == keys.registry(HOST)]
    assert [m.event for m in registry] == ["created", "updated", "deleted"]
    assert {m.data["object"]["password"] for m in registry} == {"***"}
    (created,) = [m for m in messages if m.data["key"].startswith(keys.packages(pid, sid))]
    assert created.data["object"]["credentials"]["password"] == "***"
    assert created.data["object"]["credentials"]["user"] == "deploy"
    stream.close()


async def test_a_prefix_streams_only_its_subtree(api: Api, etcd: RawEtcd) -> None:
    a, _ = await make_project(api, "alpha")
    b, _ = await make_project(api, "beta")
    stream_b = await api.stream(prefix=f"projects/{b}/")
    everything = await api.stream()
    start = (await stream_b.next()).data["revision"]
    await everything.next()

    await api.call("PATCH", "/api/projects/alpha", 200, json={"description": "a1"})
    await api.call("POST", "/api/projects/alpha/services", 201, json={"name": "web"})
    await api.call("PATCH", "/api/projects/beta", 200, json={"description": "b1"})
    await etcd.put(keys.leader("events-test"), "holder")  # system/: left out of other prefixes
    await api.call("POST", "/api/projects/beta/services", 201, json={"name": "web"})
    await api.call("PATCH", "/api/projects/alpha", 200, json={"description": "a2"})
    last = await etcd.status()

    mine = await stream_b.through(last - 1)  # beta's service is the last change but one
    assert seen(mine) == expected(await history(etcd, start + 1, last - 1, keys.project(b)))
    assert all(m.data["key"].startswith(keys.project(b)) for m in mine)
    all_keys = [m.data["key"] for m in await everything.through(last)]
    assert any(k.startswith(keys.project(a)) for k in all_keys)
    assert not any(k.startswith(f"{ROOT}system/") for k in all_keys)
    with pytest.raises(TimeoutError):  # alpha's last change never comes to beta's stream
        await stream_b.next(within=0.5)

    system = await api.stream(prefix="system/", since=str(start))
    (leader,) = await system.take(1)
    assert (leader.event, leader.data["key"], leader.data["object"]) == (
        "created",
        keys.leader("events-test"),
        "holder",
    )
    for s in (stream_b, everything, system):
        s.close()


def test_ciphertext_is_hidden_whatever_its_field_is_called() -> None:
    token = Secrets(generate_key()).encrypt("hunter2")
    assert shown(token.encode()) == "***"  # a bare value
    value = {"name": "x", "auth": {"blob": token, "api_key": "k"}, "list": [token, "plain"]}
    assert shown(json.dumps(value).encode()) == {
        "name": "x",
        "auth": {"blob": "***", "api_key": "***"},
        "list": ["***", "plain"],
    }
    assert shown(b"busybox:1.36") == "busybox:1.36"
    assert shown(b'{"password": ""}') == {"password": ""}  # nothing to hide


@pytest.mark.parametrize(
    ("params", "headers", "field"),
    [
        ({"prefix": "../etc"}, {}, "prefix"),
        ({"prefix": "projects/../../x"}, {}, "prefix"),
        ({"prefix": "projects/./"}, {}, "prefix"),
        ({"prefix": "/lastbackend/projects/"}, {}, "prefix"),
        ({"prefix": "projects//x"}, {}, "prefix"),
        ({"prefix": "a b"}, {}, "prefix"),
        ({"prefix": "x" * 1025}, {}, "prefix"),
        ({"since": "abc"}, {}, "since"),
        ({"since": "-1"}, {}, "since"),
        ({"since": "1.2.3"}, {}, "since"),
        ({}, {"Last-Event-ID": "12x"}, "Last-Event-ID"),
        ({"heartbeat": "0"}, {}, "heartbeat"),
        ({"heartbeat": "301"}, {}, "heartbeat"),
        ({"heartbeat": "1.5"}, {}, "heartbeat"),
    ],
)
async def test_bad_input_is_a_400_naming_it(
    api: Api, etcd: RawEtcd, params: dict[str, str], headers: dict[str, str], field: str
) -> None:
    before = await etcd.status()
    async with api.http.get(f"{api.url}/api/events", params=params, headers=headers) as resp:
        assert resp.status == 400
        (error,) = (await resp.json())["errors"]
    assert field in error["detail"]
    assert await etcd.status() == before
    assert api.app[STATE].event_streams == 0


async def test_openapi_describes_the_stream(api: Api) -> None:
    spec = await api.call("GET", "/openapi.json", 200)
    op = spec["paths"]["/api/events"]["get"]
    assert set(op["responses"]["200"]["content"]) == {"text/event-stream"}
    assert {p["name"] for p in op["parameters"]} == {"prefix", "since", "heartbeat"}
    assert spec["components"]["schemas"]["Event"]["properties"]["kind"]["enum"] == [
        "created",
        "updated",
        "deleted",
    ]


# resuming ----------------------------------------------------------------------------------------


async def test_resume_after_a_drop_loses_and_repeats_nothing(api: Api, etcd: RawEtcd) -> None:
    stream = await api.stream()
    start = (await stream.next()).data["revision"]
    await make_project(api, "demo")  # a two-key transaction
    await api.call("POST", "/api/projects/demo/services", 201, json={"name": "web"})  # six keys
    first = await stream.take(4)  # the project, then half-way through the service
    assert first[-1].id == f"{start + 2}.2"
    stream.close()

    # while disconnected
    await api.call("PATCH", "/api/projects/demo/services/web", 200, json={"description": "x"})
    await api.call("POST", "/api/projects/demo/services", 201, json={"name": "api"})
    second_stream = await api.stream(stream.last_id)
    await api.call("DELETE", "/api/projects/demo", 204)  # and after reconnecting
    last = await etcd.status()
    second = await second_stream.through(last)

    # a drop at a revision's end: resume with a plain revision, from the URL this time
    second_stream.close()
    await api.call("POST", "/api/projects", 201, json={"name": "again"})
    third_stream = await api.stream(since=str(last))
    last = await etcd.status()
    third = await third_stream.through(last)

    truth = expected(await history(etcd, start + 1, last))
    assert seen(first + second + third) == truth
    assert second[0].id == f"{start + 2}.3"
    ids_are_positions(first + second + third)
    third_stream.close()


async def test_a_header_id_wins_over_since(api: Api, etcd: RawEtcd) -> None:
    """EventSource reconnects to its first URL (with ``since``) and the last id in the header."""
    start = await etcd.status()
    await make_project(api, "one")
    mid = await etcd.status()
    await make_project(api, "two")
    stream = await api.stream(str(mid), since=str(start))
    (first, second) = await stream.take(2)
    assert {first.data["revision"], second.data["revision"]} == {mid + 1}
    stream.close()


async def test_a_compacted_revision_tells_the_client_to_relist(
    start_api: ApiFactory, private: tuple[EmbeddedEtcd, Etcd]
) -> None:
    server, etcd = private
    api = await start_api(etcd, server.endpoint)
    stream = await api.stream()
    old = (await stream.next()).data["revision"]
    stream.close()
    await make_project(api, "demo")
    await api.call("PATCH", "/api/projects/demo", 200, json={"description": "x"})
    now = await etcd.status()
    await etcd.compact(now)

    resumed = await api.stream(str(old))
    relist = await resumed.next()
    assert relist.event == "relist"
    assert relist.data["revision"] == now
    assert f"revision {old + 1} is compacted" in relist.data["reason"]
    assert relist.id is None  # the client's last id stays where it was
    assert await resumed.ended()

    # the client lists at ``now`` and resumes from there: no relist, the next change
    after = await api.stream(since=str(now))
    pid, _ = await make_project(api, "later")
    assert {m.data["key"] for m in await after.take(2)} == {
        f"{ROOT}helper/projects/later",
        keys.project_meta(pid),
    }
    after.close()

    ahead = await api.stream(str(now + 1000))  # an id from another (or a restored) etcd
    assert (await ahead.next()).event == "relist"
    assert await ahead.ended()


# liveness ----------------------------------------------------------------------------------------


async def test_heartbeats_keep_an_idle_stream_alive(api: Api) -> None:
    stream = await api.stream(heartbeat="1")
    await stream.next()
    with pytest.raises(TimeoutError):
        await stream.next(within=2.6)
    assert stream.heartbeats >= 2
    assert b"\n: heartbeat\n\n" in stream.raw
    stream.close()


async def test_read_tokens_may_stream_and_no_token_may_not(
    start_api: ApiFactory, etcd: RawEtcd, settings: Settings
) -> None:
    api = await start_api(
        etcd, settings.etcd_endpoints[0], admin_tokens=(ADMIN,), read_tokens=(READ,)
    )
    async with aiohttp.ClientSession() as anonymous:
        url = f"{api.url}/api/events"
        async with anonymous.get(url) as resp:
            assert resp.status == 401
        async with anonymous.get(url, headers={"Authorization": "Bearer nope"}) as resp:
            assert resp.status == 401
        reader = await anonymous.get(url, headers={"Authorization": f"Bearer {READ}"})
        assert reader.status == 200
        stream = Stream(reader)
        assert (await stream.next()).event == "hello"
        await make_project(api, "demo")  # written with the admin token
        assert (await stream.next()).data["key"] == f"{ROOT}helper/projects/demo"
        stream.close()


async def test_a_client_leaving_ends_the_stream_and_its_watch(api: Api) -> None:
    state = api.app[STATE]
    streams = [await api.stream() for _ in range(3)]
    for s in streams:
        await s.next()
    assert state.event_streams == 3
    streams[0].close()
    await eventually(lambda: _is(state.event_streams, 2), within=5)
    for s in streams[1:]:
        s.close()
    await eventually(lambda: _is(state.event_streams, 0), within=5)


async def _is(value: int, wanted: int) -> bool:
    return value == wanted


async def test_shutdown_ends_streams_without_waiting_out_the_drain(api: Api) -> None:
    """The drain waits for requests in flight; a stream never ends by itself, so it is not one,
    and shutdown ends it instead."""
    stream = await api.stream()
    await stream.next()
    assert api.app[INFLIGHT].count == 0
    loop = asyncio.get_running_loop()
    started = loop.time()
    await api.runner.cleanup()
    assert loop.time() - started < 1.5  # shutdown_timeout is 2
    assert await stream.ended()


async def test_a_stream_survives_an_etcd_restart(
    start_api: ApiFactory, private: tuple[EmbeddedEtcd, Etcd]
) -> None:
    server, etcd = private
    api = await start_api(etcd, server.endpoint)
    stream = await api.stream(heartbeat="1")
    start = (await stream.next()).data["revision"]
    await make_project(api, "before")
    before = await stream.take(2)

    server.stop()
    await asyncio.sleep(1.5)  # heartbeats go on while etcd is away
    server.start()
    async with RawEtcd([server.endpoint]) as writer:  # written before the API's watch is back
        await writer.put(f"{ROOT}registries-note", "1")
        await writer.delete_prefix(f"{ROOT}helper/projects/")
    server.kill()  # and a crash
    server.start()
    await eventually(lambda: _reachable(etcd), within=WITHIN)
    await make_project(api, "after")
    last = await etcd.status()
    during = await stream.through(last)
    assert stream.heartbeats >= 1

    stream.close()  # and a resume after the restart
    await api.call("PATCH", "/api/projects/after", 200, json={"description": "x"})
    resumed = await api.stream(stream.last_id)
    tail = await resumed.through(last + 1)

    truth = expected(await history(etcd, start + 1, last + 1))
    assert seen(before + during + tail) == truth
    assert [k for _, k, _ in truth].count(f"{ROOT}helper/projects/before") == 2  # made, deleted
    resumed.close()


async def _reachable(etcd: RawEtcd) -> bool:
    try:
        await etcd.status()
    except Exception:
        return False
    return True
