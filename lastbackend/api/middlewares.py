"""What every request goes through before its handler, as one middleware (:func:`pipeline`).

In order: request id, access log and metrics around everything; errors turned into the
family's error shape (so a refused request gets it too, and is counted); headers that are not
text refused before anything reads one; the browser rules (Host, Origin, CORS), before auth, so
a page that may not talk to the API learns nothing about its tokens either; then auth.

One coroutine, not five stacked middlewares: aiohttp wraps every middleware in a partial and a
coroutine frame of its own per request, which cost a cached GET more than these checks do.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import re
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import attrs
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

from lastbackend.api.errors import ApiError
from lastbackend.api.http import Handler, shown, utf8_problem
from lastbackend.codec import Invalid
from lastbackend.config import Settings
from lastbackend.logsetup import log
from lastbackend.model.common import ids
from lastbackend.secrets import SecretError
from lastbackend.store.etcd import StoreUnavailable
from lastbackend.store.objects import Conflict, Contention, NotFound, PreconditionFailed

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/", "/v3"})
SIGNED_ROUTES = frozenset({("POST", "/api/hooks/{vendor}")})
"""Routes whose requests carry their own credential (a webhook signature the handler checks)
instead of a bearer token: git providers cannot send ours. Matched on the resolved route, so no
path spelling can reach another handler through the exemption."""

SELF_CHECKED_ROUTES = frozenset({"/api/whoami"})
"""Routes that check the bearer token themselves: answered without one (so a dashboard can ask
whether it needs one), 401 for a token that is not valid."""

DASHBOARD = "/ui"
"""The dashboard's static files (``api/dashboard.py``): public, they hold no data; every byte of
data the page shows comes from the API with the bearer token. Matched on the resolved route."""


def is_dashboard(route: str) -> bool:
    """Whether a route template is one of the dashboard's (``/ui``, ``/ui/``, ``/ui/{path}``)."""
    return route == DASHBOARD or route.startswith(DASHBOARD + "/")


NODE_ROUTES = "/node/"
"""Routes an API process calls on a node agent: matched on the resolved route, they take the
node token (``auth.node_token``) and no user token; no other route takes the node token."""

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="lastbackend"'}
_NODE_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="lastbackend-node"'}


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "lastbackend_http_requests",
            "HTTP requests served, by route template and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "lastbackend_http_request_duration_seconds",
            "Time from request to response, by route template.",
            ["method", "route"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        # labels() hashes and locks on every call; the label sets are few, so keep the children.
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, str(status))
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(*key), self.latency.labels(method, route))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


class InFlight:
    """Requests being handled now; shutdown waits for this to reach zero before closing sockets.

    aiohttp's own cleanup closes every connection first, which drops a request whose body is
    still arriving, so draining needs its own count.
    """

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def idle(self) -> None:
        await self._idle.wait()


INFLIGHT = web.AppKey("inflight", InFlight)


def _route(request: web.Request) -> str:
    info = request.match_info
    resource = info.route.resource if info.route else None
    return resource.canonical if resource is not None else "unmatched"


def pipeline(
    metrics: Metrics, inflight: InFlight, rules: Browsers, settings: Settings
) -> web.middleware:  # type: ignore[valid-type]
    """The one middleware: the steps of the module docstring, in its order."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        inflight.enter()
        rid = request.headers.get("X-Request-ID", "")
        if not _REQUEST_ID.fullmatch(rid):
            rid = f"{ids.bits128():032x}"  # not os.urandom per request (see model.common)
        structlog.contextvars.bind_contextvars(request_id=rid)
        started = time.perf_counter()
        status = 500
        try:
            try:
                check_headers(request)
                response = rules.check(request)
                if response is None:
                    check_auth(settings, request)
                    response = await handler(request)
            except Exception as exc:
                response = error_response(request, exc)
            status = response.status
            response.headers["X-Request-ID"] = rid
            return response
        finally:
            elapsed = time.perf_counter() - started
            metrics.observe(request.method, _route(request), status, elapsed)
            log.info(
                "request",
                method=request.method,
                path=request.path,
                status=status,
                ms=round(elapsed * 1000, 2),
            )
            structlog.contextvars.unbind_contextvars("request_id")
            inflight.leave()

    return middleware


def error_response(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The answer to what a check or handler raised (called while it is being handled);
    re-raises what is not an error (a redirect)."""
    if isinstance(exc, ApiError):
        return exc.response()
    if isinstance(exc, Invalid):
        return ApiError(422, *map(str, exc.errors)).response()
    if isinstance(exc, NotFound):
        return ApiError(404, str(exc)).response()
    if isinstance(exc, Contention):
        return ApiError(409, str(exc), title="CF-ConcurrencyError", code=10017).response()
    if isinstance(exc, Conflict):
        return ApiError(409, str(exc)).response()
    if isinstance(exc, PreconditionFailed):
        return ApiError(412, str(exc)).response()
    if isinstance(exc, SecretError):
        log.error("secret store", error=str(exc))
        return ApiError(500, str(exc)).response()
    if isinstance(exc, StoreUnavailable):
        log.warning("store unavailable", error=str(exc))
        return ApiError(503, "the store (etcd) is unavailable; nothing was written").response(
            {"Retry-After": "1"}
        )
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        limit = request.client_max_size
        return ApiError(413, f"the request body is larger than {limit} bytes").response()
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        detail = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "WWW-Authenticate")}
        return ApiError(exc.status, detail).response(headers)
    log.exception("unhandled error", method=request.method, path=request.path)
    return ApiError(500, "internal error; the request id is in X-Request-ID").response()


