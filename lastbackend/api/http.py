"""Request and response plumbing shared by every route: JSON bodies, ETags, pagination, docs."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import attrs
from aiohttp import web
from yarl import URL

from lastbackend import codec
from lastbackend.api.errors import ApiError, bad_query

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_PER_PAGE = 5000


@attrs.frozen
class Doc:
    """What ``/openapi.json`` says about a handler: attached by :func:`doc`."""

    summary: str
    body: Any = None  # a model class (or type) the body decodes into
    response: str | None = None  # a schema name in openapi.SCHEMAS
    status: int = 200
    paginated: bool = False
    query: Sequence[str] = ()


def doc(summary: str, **kwargs: Any) -> Callable[[Handler], Handler]:
    def attach(handler: Handler) -> Handler:
        handler.__doc_spec__ = Doc(summary, **kwargs)  # type: ignore[attr-defined]
        return handler

    return attach


async def read_json(request: web.Request) -> Any:
    """The body as decoded JSON: 415 for another media type, 400 for malformed JSON.

    The size limit is the application's ``client_max_size``: aiohttp answers 413 past it.
    """
    ctype = request.content_type
    if request.body_exists and ctype not in ("application/json", "application/octet-stream"):
        raise ApiError(415, f"Content-Type must be application/json, got {ctype}")
    raw = await request.read()
    if not raw.strip():
        raise ApiError(400, "the request body is empty; a JSON object is required")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        # ValueError: JSONDecodeError, UnicodeDecodeError, and integers past Python's digit limit;
        # RecursionError: nesting deeper than the parser's recursion limit.
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None


async def read_object(request: web.Request) -> dict[str, Any]:
    """A body that must be a JSON object, for PATCH merges."""
    data = await read_json(request)
    if not isinstance(data, dict):
        raise ApiError(422, "body: must be a JSON object")
    return data


def decode(data: Any, cls: type[T]) -> T:
    try:
        return codec.structure(data, cls)
    except codec.Invalid as exc:
        raise ApiError(422, *map(str, exc.errors)) from None


async def body(request: web.Request, cls: type[T]) -> T:
    return decode(await read_json(request), cls)


def etag(revision: int) -> str:
    return f'"{revision}"'


def if_match(request: web.Request) -> int | None:
    """The version ``If-Match`` asks for; ``None`` when absent or ``*``."""
    raw = request.headers.get("If-Match")
    if raw is None or raw.strip() == "*":
        return None
    value = raw.strip().removeprefix("W/").strip('"')
    if not value.isdigit():
        raise ApiError(412, f"If-Match must be an ETag this API gave out, got {raw!r}")
    return int(value)


def json_response(
    data: Any, *, status: int = 200, revision: int | None = None, headers: Mapping[str, str] = {}
) -> web.Response:
    out = dict(headers)
    if revision is not None:
        out["ETag"] = etag(revision)
    return web.Response(
        status=status,
        body=json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode(),
        content_type="application/json",
        headers=out,
    )


@attrs.frozen
class Paging:
    page: int
    per_page: int
    descending: bool


def paging(request: web.Request, order_fields: Sequence[str] = ("name",)) -> Paging:
    def number(name: str, default: int, high: int) -> int:
        raw = request.query.get(name)
        if raw is None:
            return default
        if not raw.isdigit() or not 1 <= int(raw) <= high:
            raise bad_query(name, f"must be an integer from 1 to {high}, got {raw!r}")
        return int(raw)

    order = request.query.get("order_by", order_fields[0])
    if order.lstrip("-") not in order_fields:
        choices = ", ".join(f"{f}, -{f}" for f in order_fields)
        raise bad_query("order_by", f"must be one of {choices}; got {order!r}")
    return Paging(
        page=number("page", 1, 1 << 30),
        per_page=number("per_page", 50, MAX_PER_PAGE),
        descending=order.startswith("-"),
    )


def page_body(
    request: web.Request, paging: Paging, total: int, resources: list[Any]
) -> dict[str, Any]:
    """CF v3's list shape: ``{"pagination": {...}, "resources": [...]}`` with hrefs to pages."""
    pages = max(1, -(-total // paging.per_page))

    def link(page: int) -> dict[str, str]:
        url: URL = request.url.update_query(page=page, per_page=paging.per_page)
        return {"href": str(url)}

    return {
        "pagination": {
            "total_results": total,
            "total_pages": pages,
            "first": link(1),
            "last": link(pages),
            "next": link(paging.page + 1) if paging.page < pages else None,
            "previous": link(paging.page - 1) if 1 < paging.page <= pages + 1 else None,
        },
        "resources": resources,
    }
