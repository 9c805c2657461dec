"""No header, query parameter or path segment gives a 5xx, whatever its bytes (issue 13, section 1).

Raw bytes go over a raw socket: HTTP clients refuse to send a header that is not text, and
re-encode the URL they are given. aiohttp hands header bytes that are not UTF-8 to handlers as
surrogate escapes, and a query's invalid percent-escapes as U+FFFD; ``str.isdigit`` accepts
``'²'`` and ``int`` refuses it; ``int`` also refuses more than 4,300 digits. Each was a 500.

The sweep at the end sends every kind of bad value in every route's path segments, its query
parameters and the headers the API reads, and asserts a 4xx in the one error shape that names
the input, with nothing written to etcd.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import attrs
import pytest
from aiohttp.test_utils import TestClient, TestServer

from lastbackend.api.app import make_app
from lastbackend.config import Settings
from tests.conftest import ClientFactory
from tests.support import RawEtcd

pytestmark = pytest.mark.etcd

Client = TestClient[Any, Any]
ADMIN_TOKEN = b"adm"


# a raw HTTP/1.1 client -------------------------------------------------------------------------


@attrs.frozen
class Answer:
    status: int
    headers: dict[str, str]  # names lowercased
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def detail(self) -> str:
        """Every error's detail, joined: what a user reads."""
        return " | ".join(e["detail"] for e in self.json()["errors"])


