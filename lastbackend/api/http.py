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
MAX_PAGE = 1 << 30
MAX_REVISION = (1 << 63) - 1
"""etcd revisions are int64: an ETag or event id past this is not one the API gave out."""
SHOWN = 40
"""How much of a refused value an error quotes: enough to recognise it, never all 5,000 bytes."""


def shown(raw: str) -> str:
    """A refused value as an error quotes it: repr'd, cut at :data:`SHOWN` characters."""
    return repr(raw) if len(raw) <= SHOWN else f"{raw[:SHOWN]!r}... ({len(raw)} characters)"


def ascii_int(raw: str, low: int, high: int) -> int | None:
    """``raw`` as an integer in ``[low, high]``, or ``None`` when it is not one.

    Only ASCII digits: ``str.isdigit`` also accepts ``'²'``, which ``int`` then refuses, and
    ``int`` refuses more than 4,300 digits outright, so the length is checked before it runs.
    """
    digits = raw.lstrip("0") or "0"  # int() counts leading zeros against its limit too
    if not (raw.isascii() and raw.isdigit()) or len(digits) > len(str(high)):
        return None
    value = int(digits)
    return value if low <= value <= high else None


def utf8_problem(value: str) -> str | None:
    """Why a header value aiohttp decoded is not text: aiohttp keeps bytes that are not UTF-8 as
    surrogate escapes, which every later ``encode()`` of the value would raise on."""
    if value.isascii():
        return None
    try:
        value.encode()
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    return None


@attrs.frozen
class Doc:
    """What ``/openapi.json`` says about a handler: attached by :func:`doc`."""

    summary: str
    body: Any = None  # a model class (or type) the body decodes into
    response: str | None = None  # a schema name in openapi.SCHEMAS
    status: int = 200
    upsert: bool = False  # a PUT that answers 201 when it created the object, else ``status``
    paginated: bool = False
    order: Sequence[str] = ("name",)  # what order_by takes (and "-" before it), first the default
    query: Sequence[str] | Mapping[str, Any] = ()  # names in openapi._QUERY, or name -> a type
    params: Mapping[str, Any] = attrs.Factory(dict)  # path parameter -> a model type, if unusual


def doc(summary: str, **kwargs: Any) -> Callable[[Handler], Handler]:
    def attach(handler: Handler) -> Handler:
        handler.__doc_spec__ = Doc(summary, **kwargs)  # type: ignore[attr-defined]
        return handler

    return attach


JSON_TYPE = "application/json"


def is_json_type(raw: str | None) -> bool:
    """``application/json``, with at most a UTF-8 charset: what a JSON body must say it is.

    A missing Content-Type is not JSON: a browser sends a cross-site POST without a preflight
    only with no type or a "simple" one (text/plain, a form), so taking those as JSON would let
    any web page write through the API.
    """
    if raw is None:
        return False
    media, *params = (part.strip().lower() for part in raw.split(";"))
    if media != JSON_TYPE:
        return False
    for param in params:
        name, _, value = param.partition("=")
        if name.strip() == "charset" and value.strip().strip('"') not in ("utf-8", "utf8"):
            return False
    return True


async def read_json(request: web.Request) -> Any:
    """The body as decoded JSON: 415 unless it says it is JSON, 400 for malformed JSON.

    The size limit is the application's ``client_max_size``: aiohttp answers 413 past it.
    """
    given = request.headers.get("Content-Type")
    if request.body_exists and not is_json_type(given):
        got = "none" if given is None else shown(given)
        raise ApiError(415, f"header Content-Type: must be {JSON_TYPE} for a JSON body, got {got}")
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
    value = ascii_int(raw.strip().removeprefix("W/").strip('"'), 0, MAX_REVISION)
    if value is None:
        raise ApiError(412, f"If-Match must be an ETag this API gave out, got {shown(raw)}")
    return value


def encode(data: Any) -> bytes:
    """A JSON body as every response writes it: compact, UTF-8."""
    return codec.dumps_plain(data)


def json_response(
    data: Any,
    *,
    status: int = 200,
    revision: int | None = None,
    headers: Mapping[str, str] = {},
    encoded: bytes | None = None,
) -> web.Response:
    """``data`` as JSON (or ``encoded``, a body :func:`encode` already made)."""
    out = dict(headers)
    if revision is not None:
        out["ETag"] = etag(revision)
    return web.Response(
        status=status,
        body=encoded if encoded is not None else encode(data),
        content_type="application/json",
        headers=out,
    )


@attrs.frozen
class Paging:
    page: int
    per_page: int
    descending: bool

    def of(self, items: list[T]) -> list[T]:
        """This page of ``items`` (all of them, in the list's order)."""
        return items[(self.page - 1) * self.per_page : self.page * self.per_page]


def paging(request: web.Request, order_fields: Sequence[str] = ("name",)) -> Paging:
    def number(name: str, default: int, high: int) -> int:
        raw = request.query.get(name)
        if raw is None:
            return default
        value = ascii_int(raw, 1, high)
        if value is None:
            raise bad_query(name, f"must be an integer from 1 to {high}, got {shown(raw)}")
        return value

    order = request.query.get("order_by", order_fields[0])
    if order.lstrip("-") not in order_fields:
        choices = ", ".join(f"{f}, -{f}" for f in order_fields)
        raise bad_query("order_by", f"must be one of {choices}; got {shown(order)}")
    return Paging(
        page=number("page", 1, MAX_PAGE),
        per_page=number("per_page", 50, MAX_PER_PAGE),
        descending=order.startswith("-"),
    )


def list_filter(request: web.Request, name: str, kind: Any) -> set[str] | None:
    """A CF list filter, ``?states=READY,FAILED``: None when absent, else its values, each
    checked as the model type ``kind`` (what the OpenAPI document shows); 400 naming the first
    bad one. Repeating the parameter adds to the list."""
    raw = request.query.getall(name, None)
    if raw is None:
        return None
    values = [v for joined in raw for v in joined.split(",")]
    for value in values:
        try:
            codec.structure(value, kind)
        except codec.Invalid as exc:
            reason = exc.errors[0].reason
            raise bad_query(name, f"{reason} (a comma-separated list)") from None
    return set(values)


def page_json(
    request: web.Request, paging: Paging, total: int, resources: Sequence[bytes]
) -> bytes:
    """:func:`page_body` encoded, from resources already encoded (each made once per version of
    its object): the same bytes :func:`encode` would write for the whole page."""
    pagination = encode(page_body(request, paging, total, [])["pagination"])
    return b'{"pagination":' + pagination + b',"resources":[' + b",".join(resources) + b"]}"


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
