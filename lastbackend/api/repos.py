"""``/api/repos/...`` and ``/api/data``: build tags (seed 003) in the document's own shapes.

This family keeps the document's bodies and the original service's status codes (DESIGN.md
section 8), so its clients work unchanged: objects and collections are plain maps keyed by id,
PUT answers 200 whether it created or replaced, DELETE answers 200, a missing object is a 404 for
GET, HEAD and DELETE. Errors use the one error shape of every family.

Every level (repo, branch, tag, artifact) has GET, HEAD, PUT and DELETE; the collections of each
level have GET and HEAD. A PUT creates or replaces the object with its children (a repo with its
branches, ...) and creates missing ancestors with empty fields; PUT and DELETE answer with the
object as written or deleted. ``?dry-run=1`` (or ``true``) validates a PUT or DELETE and answers
as if done, writing nothing. GETs carry an ETag (see ``store/repos.py``) and honour
``If-None-Match`` with a 304.

An id in the path that is not an id (``check_path_id``) is a 400 naming the segment, before
anything is read.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from lastbackend import codec
from lastbackend.api.errors import ApiError, bad_query
from lastbackend.api.http import Handler, doc, encode, json_response, read_json
from lastbackend.api.state import STATE
from lastbackend.model import repos as model
from lastbackend.store.repos import Repos, Snapshot, TooLarge

routes = web.RouteTableDef()

SEGMENTS = ("repo", "branch", "tag", "artifact")
"""The URL parameter naming each level's id."""
PATHS = (
    "/api/repos/{repo}",
    "/api/repos/{repo}/branches/{branch}",
    "/api/repos/{repo}/branches/{branch}/tags/{tag}",
    "/api/repos/{repo}/branches/{branch}/tags/{tag}/artifacts/{artifact}",
)
SCHEMAS = ("Repo", "Branch", "Tag", "Artifact")
"""The OpenAPI schema of each level's body (``api/openapi.py``)."""
COLLECTION_SCHEMAS = ("Branches", "Tags", "Artifacts")
_TRUE, _FALSE = ("1", "true"), ("0", "false")


def _store(request: web.Request) -> Repos:
    state = request.app[STATE]
    return Repos(state.etcd, state.cache.repos if state.cache is not None else None)


def ids_of(request: web.Request, depth: int) -> tuple[str, ...]:
    """The ids in the path, checked: a 400 naming the segment for one that is not an id."""
    out = []
    for segment in SEGMENTS[:depth]:
        value = request.match_info[segment]
        try:
            out.append(model.check_path_id(value))
        except ValueError as exc:
            raise ApiError(
                400, f"{segment} id in the path: {exc}", title="CF-InvalidRequest", code=10004
            ) from None
    return tuple(out)


def dry_run(request: web.Request) -> bool:
    raw = request.query.get("dry-run")
    if raw is None or raw in _FALSE:
        return False
    if raw in _TRUE:
        return True
    raise bad_query("dry-run", f"must be 1, true, 0 or false; got {raw!r}")


def etag(version: str) -> str:
    return f'"{version}"'


def not_modified(request: web.Request, tag: str) -> bool:
    """Whether ``If-None-Match`` names ``tag`` (weak comparison, as RFC 9110 asks) or is ``*``."""
    raw = request.headers.get("If-None-Match")
    if raw is None:
        return False
    offered = {t.strip().removeprefix("W/") for t in raw.split(",")}
    return "*" in offered or tag in offered


def answer(
    request: web.Request, snap: Snapshot, data: Any = None, *, encoded: bytes | None = None
) -> web.Response:
    """200 with the value (or ``data``, or the ``encoded`` body) and its ETag; 304 if the client
    has that version."""
    headers = {}
    if snap.version is not None:
        tag = etag(snap.version)
        if request.method in ("GET", "HEAD") and not_modified(request, tag):
            return web.Response(status=304, headers={"ETag": tag})
        headers["ETag"] = tag
    if encoded is None and data is None:
        encoded = snap.body
    if encoded is not None:
        return json_response(None, headers=headers, encoded=encoded)
    return json_response(snap.view if data is None else data, headers=headers)


def _getter(depth: int) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return answer(request, await _store(request).get(ids_of(request, depth)))

    return handler


def _putter(depth: int) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        ids = ids_of(request, depth)
        dry = dry_run(request)
        node = codec.structure(await read_json(request), model.BODIES[depth - 1])
        try:
            snap = await _store(request).put(ids, node, dry_run=dry)
        except TooLarge as exc:
            raise ApiError(413, str(exc)) from None
        return answer(request, snap)

    return handler


def _deleter(depth: int) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        ids = ids_of(request, depth)
        snap = await _store(request).delete(ids, dry_run=dry_run(request))
        return answer(request, snap)

    return handler


def _lister(depth: int) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return answer(request, await _store(request).children(ids_of(request, depth)))

    return handler


def _add(method: str, path: str, handler: Handler) -> None:
    routes.route(method, path)(handler)


for _depth, (_path, _schema) in enumerate(zip(PATHS, SCHEMAS, strict=True), start=1):
    _level = model.LEVELS[_depth - 1]
    _add(
        "GET",
        _path,
        doc(f"Get a {_level}, nested whole (HEAD: its ETag)", response=_schema)(_getter(_depth)),
    )
    _add(
        "PUT",
        _path,
        doc(
            f"Create or replace a {_level} with its children; missing parents are created "
            "(dry-run=1: validate only)",
            body=_schema,
            response=_schema,
            query=("dry-run",),
        )(_putter(_depth)),
    )
    _add(
        "DELETE",
        _path,
        doc(
            f"Delete a {_level} and everything under it; answers with what was deleted",
            response=_schema,
            query=("dry-run",),
        )(_deleter(_depth)),
    )
    if _depth < 4:
        _collection = model.COLLECTIONS[_depth - 1]
        _add(
            "GET",
            f"{_path}/{_collection}",
            doc(
                f"The {_collection} of a {_level} by id, nested whole",
                response=COLLECTION_SCHEMAS[_depth - 1],
            )(_lister(_depth)),
        )


@routes.get("/api/repos")
@doc("Every repo by id, nested whole", response="Repos")
async def list_repos(request: web.Request) -> web.Response:
    return answer(request, await _store(request).children(()))


@routes.get("/api/repos/{repo}/tags")
@doc("Every tag of every branch of a repo, keyed <branch-id>/<tag-id>", response="RepoTags")
async def repo_tags(request: web.Request) -> web.Response:
    return answer(request, await _store(request).repo_tags(ids_of(request, 1)[0]))


@routes.get("/api/data")
@doc("Everything: {repos: {<repo-id>: Repo}, revision: <etcd revision>}", response="Data")
async def data(request: web.Request) -> web.Response:
    snap = await _store(request).data()
    # The repos' JSON is made once per version of the whole tree (``State.views``): the version
    # names its keys exactly (store/repos.py), so equal versions are equal bodies.
    views = request.app[STATE].views
    token = ("data", snap.version)
    repos = views.get(token)
    if repos is None:
        repos = encode(snap.view)
        views.put(token, repos)
    body = b'{"repos":' + repos + b',"revision":' + str(snap.revision).encode() + b"}"
    return answer(request, snap, encoded=body)