async def raw_request(
    port: int,
    method: bytes,
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]] = (),
    body: bytes = b"",
    *,
    host: bytes | None = None,
) -> Answer:
    """Send exactly these bytes; read the status and headers, and the body unless it streams."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [method + b" " + target + b" HTTP/1.1"]
        lines.append(b"Host: " + (host if host is not None else b"127.0.0.1:%d" % port))
        lines += [name + b": " + value for name, value in headers]
        if body or method in (b"POST", b"PUT", b"PATCH"):
            lines.append(b"Content-Length: %d" % len(body))
        lines.append(b"Connection: close")
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        got = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                got[name.strip().lower()] = value.strip()
        data = b""
        if "content-length" in got and method != b"HEAD":
            data = await asyncio.wait_for(reader.readexactly(int(got["content-length"])), 10)
        return Answer(status, got, data)
    finally:
        writer.close()


async def state_of(etcd: RawEtcd) -> tuple[int, dict[str, bytes]]:
    """The store revision and every key: a refused request must change neither."""
    from tests.conftest import dump

    return await etcd.status(), await dump(etcd)


def assert_refused(answer: Answer, *fragments: str) -> None:
    """A 4xx in the one error shape, whose details contain every fragment."""
    assert 400 <= answer.status < 500, (answer.status, answer.body[:500])
    assert answer.headers.get("content-type", "").startswith("application/json"), answer
    errors = answer.json()["errors"]
    assert errors
    assert all(set(e) == {"code", "title", "detail"} for e in errors), errors
    detail = answer.detail()
    for fragment in fragments:
        assert fragment in detail, (fragment, detail)


# the world the requests run against ------------------------------------------------------------


@attrs.define
class World:
    client: Client
    etcd: RawEtcd
    ids: dict[str, str] = attrs.Factory(dict)

    @property
    def port(self) -> int:
        return int(self.client.port)  # type: ignore[arg-type]

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": "Bearer adm"}
        resp = await self.client.request(method, path, json=body, headers=headers)
        assert resp.status in (200, 201), await resp.text()
        return await resp.json()

    async def request(
        self,
        method: str,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]] = (),
        body: bytes | None = None,
        **kwargs: Any,
    ) -> Answer:
        """A raw request as the admin (unless ``headers`` has its own Authorization)."""
        sent = list(headers)
        if not any(name.lower() == b"authorization" for name, _ in sent):
            sent.append((b"Authorization", b"Bearer " + ADMIN_TOKEN))
        if body is None and method in ("POST", "PUT", "PATCH"):
            body = b"{}"
        if body and not any(name.lower() == b"content-type" for name, _ in sent):
            sent.append((b"Content-Type", b"application/json"))
        return await raw_request(self.port, method.encode(), target, sent, body or b"", **kwargs)


SOURCE = {"hub": "github.com", "owner": "acme", "repo": "site", "branch": "master"}


async def no_containers(container: str, follow: bool, tail: int | None) -> Any:
    raise LookupError(f"container {container!r} is not on this node")


@pytest.fixture
async def world(settings: Settings, etcd: RawEtcd, tmp_path: Any) -> AsyncIterator[World]:
    """The API with tokens and every optional route served (node logs, lifecycle, buildpacks),
    a project ``demo`` with a service ``web`` that has one build, and an image."""
    app = make_app(
        attrs.evolve(settings, admin_tokens=("adm",), read_tokens=("ro",), data_dir=tmp_path),
        etcd,
        logs=no_containers,
        lifecycle=lambda: {},
        buildpacks=lambda: {},
    )
    async with TestClient(TestServer(app)) as client:
        yield await _populated(World(client, etcd))


async def _populated(w: World) -> World:
    await w.call("POST", "/api/projects", {"name": "demo"})
    w.ids["service"] = (
        await w.call("POST", "/api/projects/demo/services", {"name": "web", "source": SOURCE})
    )["id"]
    w.ids["image"] = (await w.call("POST", "/api/images", {"name": "acme/site", "source": SOURCE}))[
        "id"
    ]
    await w.call("POST", "/api/projects/demo/services/web/builds")
    return w


BUILD = "/api/projects/demo/services/web/builds"


# the reproductions of the issue ----------------------------------------------------------------


@pytest.mark.parametrize(
    "target", [b"/api/projects", b"/api/projects/demo", b"/v3/apps", b"/metrics", b"/nowhere"]
)
async def test_a_non_utf8_authorization_is_a_4xx_naming_it_on_every_route(
    world: World, target: bytes
) -> None:
    before = await state_of(world.etcd)
    for method in ("GET", "POST", "DELETE"):
        answer = await world.request(method, target, [(b"Authorization", b"Bearer \xff\xfe")])
        assert_refused(answer, "Authorization", "UTF-8")
    assert await state_of(world.etcd) == before


async def test_a_non_utf8_authorization_is_refused_with_auth_off(
    make_client: ClientFactory,
) -> None:
    client = await make_client()
    answer = await raw_request(
        int(client.port),  # type: ignore[arg-type]
        b"GET",
        b"/api/projects",
        [(b"Authorization", b"Bearer \xc3")],
    )
    assert_refused(answer, "Authorization", "UTF-8")


@pytest.mark.parametrize(
    ("vendor", "header"),
    [
        ("github", b"X-Hub-Signature-256"),
        ("bitbucket", b"X-Hub-Signature"),
        ("gitlab", b"X-Gitlab-Token"),
        ("github", b"X-GitHub-Event"),
        ("github", b"X-GitHub-Delivery"),
    ],
)
async def test_a_non_utf8_webhook_header_is_a_4xx(world: World, vendor: str, header: bytes) -> None:
    await world.call("PUT", f"/api/vendors/{vendor}", {"token": "t", "webhook_secret": "s3cret"})
    before = await state_of(world.etcd)
    answer = await world.request(
        "POST", f"/api/hooks/{vendor}".encode(), [(header, b"sha256=\xff")], b"{}"
    )
    assert_refused(answer)
    assert header.decode() in answer.detail() or answer.status == 401
    assert await state_of(world.etcd) == before


@pytest.mark.parametrize(
    "value",
    [b'"\xff"', b'"\xc2\xb2"', b"\xc2\xb2", b'"' + b"9" * 5000 + b'"', b'W/"\xd9\xa3"'],
    ids=["non-utf8", "superscript-two", "bare-superscript", "5000-digits", "arabic-digit"],
)
async def test_a_bad_if_match_is_a_412_naming_it_and_writes_nothing(
    world: World, value: bytes
) -> None:
    before = await state_of(world.etcd)
    for method, target in (("DELETE", b"/api/projects/demo"), ("PATCH", b"/api/projects/demo")):
        answer = await world.request(method, target, [(b"If-Match", value)])
        assert answer.status in (400, 412), answer
        assert_refused(answer, "If-Match")
    assert await state_of(world.etcd) == before


@pytest.mark.parametrize("name", ["page", "per_page"])
@pytest.mark.parametrize(
    "value",
    [b"%C2%B2", b"%D9%A3", b"%EF%BC%91", b"9" * 5000, b"0" * 5000, b"%FF", b"1%00"],
    ids=["superscript-two", "arabic-three", "fullwidth-one", "5000-digits", "zeros", "ff", "nul"],
)
@pytest.mark.parametrize("path", ["/api/projects", "/v3/apps", "/v3/packages", BUILD])
async def test_a_bad_page_number_is_a_400_naming_it(
    world: World, name: str, value: bytes, path: str
) -> None:
    answer = await world.request("GET", path.encode() + b"?" + name.encode() + b"=" + value)
    assert answer.status == 400, answer
    assert_refused(answer, f"query parameter {name}")
    assert len(answer.body) < 2000, "the answer echoes the whole value"


@pytest.mark.parametrize(
    "segment",
    [b"%C2%B2", b"%D9%A3", b"9" * 5000, b"1" + b"0" * 30, b"%FF", b"01", b"-1", b"1%00"],
    ids=["superscript-two", "arabic-three", "5000-digits", "huge", "ff", "zero-1", "neg", "nul"],
)
@pytest.mark.parametrize("tail", [b"", b"/logs", b"/cancel"])
async def test_a_bad_build_number_in_the_path_is_a_404_naming_it(
    world: World, segment: bytes, tail: bytes
) -> None:
    before = await state_of(world.etcd)
    for base in (BUILD.encode(), b"/api/images/%s/builds" % world.ids["image"].encode()):
        method = "POST" if tail == b"/cancel" else "GET"
        answer = await world.request(method, base + b"/" + segment + tail)
        assert answer.status == 404, answer
        assert_refused(answer, "build", "numbered")
    assert await state_of(world.etcd) == before


# the sweep: every route, every kind of bad value ----------------------------------------------

BAD_SEGMENTS = (b"%FF", b"%C2%B2", b"9" * 5000, b"%00", b"%ED%A0%80", b"a" * 5000, b"%20", b"..")
BAD_QUERY_VALUES = (b"%C2%B2", b"9" * 5000, b"%FF", b"%00", b"", b"-1", b"%D9%A3", b"x" * 5000)
COMMON_QUERY = ("page", "per_page", "order_by", "follow", "tail", "since", "heartbeat", "prefix")
BAD_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"Authorization", b"Bearer \xff"),
    (b"Authorization", b"\xc2\xb2"),
    (b"If-Match", b'"\xc2\xb2"'),
    (b"If-Match", b'"' + b"9" * 5000 + b'"'),
    (b"If-Match", b"\xff"),
    (b"If-None-Match", b'"\xff"'),
    (b"Last-Event-ID", b"\xc2\xb2"),
    (b"Last-Event-ID", b"9" * 5000),
    (b"Last-Event-ID", b"\xff"),
    (b"X-Request-ID", b"\xff"),
    (b"Content-Type", b"application/json; charset=\xff"),
    (b"Content-Type", b"\xff"),
    (b"Origin", b"http://\xff"),
    (b"X-Hub-Signature-256", b"sha256=\xff"),
    (b"X-Gitlab-Token", b"\xff"),
    (b"X-GitHub-Event", b"\xff"),
    (b"X-GitHub-Delivery", b"\xff"),
    (b"X-Gitlab-Event-UUID", b"\xff"),
    (b"X-Request-UUID", b"\xff"),
)
_VARIABLE = re.compile(r"\{(\w+)(?::[^}]*)?\}")


def routes() -> Iterator[tuple[str, str, tuple[str, ...]]]:
    """(method, canonical path, documented query) for every route but HEAD (GET's twin)."""
    app = make_app(Settings(), None)  # type: ignore[arg-type]
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        spec = getattr(route.handler, "__doc_spec__", None)
        yield route.method, route.resource.canonical, tuple(getattr(spec, "query", ()))


def fill(world: World, path: str, bad: tuple[str, bytes] | None = None) -> bytes:
    """The path with real names in its variables, and ``bad`` (variable, bytes) in one."""
    known = {
        "project": b"demo",
        "service": b"web",
        "image": world.ids["image"].encode(),
        "build": b"1",
        "vendor": b"github",
        "host": b"registry.example.com",
        "guid": world.ids["service"].encode(),
    }

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        value = bad[1] if bad is not None and bad[0] == name else known.get(name, b"x")
        return value.decode("latin-1")

    return _VARIABLE.sub(one, path).encode("latin-1")


def variants(world: World, path: str, query: Sequence[str]) -> Iterator[tuple[str, Any]]:
    for name in _VARIABLE.findall(path):
        for value in BAD_SEGMENTS:
            yield f"path {name}={value[:12]!r}", (fill(world, path, (name, value)), ())
    for name in (*COMMON_QUERY, *query):
        for value in BAD_QUERY_VALUES:
            target = fill(world, path) + b"?" + name.encode() + b"=" + value
            yield f"query {name}={value[:12]!r}", (target, ())
    for header in BAD_HEADERS:
        yield f"header {header[0]!r}={header[1][:12]!r}", (fill(world, path), (header,))


ROUTES = sorted(set(routes()))


@pytest.mark.parametrize(
    ("method", "path", "query"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES]
)
async def test_no_path_segment_query_parameter_or_header_gives_a_5xx(
    world: World, method: str, path: str, query: tuple[str, ...]
) -> None:
    failures = []
    revision = await world.etcd.status()
    for name, (target, headers) in variants(world, path, query):
        answer = await world.request(method, target, headers)
        now = await world.etcd.status()  # every write moves the revision
        if answer.status >= 500:
            failures.append(f"{name}: {answer.status} {answer.body[:200]!r}")
        elif answer.status >= 400:
            if not answer.headers.get("content-type", "").startswith("application/json"):
                failures.append(f"{name}: {answer.status} not in the error shape")
            elif now != revision:
                failures.append(f"{name}: {answer.status} but something was written")
        revision = now
    assert not failures, "\n".join(failures)
