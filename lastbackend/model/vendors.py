"""Vendors: seed 001's github, bitbucket and gitlab objects (and slack), as stored and as sent.

``vendors/<vendor>`` holds ``{"vendor", "host", "username", "email", "service_id", "token",
"token_type", "expiry", "updated", "created"}`` in the document's order, plus two extensions the
README records: ``scheme`` (``https``, or ``http`` for a git server on a trusted network) and
``webhook_secret`` (what push webhooks from this vendor are verified with). ``token`` and
``webhook_secret`` are stored as Fernet tokens and never shown; ``expiry`` is left out when unset
(the document has it only for gitlab).

The host is configurable, so a self-hosted GitLab (``git.example.com:8443``) or any git server
over HTTPS serves as a vendor. A source's ``hub`` names its vendor by host, by host without the
port (a source's hub is a host name, which has no port), or by the vendor's name (``gitlab``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal, NewType

import attrs

from lastbackend.model.common import MASK, NO_CONTROL, keywords
from lastbackend.model.registries import HOST_PORT, MAX_HOST_PORT, Email, check_registry_host

VendorName = Literal["github", "bitbucket", "gitlab", "slack"]
VENDORS: tuple[str, ...] = ("github", "bitbucket", "gitlab", "slack")
"""Every vendor, in the order of seed 001's vendor map."""
GIT_VENDORS: tuple[str, ...] = ("github", "bitbucket", "gitlab")
"""The vendors that host git repositories (slack does not)."""
DEFAULT_HOSTS = {
    "github": "github.com",
    "bitbucket": "bitbucket.org",
    "gitlab": "gitlab.com",
    "slack": "slack.com",
}
Scheme = Literal["https", "http"]

VendorHost = NewType("VendorHost", str)
"""``host[:port]`` of a vendor: ``github.com``, ``git.example.com:8443``."""
Token = NewType("Token", str)
"""A clear token, as a client sends it; stored only encrypted."""
WebhookSecret = NewType("WebhookSecret", str)
"""A clear webhook secret (empty: hooks from this vendor are refused); stored only encrypted."""
Label = NewType("Label", str)
"""A short single-line text: a user name, a service id, a token type."""

MAX_TOKEN = 8192
MAX_LABEL = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@keywords(pattern=HOST_PORT, maxLength=MAX_HOST_PORT)
def check_vendor_host(value: str) -> str:
    """A lowercase host name or IP address with an optional :port, like 'gitlab.example.com'."""
    try:
        return check_registry_host(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a vendor host: a lowercase host name or IP address with an "
            "optional :port, like 'github.com' or 'git.example.com:8443'"
        ) from None


def _check_secret(value: str) -> str:
    # Never put the value itself in a message: it is a secret.
    if value == MASK:
        raise ValueError(
            f"{MASK!r} is how responses hide it; send the real value, "
            "or leave the field out to keep the stored one"
        )
    if len(value) > MAX_TOKEN:
        raise ValueError(f"must be at most {MAX_TOKEN} characters, got {len(value)}")
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


_SECRET = {"maxLength": MAX_TOKEN, "pattern": NO_CONTROL, "writeOnly": True, "not": {"const": MASK}}


@keywords(minLength=1, **_SECRET)
def check_token(value: str) -> str:
    """Not empty, at most 8192 characters, not the mask ``***``; stored encrypted."""
    if not value:
        raise ValueError("must not be empty")
    return _check_secret(value)


@keywords(**_SECRET)
def check_webhook_secret(value: str) -> str:
    """At most 8192 characters, not the mask ``***``; empty refuses every hook; stored encrypted."""
    return _check_secret(value)


@keywords(maxLength=MAX_LABEL, pattern=NO_CONTROL)
def check_label(value: str) -> str:
    """At most 255 characters on one line."""
    if len(value) > MAX_LABEL:
        raise ValueError(f"must be at most {MAX_LABEL} characters, got {len(value)}")
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


CHECKS: dict[Any, tuple[type, Callable[[Any], Any]]] = {
    VendorHost: (str, check_vendor_host),
    Token: (str, check_token),
    WebhookSecret: (str, check_webhook_secret),
    Label: (str, check_label),
}
"""Each validated type: the JSON type it must arrive as, and its checker."""


@attrs.frozen(kw_only=True)
class Vendor:
    """``vendors/<vendor>``, in seed 001's field order; ``token`` and ``webhook_secret`` are
    Fernet tokens (``webhook_secret`` is empty when none is set)."""

    vendor: VendorName
    host: VendorHost
    username: Label = Label("")
    email: Email = Email("")
    service_id: Label = Label("")
    token: str = attrs.field(repr=False)
    token_type: Label = Label("bearer")
    expiry: datetime | None = None
    updated: datetime
    created: datetime
    scheme: Scheme = "https"
    webhook_secret: str = attrs.field(default="", repr=False)

    def serves(self, hub: str) -> bool:
        """Whether a source's ``hub`` names this vendor: its host, its host without the port,
        or its name."""
        hub = hub.lower()
        return hub in (self.host, host_name(self.host), self.vendor)


@attrs.frozen
class VendorConnect:
    """The body of ``PUT /api/vendors/<vendor>``; secrets in clear.

    ``host`` defaults to the vendor's public host. ``token`` and ``webhook_secret`` left out (or
    null) keep the stored ones; a first connect needs a token. ``vendor``, when sent, must be the
    one in the path.
    """

    vendor: VendorName | None = None
    host: VendorHost | None = None
    username: Label = Label("")
    email: Email = Email("")
    service_id: Label = Label("")
    token: Token | None = attrs.field(default=None, repr=False)
    token_type: Label = Label("bearer")
    expiry: datetime | None = None
    scheme: Scheme = "https"
    webhook_secret: WebhookSecret | None = attrs.field(default=None, repr=False)


def host_name(host: str) -> str:
    """``host[:port]`` without the port (``[::1]:8443`` -> ``[::1]``)."""
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.partition(":")[0]


def default_host(hub: str) -> str:
    """Where a hub is when no vendor is connected for it: a vendor's name means its public host."""
    return DEFAULT_HOSTS.get(hub, hub) if hub in GIT_VENDORS else hub
