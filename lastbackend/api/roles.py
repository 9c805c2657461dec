"""Which role a request's bearer token has, for handlers whose answer depends on it.

The auth middleware refuses what a role may not do; a few answers also differ by role without
refusing anyone: environment values are shown in clear to admins only, and ``/readyz`` (public,
for probes) gives its details only to callers with a token. With auth off every caller is an
admin: it may write anything already.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Literal

from lastbackend.config import Settings

Role = Literal["admin", "read"]


def _listed(token: str, candidates: Sequence[str]) -> bool:
    raw = token.encode("utf-8", "surrogateescape")
    found = False
    for candidate in candidates:  # every one compared: the time taken says nothing
        found |= hmac.compare_digest(raw, candidate.encode())
    return found


def role(settings: Settings, authorization: str) -> Role | None:
    """The role of an ``Authorization`` header's token; ``None`` without a valid one."""
    if not settings.auth_enabled:
        return "admin"
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    if _listed(token, settings.admin_tokens):
        return "admin"
    return "read" if _listed(token, settings.read_tokens) else None