def check_headers(request: web.Request) -> None:
    """Refuse a header that is not UTF-8 text before anything reads one.

    aiohttp keeps such bytes as surrogate escapes, so a value looks like a string until a
    handler encodes it (a token or signature compared, a value logged as JSON) and raises.
    Checking every header here, once, means no handler has to remember to.
    """
    for name, value in request.headers.items():  # names are tokens: the parser checks those
        problem = utf8_problem(value)
        if problem is not None:
            raise ApiError(400, f"header {name}: {problem}", title="CF-InvalidRequest", code=10004)


# browsers ----------------------------------------------------------------------------------------

CORS_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
CORS_REQUEST_HEADERS = frozenset(
    {"authorization", "content-type", "if-match", "if-none-match", "last-event-id", "x-request-id"}
)
CORS_EXPOSED = "ETag, Location, X-Request-ID, X-Etcd-Revision, Retry-After"
CORS_MAX_AGE = "600"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^\[\]:]+)(?::(?P<port>[0-9]{1,5}))?")


def _split_host(raw: str) -> tuple[str, int | None] | None:
    """``Host``'s (name, port), the name lowercased without a trailing dot; None if malformed."""
    match = _HOST.fullmatch(raw.strip())
    if match is None:
        return None
    port = match.group("port")
    return match.group("host").lower().rstrip("."), None if port is None else int(port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@attrs.frozen
class Browsers:
    """Who a browser may reach the API as, and from which pages (issue 13, section 4).

    Without a token the default install trusts whoever reaches its loopback port, and a web page
    can: (1) a "simple" cross-site request needs no preflight, so a page on any site may POST a
    form or text/plain body (JSON bodies therefore require ``application/json``: see
    ``http.read_json``), and (2) a page whose own name re-resolves to 127.0.0.1 (DNS rebinding)
    is same-origin with the API as far as the browser knows. So:

    - ``Host`` must be a name the API answers to: ``localhost`` and ``*.localhost`` (browsers
      resolve those to loopback themselves, never through DNS), an IP address (a rebinding page
      always sends its own *name*; an IP literal in ``Host`` means the page was loaded from that
      very address), the ``listen`` and ``node.advertise`` hosts, and ``api.hosts``. Anything
      else is a 421 Misdirected Request: this server is not the one that name points at.
    - A state-changing request whose ``Origin`` is neither the API's own (the origin whose
      authority is the ``Host``) nor listed in ``api.cors_origins`` is a 403.
    - CORS: only the listed origins get ``Access-Control-Allow-Origin`` and preflight answers.
    """

    names: frozenset[str]
    suffixes: tuple[str, ...]
    origins: frozenset[str]

    @classmethod
    def of(cls, settings: Settings) -> Browsers:
        names = {"localhost", settings.host_port[0].lower()}
        if settings.node_advertise:
            advertised = urlsplit(settings.node_advertise).hostname
            names.add((advertised or "").lower())
        suffixes = [".localhost"]
        for entry in settings.api_hosts:
            if entry.startswith("*."):
                suffixes.append(entry[1:])
            else:
                names.add(entry)
        return cls(frozenset(names), tuple(suffixes), frozenset(settings.cors_origins))

    def admits(self, host: str) -> bool:
        return host in self.names or host.endswith(self.suffixes) or _is_ip(host)

    def same_origin(self, origin: str, host: tuple[str, int | None]) -> bool:
        """Whether ``origin`` is the API's own: its authority is the one ``Host`` names."""
        try:
            url = urlsplit(origin)
            port = url.port or _DEFAULT_PORTS.get(url.scheme)
        except ValueError:
            return False
        name = (url.hostname or "").rstrip(".")
        if url.hostname and ":" in url.hostname:
            name = f"[{name}]"
        wanted = host[1] if host[1] is not None else _DEFAULT_PORTS.get(url.scheme)
        return url.scheme in _DEFAULT_PORTS and name == host[0] and port == wanted

    def check(self, request: web.Request) -> web.StreamResponse | None:
        """A refusal, a preflight answer, or None when the request may go on."""
        raw_host = request.headers.get("Host")
        host = None
        if raw_host is not None:  # HTTP/1.0 clients may leave it out; browsers never do
            host = _split_host(raw_host)
            if host is None:
                raise ApiError(400, f"header Host: {shown(raw_host)} is not host[:port]")
            if not self.admits(host[0]):
                raise ApiError(
                    421,
                    f"header Host: this API does not answer to {shown(host[0])}: it answers to "
                    "loopback names, IP addresses and the names in api.hosts (LB_API_HOSTS). "
                    "Refused so that a web page cannot reach it under a name of its own "
                    "(DNS rebinding)",
                )
        origin = request.headers.get("Origin")
        if origin is None:
            return None
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return self.preflight(request, origin)
        own = host is not None and self.same_origin(origin, host)
        if request.method not in SAFE_METHODS and not own and origin not in self.origins:
            raise ApiError(
                403,
                f"header Origin: {shown(origin)} may not change anything here: a page may write "
                "only from the API's own origin or from one listed in api.cors_origins "
                "(LB_API_CORS_ORIGINS)",
            )
        return None

    def preflight(self, request: web.Request, origin: str) -> web.StreamResponse:
        if origin not in self.origins:
            raise ApiError(
                403,
                f"header Origin: CORS is off for {shown(origin)}: list it in api.cors_origins "
                "(LB_API_CORS_ORIGINS) to call the API from its pages",
            )
        method = request.headers["Access-Control-Request-Method"].strip()
        if method not in CORS_METHODS:
            raise ApiError(
                403,
                f"header Access-Control-Request-Method: {shown(method)} is not one of "
                + ", ".join(CORS_METHODS),
            )
        asked = request.headers.get("Access-Control-Request-Headers", "")
        names = {h.strip().lower() for h in asked.split(",") if h.strip()}
        extra = sorted(names - CORS_REQUEST_HEADERS)
        if extra:
            raise ApiError(
                403,
                f"header Access-Control-Request-Headers: {shown(extra[0])} is not one a page may "
                "send; allowed: " + ", ".join(sorted(CORS_REQUEST_HEADERS)),
            )
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": ", ".join(CORS_METHODS),
                "Access-Control-Allow-Headers": ", ".join(sorted(CORS_REQUEST_HEADERS)),
                "Access-Control-Max-Age": CORS_MAX_AGE,
                "Vary": "Origin",
            },
        )

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """``on_response_prepare``: every answer to a listed origin says so, streamed ones too
        (their headers go out before any middleware sees the response)."""
        origin = request.headers.get("Origin")
        if origin is None or origin not in self.origins:
            return
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSED
        vary = response.headers.get("Vary")
        if vary is None or "origin" not in vary.lower():
            response.headers["Vary"] = "Origin" if vary is None else f"{vary}, Origin"


