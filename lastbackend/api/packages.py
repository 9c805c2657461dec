"""``/v3/packages``: bits, docker and git packages of an app (seed 000), and bits uploads.

Shapes are the document's, plus ``guid``, ``created_at``/``updated_at`` and ``links``: a bits
package shows ``error`` and ``hash``; a docker package ``image_path`` and ``credentials``; a git
package ``url`` and ``credentials``. Credentials come back as the document shows them with every
secret as ``"***"`` (DESIGN.md section 7); a package without credentials shows ``null``. A git
URL given with credentials in it (``https://user:password@host/repo.git``) is stored without
them and they become the package's credentials (a lone ``https://TOKEN@host`` is a password);
giving both is a 422 naming ``url``. Docker
and git packages are ``READY`` at once; a bits package is ``AWAITING_UPLOAD`` until
``POST /v3/packages/:guid/upload`` succeeds.

An upload is a ``multipart/form-data`` body with the archive in the file field ``bits``. In
order: the body is read up to the headers of ``bits`` (fields before it are skipped, up to
1 MiB); the package moves to ``PROCESSING_UPLOAD``, before a byte of the archive is received,
so a second upload of the same package is a 409 at once instead of spooling beside the first;
the archive is streamed to a temporary file in the blob store, never held in memory, and capped
at ``staging.max_upload_bytes`` (the 1 MiB JSON body limit does not apply); it is checked and
normalized (:mod:`lastbackend.sources.archive`); the normalized tar becomes the blob
``packages/<guid>.tar``; the package becomes ``READY`` with ``hash.value`` the sha1 of the
uploaded bytes, or ``FAILED`` with ``error`` saying why (the response is then a 422 naming
``bits``, or a 400 for a body cut off or malformed inside ``bits``).

A body without a ``bits`` field, or malformed before it (a part header without a colon), is a
4xx that changes nothing. A ``FAILED`` package may be uploaded again; a ``READY`` one may not
(create a new package for new bits). A ``PROCESSING_UPLOAD`` older than five minutes belongs to
a process that died: a new upload takes it over, and the gc controller fails it with "upload
interrupted" (a live upload refreshes ``updated`` every minute).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from lastbackend import codec
from lastbackend.api.errors import ApiError
from lastbackend.api.http import (
    Paging,
    body,
    doc,
    if_match,
    json_response,
    list_filter,
    page_body,
    paging,
)
from lastbackend.api.state import STATE
from lastbackend.model.apps import (
    BitsPackage,
    DockerPackage,
    GitCredentials,
    GitPackageCreate,
    GitUrl,
    Hash,
    PackageCreate,
    PackageState,
    PackageType,
)
from lastbackend.model.common import Id, mask_secrets, now
from lastbackend.sources import archive, git
from lastbackend.sources.archive import ArchiveError
from lastbackend.sources.blobs import BlobStore
from lastbackend.store.owned import AppNotFound, app_project
from lastbackend.store.packages import UPLOAD_HEARTBEAT, Packages, StoredPackage, upload_stale

routes = web.RouteTableDef()

BASE = "/v3/packages"
ONE = BASE + "/{guid}"
OF_APP = "/v3/apps/{guid}/packages"
ORDER = ("created_at", "updated_at")
CHUNK = 1 << 16
FLUSH = 1 << 20
"""Bytes of an upload gathered before one write to disk (in a thread)."""

T = TypeVar("T")


def href(guid: str) -> str:
    return f"{BASE}/{guid}"


def view(stored: StoredPackage) -> dict[str, Any]:
    package = stored.package
    out: dict[str, Any] = {"guid": stored.guid, "type": package.type, "state": package.state}
    if isinstance(package, BitsPackage):
        out["error"] = package.error
        out["hash"] = codec.unstructure(package.hash)
    elif isinstance(package, DockerPackage):
        out["image_path"] = package.image
        out["credentials"] = _masked(package.credentials)
    else:
        out["url"] = git.mask_url(package.url)  # a URL stored before credentials were split out
        out["credentials"] = _masked(package.credentials)
    links: dict[str, Any] = {
        "self": {"href": href(stored.guid)},
        "app": {"href": f"/v3/apps/{stored.app}"},
        "droplets": {"href": f"{href(stored.guid)}/droplets"},
        "stage": {"href": f"{href(stored.guid)}/droplets", "method": "POST"},
    }
    if isinstance(package, BitsPackage):
        links["upload"] = {"href": f"{href(stored.guid)}/upload", "method": "POST"}
    return {
        **out,
        "created_at": codec.format_time(package.created),
        "updated_at": codec.format_time(package.updated),
        "links": links,
    }


def _masked(credentials: Any) -> dict[str, Any] | None:
    return None if credentials is None else mask_secrets(codec.unstructure(credentials))


def _url_credentials(spec: Any) -> Any:
    """A git package's spec with the credentials of its URL moved into ``credentials``, where
    they are encrypted and shown as ``***``; a URL is shown, logged and streamed as it is."""
    if not isinstance(spec, GitPackageCreate):
        return spec
    inline = git.split_userinfo(spec.url)
    if inline is None:
        return spec
    given = spec.credentials
    if given is not None and (given.user or given.password or given.api_key):
        raise ApiError(
            422,
            "url: holds credentials (user:password@) and credentials are given as well; "
            "give them once, in credentials",
        )
    credentials = GitCredentials(user=inline.user, password=inline.password)
    return attrs.evolve(spec, url=GitUrl(inline.url), credentials=credentials)


def _repo(request: web.Request) -> Packages:
    return request.app[STATE].packages


# lists: shared with the droplets routes ---------------------------------------------------------


def listing(
    request: web.Request,
    items: Sequence[T],
    revision: int,
    render: Callable[[T], dict[str, Any]],
    stamps: Callable[[T], tuple[Any, Any]],
) -> web.Response:
    """One page of ``items`` in ``order_by`` order (``created_at`` by default, ``-`` reverses);
    ``stamps(item)`` gives its (created, updated)."""
    pg: Paging = paging(request, ORDER)
    field = request.query.get("order_by", ORDER[0]).lstrip("-")
    index = ORDER.index(field)
    ordered = sorted(items, key=lambda item: stamps(item)[index], reverse=pg.descending)
    chosen = pg.of(ordered)
    return json_response(
        page_body(request, pg, len(items), [render(i) for i in chosen]),
        headers={"X-Etcd-Revision": str(revision)},
    )


def _stamps(stored: StoredPackage) -> tuple[Any, Any]:
    return stored.package.created, stored.package.updated


# routes ------------------------------------------------------------------------------------------


def _created(stored: StoredPackage) -> web.Response:
    return json_response(
        view(stored),
        status=201,
        revision=stored.revision,
        headers={"Location": href(stored.guid)},
    )


@routes.post(BASE)
@doc(
    "Create a package (bits, docker or git) of the app in relationships.app.guid",
    body="PackageCreate",
    response="Package",
    status=201,
)
async def create(request: web.Request) -> web.Response:
    spec: Any = _url_credentials(await body(request, PackageCreate))  # type: ignore[arg-type]
    if spec.relationships is None:
        raise ApiError(422, "relationships.app.guid: is required: the app the package is for")
    app = spec.relationships.app.guid
    try:
        stored = await _repo(request).create(app, spec)
    except AppNotFound:
        raise ApiError(422, f"relationships.app.guid: app {app!r} not found") from None
    return _created(stored)


@routes.post(OF_APP)
@doc("Create a package of this app", body="PackageCreate", response="Package", status=201)
async def create_for_app(request: web.Request) -> web.Response:
    app = request.match_info["guid"]
    spec: Any = _url_credentials(await body(request, PackageCreate))  # type: ignore[arg-type]
    if spec.relationships is not None and spec.relationships.app.guid != app:
        raise ApiError(422, "relationships.app.guid: must be the app in the path, or left out")
    return _created(await _repo(request).create(app, spec))


@routes.get(BASE)
@doc(
    "List packages, oldest first (filters: app_guids, states, types; comma-separated)",
    response="Package",
    paginated=True,
    order=ORDER,
    query={"app_guids": Id, "states": PackageState, "types": PackageType},
)
async def index(request: web.Request) -> web.Response:
    items, revision = await _repo(request).list(
        apps=list_filter(request, "app_guids", Id),
        states=list_filter(request, "states", PackageState),
        types=list_filter(request, "types", PackageType),
    )
    return listing(request, items, revision, view, _stamps)


@routes.get(OF_APP)
@doc(
    "List an app's packages, oldest first (filters: states, types)",
    response="Package",
    paginated=True,
    order=ORDER,
    query={"states": PackageState, "types": PackageType},
)
async def index_of_app(request: web.Request) -> web.Response:
    app = request.match_info["guid"]
    await app_project(request.app[STATE].etcd, app)  # 404 for an unknown app
    items, revision = await _repo(request).list(
        apps=[app],
        states=list_filter(request, "states", PackageState),
        types=list_filter(request, "types", PackageType),
    )
    return listing(request, items, revision, view, _stamps)


@routes.get(ONE)
@doc("Get a package (credentials show *** for secrets)", response="Package")
async def show(request: web.Request) -> web.Response:
    stored = await _repo(request).get(request.match_info["guid"])
    return json_response(view(stored), revision=stored.revision)


@routes.delete(ONE)
@doc("Delete a package and its bits (its droplets stay)", status=204)
async def delete(request: web.Request) -> web.Response:
    guid = request.match_info["guid"]
    await _repo(request).delete(guid, if_match=if_match(request))
    await asyncio.to_thread(request.app[STATE].blobs.delete, "packages", guid)
    return web.Response(status=204)


# uploads -----------------------------------------------------------------------------------------


def _uploadable(stored: StoredPackage) -> BitsPackage:
    """The package if it may take an upload now; else the 4xx that says why."""
    package = stored.package
    if not isinstance(package, BitsPackage):
        raise ApiError(
            422, f"type: only bits packages take an upload; this one is a {package.type} package"
        )
    if package.state == "READY":
        raise ApiError(
            422, "bits: the package is already uploaded (READY); create a new package for new bits"
        )
    if package.state == "EXPIRED":
        raise ApiError(422, "bits: the package has expired; create a new package")
    if package.state == "PROCESSING_UPLOAD" and not upload_stale(package, now()):
        raise ApiError(
            409,
            "bits: another upload of this package is being processed; "
            "see its state with GET when it is done",
        )
    return package


def _claim(stored: StoredPackage) -> BitsPackage:
    return attrs.evolve(_uploadable(stored), state="PROCESSING_UPLOAD", error=None, hash=Hash())


class _Claim:
    """An upload's hold on its package while ``PROCESSING_UPLOAD``: refreshes ``updated`` every
    :data:`UPLOAD_HEARTBEAT` seconds so it never looks abandoned, and writes the outcome only
    if nobody took the package over (or deleted it) meanwhile."""

    def __init__(self, repo: Packages, stored: StoredPackage) -> None:
        assert isinstance(stored.package, BitsPackage)
        self.repo = repo
        self.claimed: BitsPackage = stored.package
        self.current: StoredPackage | None = stored
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._beat())

    async def _beat(self) -> None:
        while self.current is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), UPLOAD_HEARTBEAT)
                return
            fresh = attrs.evolve(self.current.package, updated=now())
            self.current = await self.repo.swap(self.current, fresh)

    async def finish(self, package: BitsPackage) -> StoredPackage | None:
        """Stop the heartbeat (letting a refresh in flight land) and write ``package``."""
        self._stop.set()
        with contextlib.suppress(Exception):
            await self._task
        if self.current is None:
            return None
        return await self.repo.swap(self.current, attrs.evolve(package, updated=now()))


_MAX_OTHER_FIELDS = 1 << 20
"""Bytes of fields other than ``bits`` skipped before it (they are read and dropped)."""


async def _bits_part(request: web.Request) -> BodyPartReader | None:
    """The multipart field ``bits``, its headers read and its content not yet; None if the body
    has none. Fields before it are skipped (up to :data:`_MAX_OTHER_FIELDS` bytes); a malformed
    body is a 400 naming ``bits``."""
    skipped = 0
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if isinstance(part, BodyPartReader) and part.name == "bits":
                return part
            while isinstance(part, BodyPartReader) and (chunk := await part.read_chunk(CHUNK)):
                skipped += len(chunk)
                if skipped > _MAX_OTHER_FIELDS:
                    raise ApiError(
                        422, "bits: is required first: the fields before it exceed 1 MiB"
                    )
            await part.release()
    except _MALFORMED as exc:
        raise _malformed(exc) from None
    return None


_MALFORMED = (AssertionError, ValueError, LookupError, HttpProcessingError)
"""What aiohttp's multipart reader raises for a body that is not multipart as it says: a part
header without a colon is an ``HttpProcessingError``, a bad length a ``ValueError``."""


def _malformed(exc: BaseException) -> ApiError:
    reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return ApiError(400, f"bits: the multipart body is malformed: {reason}")


async def _spool(part: BodyPartReader, dest: Path, limit: int) -> int:
    """Stream ``part`` into ``dest``; its size. Past ``limit`` bytes, :class:`ArchiveError`."""
    size = 0
    buffer = bytearray()
    out = await asyncio.to_thread(open, dest, "wb")
    try:
        while chunk := await part.read_chunk(CHUNK):
            size += len(chunk)
            if size > limit:
                raise archive.too_large(limit)
            buffer += chunk
            if len(buffer) >= FLUSH:
                await asyncio.to_thread(out.write, bytes(buffer))
                buffer.clear()
        if buffer:
            await asyncio.to_thread(out.write, bytes(buffer))
    except ArchiveError:
        raise
    except _MALFORMED as exc:
        raise _malformed(exc) from None
    finally:
        await asyncio.to_thread(out.close)
    return size


def _discard(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


CUT_OFF = "the upload was cut off before the archive was received whole; upload again"


@routes.post(ONE + "/upload")
@doc(
    "Upload a bits package's archive: multipart/form-data, zip or tar.gz in the file field bits",
    response="Package",
)
async def upload(request: web.Request) -> web.Response:
    state = request.app[STATE]
    repo, blobs, limit = state.packages, state.blobs, state.settings.max_upload_bytes
    guid = request.match_info["guid"]
    _uploadable(await repo.get(guid))  # refuse before receiving a byte
    if request.content_type != "multipart/form-data":
        raise ApiError(
            422,
            "bits: is required: send multipart/form-data with the archive in a file field "
            f"named bits (got Content-Type {request.content_type})",
        )
    part = await _bits_part(request)
    if part is None:
        raise ApiError(
            422, "bits: is required: the archive goes in a multipart file field named bits"
        )
    # Claimed before its content is received: a second upload is a 409 now, not after both
    # have spooled up to the limit.
    claim = _Claim(repo, await repo.update(guid, _claim))
    incoming = await asyncio.to_thread(blobs.temp_path, "upload")
    normalized = await asyncio.to_thread(blobs.temp_path, "normalized")
    try:
        try:
            await _spool(part, incoming, limit)
        except ArchiveError as exc:
            raise await _refused(claim, f"bits: {exc}", str(exc), 422) from None
        except ApiError as exc:
            error = str(exc).removeprefix("bits: ")
            raise await _refused(claim, str(exc), error, exc.status) from None
        except BaseException:
            # The files go first: whoever sees FAILED (the client left) finds nothing left over.
            await asyncio.to_thread(_discard, incoming, normalized)
            with contextlib.suppress(Exception):
                await _refused(claim, CUT_OFF, CUT_OFF, 400)
            raise
        return await _process(claim, blobs, guid, incoming, normalized, limit)
    finally:
        await asyncio.to_thread(_discard, incoming, normalized)


async def _refused(claim: _Claim, detail: str, error: str, status: int) -> ApiError:
    """Fail the claimed package with ``error``; the :class:`ApiError` to answer with."""
    await claim.finish(attrs.evolve(claim.claimed, state="FAILED", error=error))
    return ApiError(status, detail)


async def _process(
    claim: _Claim, blobs: BlobStore, guid: str, incoming: Path, normalized: Path, limit: int
) -> web.Response:
    assert claim.current is not None
    package = claim.current.package
    assert isinstance(package, BitsPackage)
    try:
        result = await asyncio.to_thread(archive.normalize, incoming, normalized, limit=limit)
        await asyncio.to_thread(blobs.put_file, "packages", guid, normalized)
    except ArchiveError as exc:
        await claim.finish(attrs.evolve(package, state="FAILED", error=str(exc)))
        raise ApiError(422, f"bits: {exc}") from None
    except BaseException:
        with contextlib.suppress(Exception):
            failed = "the upload could not be processed (an internal error); upload again"
            await claim.finish(attrs.evolve(package, state="FAILED", error=failed))
        raise
    ready = await claim.finish(
        attrs.evolve(package, state="READY", error=None, hash=Hash(value=result.sha1))
    )
    if ready is None:
        raise ApiError(
            409,
            "the package was deleted or taken over by another upload while this one was "
            "processed; GET it to see its state",
        )
    return json_response(view(ready), revision=ready.revision)
