"""Middlewares, outermost first: request id + access log + metrics, errors, auth.

Auth runs inside the error middleware so a refused request still gets the family's error shape,
and inside metrics so refusals are counted.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import re
import time
from collections.abc import Sequence
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

from lastbackend.api.errors import ApiError
from lastbackend.api.http import Handler, utf8_problem
from lastbackend.codec import Invalid
from lastbackend.config import Settings
from lastbackend.logsetup import log
from lastbackend.secrets import SecretError
from lastbackend.store.etcd import StoreUnavailable
from lastbackend.store.objects import Conflict, Contention, NotFound, PreconditionFailed

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json"})
SIGNED_ROUTES = frozenset({("POST", "/api/hooks/{vendor}")})
"""Routes whose requests carry their own credential (a webhook signature the handler checks)
instead of a bearer token: git providers cannot send ours. Matched on the resolved route, so no
path spelling can reach another handler through the exemption."""

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="lastbackend"'}


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


def observe(metrics: Metrics, inflight: InFlight) -> web.middleware:  # type: ignore[valid-type]
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        inflight.enter()
        rid = request.headers.get("X-Request-ID", "")
        if not _REQUEST_ID.fullmatch(rid):
            rid = os.urandom(16).hex()
        structlog.contextvars.bind_contextvars(request_id=rid)
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            response.headers["X-Request-ID"] = rid
            return response
        finally:
            elapsed = time.perf_counter() - started
            route = _route(request)
            metrics.observe(request.method, route, status, elapsed)
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


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except Invalid as exc:
        return ApiError(422, *map(str, exc.errors)).response()
    except NotFound as exc:
        return ApiError(404, str(exc)).response()
    except Contention as exc:
        return ApiError(409, str(exc), title="CF-ConcurrencyError", code=10017).response()
    except Conflict as exc:
        return ApiError(409, str(exc)).response()
    except PreconditionFailed as exc:
        return ApiError(412, str(exc)).response()
    except SecretError as exc:
        log.error("secret store", error=str(exc))
        return ApiError(500, str(exc)).response()
    except StoreUnavailable as exc:
        log.warning("store unavailable", error=str(exc))
        return ApiError(503, "the store (etcd) is unavailable; nothing was written").response(
            {"Retry-After": "1"}
        )
    except web.HTTPRequestEntityTooLarge:
        limit = request.client_max_size
        return ApiError(413, f"the request body is larger than {limit} bytes").response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        detail = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "WWW-Authenticate")}
        return ApiError(exc.status, detail).response(headers)
    except Exception:
        log.exception("unhandled error", method=request.method, path=request.path)
        return ApiError(500, "internal error; the request id is in X-Request-ID").response()


@web.middleware
async def headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a header that is not UTF-8 text before anything reads one.

    aiohttp keeps such bytes as surrogate escapes, so a value looks like a string until a
    handler encodes it (a token or signature compared, a value logged as JSON) and raises.
    Checking every header here, once, means no handler has to remember to.
    """
    for name, value in request.headers.items():  # names are tokens: the parser checks those
        problem = utf8_problem(value)
        if problem is not None:
            raise ApiError(400, f"header {name}: {problem}", title="CF-InvalidRequest", code=10004)
    return await handler(request)


def _matches(token: str, candidates: Sequence[str]) -> bool:
    # Compare against every candidate so the time taken does not say which one nearly matched.
    found = False
    for candidate in candidates:
        found |= hmac.compare_digest(token.encode(), candidate.encode())
    return found


def auth(settings: Settings) -> web.middleware:  # type: ignore[valid-type]
    """Bearer tokens with two roles: admin (everything) and read (safe methods only)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not settings.auth_enabled or request.path in PUBLIC_PATHS:
            return await handler(request)
        if (request.method, _route(request)) in SIGNED_ROUTES:
            return await handler(request)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "send Authorization: Bearer <token>", headers=_CHALLENGE)
        if _matches(token, settings.admin_tokens):
            pass
        elif _matches(token, settings.read_tokens):
            if request.method not in SAFE_METHODS:
                raise ApiError(403, "this token is read-only; writes need an admin token")
        else:
            raise ApiError(401, "the bearer token is not valid", headers=_CHALLENGE)
        return await handler(request)

    return middleware
