"""``/ui/``: the web dashboard's static files (docs/dashboard.md).

The files are plain ES modules, HTML and CSS in ``api/ui/``, shipped as package data: nothing
is built and nothing is fetched from elsewhere. Which files exist is read once, when the app is
made, and a request can only name one of them: a path is looked up in that table, never joined
onto a directory, so no spelling of ``..`` reaches another file. The files hold no data (the
page asks the API for everything, with its bearer token), so they are public.

Every answer carries a strict Content-Security-Policy (scripts, styles and connections to this
origin only, no inline code, no framing), ``nosniff`` and no referrer, and is cached by ETag:
``no-cache`` makes the browser revalidate, and an unchanged file is a 304 with no body.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import PurePosixPath

import attrs
from aiohttp import web

from lastbackend.api.errors import ApiError
from lastbackend.api.http import doc

routes = web.RouteTableDef()

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
}
"""Served suffixes and their types; module scripts must be a JavaScript type or the browser
refuses them (``nosniff``)."""


@attrs.frozen
class File:
    body: bytes
    content_type: str
    etag: str


def load() -> dict[str, File]:
    """Every servable file under ``api/ui/``, by its path relative to it (``pages/app.js``)."""
    root = resources.files("lastbackend.api") / "ui"
    found: dict[str, File] = {}

    def walk(node: Traversable, prefix: str) -> None:
        for child in node.iterdir():
            name = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, f"{name}/")
            elif PurePosixPath(child.name).suffix in TYPES:
                body = child.read_bytes()
                tag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
                found[name] = File(body, TYPES[PurePosixPath(child.name).suffix], tag)

    walk(root, "")
    return found


FILES = web.AppKey("dashboard_files", dict)


def _serve(request: web.Request, name: str) -> web.Response:
    file = request.app[FILES].get(name)
    if file is None:
        raise ApiError(404, f"the dashboard has no file {name[:80]!r}")
    headers = {**HEADERS, "ETag": file.etag}
    wanted = request.headers.get("If-None-Match", "")
    if file.etag in (tag.strip() for tag in wanted.split(",")):
        return web.Response(status=304, headers=headers)
    return web.Response(body=file.body, headers={**headers, "Content-Type": file.content_type})


@routes.get("/ui")
@doc("The dashboard: redirects to /ui/", status=308)
async def bare(request: web.Request) -> web.Response:
    return web.Response(status=308, headers={**HEADERS, "Location": "/ui/"})


@routes.get("/ui/")
@doc("The dashboard's page (static HTML; its data comes from the API with the token)")
async def index(request: web.Request) -> web.Response:
    return _serve(request, "index.html")


@routes.get("/ui/{path:.+}")
@doc("One of the dashboard's static files (ES modules, CSS)")
async def asset(request: web.Request) -> web.Response:
    return _serve(request, request.match_info["path"])


def install(app: web.Application) -> None:
    app[FILES] = load()
    app.router.add_routes(routes)
