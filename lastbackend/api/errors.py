"""The one error shape of every family (DESIGN.md section 8), Cloud Foundry style.

``{"errors": [{"code": 10008, "title": "CF-UnprocessableEntity", "detail": "name: ..."}]}``.
Handlers raise :class:`ApiError` (or let a store error through); the error middleware renders it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from aiohttp import web

# status -> (code, title); the codes are Cloud Foundry's where it has one.
KINDS: dict[int, tuple[int, str]] = {
    400: (1001, "CF-MessageParseError"),
    401: (10002, "CF-NotAuthenticated"),
    403: (10003, "CF-NotAuthorized"),
    404: (10010, "CF-ResourceNotFound"),
    405: (10000, "CF-MethodNotAllowed"),
    409: (10016, "CF-UniquenessError"),
    412: (10025, "CF-PreconditionFailed"),
    413: (10011, "CF-RequestEntityTooLarge"),
    415: (10012, "CF-UnsupportedMediaType"),
    421: (10421, "CF-MisdirectedRequest"),  # no CF code: ours, spelled after the status
    422: (10008, "CF-UnprocessableEntity"),
    429: (10013, "CF-RateLimitExceeded"),
    500: (10001, "CF-ServerError"),
    503: (10015, "CF-ServiceUnavailable"),
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        *details: str,
        title: str | None = None,
        code: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__("; ".join(details))
        default_code, default_title = KINDS.get(status, (10001, "CF-ServerError"))
        self.status = status
        self.details: Sequence[str] = details or (title or default_title,)
        self.title = title or default_title
        self.code = code or default_code
        self.headers = headers or {}

    def response(self, headers: dict[str, str] | None = None) -> web.Response:
        body = {
            "errors": [
                {"code": self.code, "title": self.title, "detail": detail}
                for detail in self.details
            ]
        }
        return web.Response(
            status=self.status,
            body=json.dumps(body).encode(),
            content_type="application/json",
            headers={**self.headers, **(headers or {})},
        )


def bad_query(name: str, reason: str) -> ApiError:
    return ApiError(
        400, f"query parameter {name}: {reason}", title="CF-BadQueryParameter", code=10005
    )