# auth --------------------------------------------------------------------------------------------


def _matches(token: str, candidates: Sequence[str]) -> bool:
    # Compare against every candidate so the time taken does not say which one nearly matched.
    found = False
    for candidate in candidates:
        found |= hmac.compare_digest(token.encode(), candidate.encode())
    return found


def _node_caller(settings: Settings, request: web.Request) -> None:
    """Refuse a request to a node route that does not carry the node token.

    Nodes accept only ``auth.node_token``, whatever the user tokens: an API process reaching a
    node is not acting as its caller (a read-only caller's logs were once fetched with the admin
    token), and a leaked user token, or a user with a shell on a node's host, must not read
    every container's output through the agent. With no node token configured nothing is
    accepted: no API can be sending one.
    """
    if not settings.node_token:
        raise ApiError(
            401,
            "this node accepts only the node token and none is configured here: set "
            "auth.node_token (LB_NODE_TOKEN) on this node and on the API processes",
            headers=_NODE_CHALLENGE,
        )
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "send Authorization: Bearer <node token>", headers=_NODE_CHALLENGE)
    if not _matches(token, (settings.node_token,)):
        raise ApiError(
            401,
            "the bearer token is not this node's token (auth.node_token); node routes accept "
            "no user token",
            headers=_NODE_CHALLENGE,
        )


def check_auth(settings: Settings, request: web.Request) -> None:
    """Bearer tokens with two roles, admin (everything) and read (safe methods only), and the
    node token, which node routes alone accept (:func:`_node_caller`)."""
    route = _route(request)
    if route.startswith(NODE_ROUTES):
        _node_caller(settings, request)
        return
    if not settings.auth_enabled or request.path in PUBLIC_PATHS:
        return
    if is_dashboard(route) or route in SELF_CHECKED_ROUTES:
        return
    if (request.method, route) in SIGNED_ROUTES:
        return
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "send Authorization: Bearer <token>", headers=CHALLENGE)
    if _matches(token, settings.admin_tokens):
        return
    if _matches(token, settings.read_tokens):
        if request.method not in SAFE_METHODS:
            raise ApiError(403, "this token is read-only; writes need an admin token")
        return
    raise ApiError(401, "the bearer token is not valid", headers=CHALLENGE)
