"""Bad input never reaches etcd (DESIGN.md sections 7 and 8).

A matrix of bad requests over every write endpoint of the platform family. Each case asserts
a 4xx status, the one error shape ``{"errors": [{"code", "title", "detail"}]}``, that one
``detail`` names the offending field and the reason, and that etcd did not change at all: the
same keys with the same values, and not even a rewrite (the store revision is unchanged).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import ClientFactory, dump
from tests.support import RawEtcd

Client = TestClient[Any, Any]
Json = Any
A_UUID = "3f2c8a54-1b7e-4d2a-9c6f-0e5b7a1d2c3e"

# ------------------------------------------------------------------------------------------------
# The endpoints: a valid body for each, and how a field under test is placed in it.


@attrs.frozen
class Target:
    id: str
    method: str
    path: str
    valid: Json  # a body the endpoint accepts
    update: bool  # takes If-Match
    names: bool = False  # has name/description fields


PROJECT_POST = Target("project-post", "POST", "/api/projects", {"name": "fresh"}, False, True)
PROJECT_PATCH = Target("project-patch", "PATCH", "/api/projects/demo", {}, True, True)
PROJECT_PUT = Target("project-put", "PUT", "/api/projects/demo", {"name": "demo"}, True, True)
SERVICES = "/api/projects/demo/services"
SERVICE_POST = Target("service-post", "POST", SERVICES, {"name": "fresh"}, False, True)
SERVICE_PATCH = Target("service-patch", "PATCH", f"{SERVICES}/web", {}, True, True)
CONFIG_PUT = Target("config-put", "PUT", f"{SERVICES}/web/config", {}, True)
CONFIG_PATCH = Target("config-patch", "PATCH", f"{SERVICES}/web/config", {}, True)
SOURCE = {"hub": "github.com", "owner": "lastbackend", "repo": "demo"}
SOURCE_PUT = Target("source-put", "PUT", f"{SERVICES}/web/source", SOURCE, True)
DOMAINS_PUT = Target("domains-put", "PUT", f"{SERVICES}/web/domains", {}, True)
IMAGE_PUT = Target("image-put", "PUT", f"{SERVICES}/web/image", {"image": "nginx"}, True)

TARGETS = (
    PROJECT_POST,
    PROJECT_PATCH,
    PROJECT_PUT,
    SERVICE_POST,
    SERVICE_PATCH,
    CONFIG_PUT,
    CONFIG_PATCH,
    SOURCE_PUT,
    DOMAINS_PUT,
    IMAGE_PUT,
)

# Where a part of a service goes in each endpoint's body, and the field path errors report.
Placer = Callable[[Json], Json]


def _in(target: Target, field: str) -> Placer:
    return lambda value: {**target.valid, field: value}


CONFIG_PLACES: list[tuple[Target, Placer, str]] = [
    (SERVICE_POST, _in(SERVICE_POST, "config"), "config."),
    (SERVICE_PATCH, _in(SERVICE_PATCH, "config"), "config."),
    (CONFIG_PUT, lambda c: c, ""),
    (CONFIG_PATCH, lambda c: c, "config."),  # merged into the service's config: full path
]
SOURCE_PLACES: list[tuple[Target, Placer, str]] = [
    (SERVICE_POST, _in(SERVICE_POST, "source"), "source."),
    (SERVICE_PATCH, _in(SERVICE_PATCH, "source"), "source."),
    (SOURCE_PUT, lambda s: s, ""),
]
DOMAINS_PLACES: list[tuple[Target, Placer, str]] = [
    (SERVICE_POST, _in(SERVICE_POST, "domains"), "domains"),
    (SERVICE_PATCH, _in(SERVICE_PATCH, "domains"), "domains"),
    (DOMAINS_PUT, lambda d: d, ""),
]
IMAGE_PLACES: list[tuple[Target, Placer, str]] = [
    (SERVICE_POST, _in(SERVICE_POST, "image"), "image"),
    (SERVICE_PATCH, _in(SERVICE_PATCH, "image"), "image"),
    (SERVICE_POST, lambda i: {"name": "fresh", "config": {"image": i}}, "config.image"),
    (IMAGE_PUT, lambda i: {"image": i}, "image"),
]

# ------------------------------------------------------------------------------------------------
# The cases.


@attrs.frozen
class Case:
    target: Target
    body: Json | bytes  # bytes are sent as they are
    status: int
    detail: tuple[str, ...]  # one error's detail must contain every fragment
    headers: dict[str, str] = attrs.Factory(dict)
    max_body_bytes: int | None = None
    typed: bool = True  # sends Content-Type: application/json unless headers say otherwise


def param(case: Case, name: str) -> Any:
    return pytest.param(case, id=f"{case.target.id}:{name}")


def body_cases() -> Iterator[Any]:
    """Bodies that are not a usable JSON value at all, and headers that are wrong."""
    for t in TARGETS:
        yield param(Case(t, b'{"name": ', 400, ("not valid JSON",)), "malformed-json")
        yield param(Case(t, b"", 400, ("empty",)), "empty-body")
        yield param(Case(t, b" \n", 400, ("empty",)), "blank-body")
        yield param(Case(t, b'{"name":"\xff"}', 400, ("not valid JSON",)), "invalid-utf8")
        yield param(Case(t, b"[]", 422, ("body: ", "object")), "array-body")
        yield param(Case(t, b"null", 422, ("body: ", "object")), "null-body")
        yield param(Case(t, b'"text"', 422, ("body: ", "object")), "string-body")
        text = {"Content-Type": "text/plain"}
        yield param(Case(t, t.valid, 415, ("Content-Type", "application/json"), text), "text")
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        yield param(Case(t, b"name=x", 415, ("Content-Type",), form), "form")
        # No type at all: what a cross-site "simple" request may send without a preflight.
        untyped = Case(t, t.valid, 415, ("Content-Type", "application/json"), typed=False)
        yield param(untyped, "no-content-type")
        octets = {"Content-Type": "application/octet-stream"}
        yield param(Case(t, t.valid, 415, ("Content-Type",), octets), "octet-stream")
        big = b'{"description":"' + b"x" * 10240 + b'"}'
        yield param(Case(t, big, 413, ("larger than", "2048"), max_body_bytes=2048), "too-large")
        # Parser limits under the default size limit: still bad input, never a 500.
        deep = b"[" * 100_000 + b"]" * 100_000
        yield param(Case(t, deep, 400, ("JSON",)), "deeply-nested")
        huge = b'{"x":' + b"9" * 5000 + b"}"
        yield param(Case(t, huge, 400, ("JSON",)), "5000-digit-number")
        if t.update:
            bad = {"If-Match": "not-an-etag"}
            yield param(Case(t, t.valid, 412, ("If-Match", "not-an-etag"), bad), "if-match-bad")
            stale = {"If-Match": '"1"'}
            yield param(Case(t, t.valid, 412, ("version", "not 1"), stale), "if-match-stale")


def field_cases() -> Iterator[Any]:
    """JSON objects with one bad field: the detail names the field's path and the reason."""

    def case(t: Target, body: Json, path: str, reason: str, name: str) -> Any:
        return param(Case(t, body, 422, (f"{path}: ", reason)), name)

    for t in TARGETS:
        if t is not DOMAINS_PUT:  # a domains body is a map of host names: no field is unknown
            yield case(t, _in(t, "bogus")(1), "bogus", "unknown field", "unknown-field")
    for t in (PROJECT_POST, PROJECT_PATCH, PROJECT_PUT):
        yield case(t, _in(t, "config")({}), "config", "unknown field", "service-field")
    forged = _in(PROJECT_POST, "created")("2020-01-01T00:00:00Z")
    yield case(PROJECT_POST, forged, "created", "unknown field", "forged-created")
    yield case(SERVICE_POST, _in(SERVICE_POST, "id")(A_UUID), "id", "unknown field", "forged-id")

    names: list[tuple[str, Json, str]] = [
        ("empty-name", "", "must not be empty"),
        ("dotdot-name", "../x", "is not a DNS label"),
        ("space-name", "A B", "is not a DNS label"),
        ("upper-name", "Demo", "is not a DNS label"),
        ("slash-name", "a/b", "is not a DNS label"),
        ("64-char-name", "a" * 64, "at most 63 characters"),
        ("uuid-name", A_UUID, "looks like an id"),
        ("number-name", 5, "must be a string, got a number"),
        ("null-name", None, "must be a string, got null"),
    ]
    descriptions: list[tuple[str, Json, str]] = [
        ("long-description", "x" * 1025, "at most 1024 characters"),
        ("number-description", 1, "must be a string, got a number"),
    ]
    for t in TARGETS:
        if t.names:
            for name, value, reason in names:
                yield case(t, _in(t, "name")(value), "name", reason, name)
            for name, value, reason in descriptions:
                yield case(t, _in(t, "description")(value), "description", reason, name)
    yield case(PROJECT_POST, {}, "name", "is required", "missing-name")
    yield case(SERVICE_POST, {}, "name", "is required", "missing-name")

    configs: list[tuple[str, Json, str, str]] = [
        ("replicas-string", {"replicas": "3"}, "replicas", "must be an integer, got a string"),
        ("replicas-bool", {"replicas": True}, "replicas", "must be an integer, got a boolean"),
        ("replicas-negative", {"replicas": -1}, "replicas", "between 0 and 1000"),
        ("memory-float", {"memory": 1.5}, "memory", "must be an integer, got a number"),
        ("memory-tiny", {"memory": 1}, "memory", "between 6 and"),
        ("env-number", {"env": {"K": 1}}, "env['K']", "must be a string, got a number"),
        ("env-bad-name", {"env": {"1K": "v"}}, "env['1K']", "environment variable name"),
        ("env-list", {"env": ["K=v"]}, "env", "must be an object, got an array"),
        ("ports-list", {"ports": [80]}, "ports", "must be an object, got an array"),
        ("port-lowercase", {"ports": {"80/tcp": 0}}, "ports['80/tcp']", "<TCP|UDP>"),
        ("port-70000", {"ports": {"70000/TCP": 0}}, "ports['70000/TCP']", "<port 1-65535>"),
        ("host-port-70000", {"ports": {"80/TCP": 70000}}, "ports['80/TCP']", "0 and 65535"),
        ("volume-relative", {"volumes": {"data": "rel/path"}}, "volumes['data']", "absolute"),
        ("config-image", {"image": "UPPER CASE"}, "image", "docker image reference"),
        ("command-number", {"command": 5}, "command", "must be a string, got a number"),
        ("nested-unknown", {"bogus": 1}, "bogus", "unknown field"),
    ]
    for t, place, prefix in CONFIG_PLACES:
        for name, value, path, reason in configs:
            yield case(t, place(value), prefix + path, reason, name)
    for t in (SERVICE_POST, SERVICE_PATCH):  # a nested object that is not one
        yield case(t, _in(t, "config")([1]), "config", "must be an object", "config-list")
        source = _in(t, "source")("github.com/a/b")
        yield case(t, source, "source", "must be an object", "source-string")

    sources: list[tuple[str, Json, str, str]] = [
        ("hub-upper", {**SOURCE, "hub": "Foo"}, "hub", "host name"),
        ("branch-dotdot", {**SOURCE, "branch": "../x"}, "branch", "git branch"),
        ("owner-dotdot", {**SOURCE, "owner": ".."}, "owner", "repository owner"),
        ("repo-missing", {"hub": "github.com", "owner": "o"}, "repo", "is required"),
        ("source-unknown", {**SOURCE, "bogus": 1}, "bogus", "unknown field"),
    ]
    for t, place, prefix in SOURCE_PLACES:
        for name, value, path, reason in sources:
            yield case(t, place(value), prefix + path, reason, name)

    many = {f"h{n}.example.com": True for n in range(101)}
    domains: list[tuple[str, Json, str, str]] = [
        ("domain-slash", {"a.com/x": True}, "['a.com/x']", "label 'com/x'"),
        ("domain-string", {"a.example.com": "yes"}, "['a.example.com']", "must be a boolean"),
        ("domain-tld-wildcard", {"*.com": True}, "['*.com']", "two labels after '*.'"),
        ("domain-deep-wildcard", {"a.*.example.com": True}, "['a.*.example.com']", "wildcard"),
        ("domain-ip", {"10.0.0.1": True}, "['10.0.0.1']", "IP address"),
        ("domain-idna", {"xn--a.example.com": True}, "['xn--a.example.com']", "internationalized"),
        ("domain-twice", {"Web.example.com": True, "web.example.com": False}, "", "same host"),
        ("domain-many", many, "", "at most 100 hosts"),
        ("domain-platform", {"x.lb.localhost": True}, "", "under the platform domain"),
    ]
    for t, place, prefix in DOMAINS_PLACES:
        for name, value, path, reason in domains:
            yield case(t, place(value), prefix + path, reason, name)
    for t in (SERVICE_POST, SERVICE_PATCH):
        yield case(t, _in(t, "domains")(["a.com"]), "domains", "must be an object", "domains-list")

    images: list[tuple[str, Json, str]] = [
        ("image-upper", "UPPER CASE", "docker image reference"),
        ("image-number", 5, "must be a string, got a number"),
        ("image-empty", "", "docker image reference"),
    ]
    for t, place, path in IMAGE_PLACES:
        for name, value, reason in images:
            yield case(t, place(value), path, reason, name)
    yield case(IMAGE_PUT, {}, "image", "is required", "image-missing")
    yield case(IMAGE_PUT, {"image": None}, "image", "must be a string, got null", "image-null")


def unencodable_cases() -> Iterator[Any]:
    """Strings JSON can carry but UTF-8 cannot (a lone surrogate): refused, not a 500."""
    lone = b'"\\ud800"'
    for t in (PROJECT_POST, PROJECT_PATCH, SERVICE_POST, SERVICE_PATCH):
        body = json.dumps(t.valid)[:-1].encode()
        body += (b", " if t.valid else b"") + b'"description": ' + lone + b"}"
        yield param(Case(t, body, 422, ("description",)), "lone-surrogate-description")
    yield param(
        Case(CONFIG_PATCH, b'{"env": {"K": ' + lone + b"}}", 422, ("env['K']",)),
        "lone-surrogate-env",
    )
    yield param(
        Case(CONFIG_PATCH, b'{"command": ' + lone + b"}", 422, ("command",)),
        "lone-surrogate-command",
    )


# ------------------------------------------------------------------------------------------------
# The test.


async def _setup(api: Client) -> None:
    """A project ``demo`` with a fully populated service ``web``."""
    resp = await api.post("/api/projects", json={"name": "demo", "description": "d"})
    assert resp.status == 201, await resp.text()
    service = {
        "name": "web",
        "config": {"image": "nginx:1.27", "env": {"A": "1"}, "ports": {"80/TCP": 0}},
        "source": SOURCE,
        "domains": {"web.example.com": True},
    }
    resp = await api.post(SERVICES, json=service)
    assert resp.status == 201, await resp.text()


def _detail_problems(body: Any, case: Case) -> str | None:
    """Why ``body`` is not the error shape naming the case's fragments; ``None`` if it is."""
    if not isinstance(body, dict) or set(body) != {"errors"} or not body["errors"]:
        return f"not the error shape: {body!r}"
    for error in body["errors"]:
        if not isinstance(error, dict) or set(error) != {"code", "title", "detail"}:
            return f"not the error shape: {error!r}"
        if not isinstance(error["code"], int) or not isinstance(error["title"], str):
            return f"code/title of the wrong type: {error!r}"
    details = [e["detail"] for e in body["errors"]]
    if not any(all(f in d for f in case.detail) for d in details):
        return f"no detail contains all of {case.detail}: {details}"
    return None


CASES = [*body_cases(), *field_cases(), *unencodable_cases()]


@pytest.mark.parametrize("case", CASES)
async def test_bad_input_is_refused_and_writes_nothing(
    case: Case, make_client: ClientFactory, etcd: RawEtcd
) -> None:
    overrides = {} if case.max_body_bytes is None else {"max_body_bytes": case.max_body_bytes}
    api = await make_client(**overrides)
    await _setup(api)
    before, revision = await dump(etcd), await etcd.status()

    raw = case.body if isinstance(case.body, bytes) else json.dumps(case.body).encode()
    headers = {"Content-Type": "application/json", **case.headers} if case.typed else case.headers
    skip = () if case.typed else ("Content-Type",)  # else aiohttp labels bytes octet-stream
    resp = await api.request(
        case.target.method, case.target.path, data=raw, headers=headers, skip_auto_headers=skip
    )
    text = await resp.text()

    assert resp.status == case.status, text[:500]
    assert resp.content_type == "application/json"
    problem = _detail_problems(json.loads(text), case)
    assert problem is None, problem
    assert await dump(etcd) == before
    assert await etcd.status() == revision, "something was written (or rewritten)"


async def test_the_matrix_setup_is_accepted(make_client: ClientFactory, etcd: RawEtcd) -> None:
    """Every target's valid body succeeds, so each bad case fails for its own reason."""
    api = await make_client(max_body_bytes=2048)
    await _setup(api)
    for target in TARGETS:
        body = target.valid
        if target is PROJECT_POST:
            body = {"name": "fresh-project"}
        resp = await api.request(target.method, target.path, json=body)
        assert resp.status in (200, 201), (target.id, await resp.text())
