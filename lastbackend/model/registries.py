"""Registry accounts: seed 001's registry account object, as stored and as sent.

``registries/<host>`` holds ``{"email", "password", "username", "host", "created", "updated"}``,
the document's object plus the timestamps every object carries. The host is also the key's last
segment, so it is checked as strictly as a name: a lowercase host name or IP address with an
optional port, nothing that could hold a ``/``. The stored ``password`` is a Fernet token (see
``lastbackend.secrets``); only the ``*Create``/``*Patch`` bodies ever hold a clear password, and
their ``repr`` leaves it out so it cannot reach a log line by accident.

:data:`CHECKS` has the shape of ``model.common.CHECKS``: the store registers it with the
converter, so a bad field is a 422 naming it before anything is written.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, NewType

import attrs

from lastbackend.model.common import (
    BLANK,
    DNS_LABEL,
    MASK,
    MAX_HOSTNAME,
    NO_CONTROL,
    PORT,
    anchored,
    check_hostname,
    keywords,
)

RegistryHost = NewType("RegistryHost", str)
"""``host[:port]``: what a docker image reference starts with, e.g. ``registry.local:5000``."""
Username = NewType("Username", str)
Password = NewType("Password", str)
"""A clear password, as a client sends it; stored only encrypted."""
Email = NewType("Email", str)

DOCKER_HUB = "docker.io"
DOCKER_HUB_ALIASES = (DOCKER_HUB, "index.docker.io", "registry-1.docker.io")
"""Names Docker Hub goes by: an account under any of them serves images without a host."""

MAX_USERNAME = 255
MAX_PASSWORD = 8192  # registry tokens (a cloud service-account JSON key) run to a few KB
_PORT = re.compile(PORT)
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_LAST_LABEL = r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?"  # as every top-level domain: a letter first
_NAME = rf"(?:{DNS_LABEL.pattern}\.)*{_LAST_LABEL}"
HOST_PORT = anchored(f"(?:{_IPV4.pattern}|{_NAME})(?::{PORT})?")
"""The schema of a registry or vendor host; an [IPv6] host is accepted too but not in it (the
canonical IPv6 spelling this check insists on is no regular expression anyone should read), and
the host part's own limit of 253 characters is checked but not in it."""
MAX_HOST_PORT = MAX_HOSTNAME + len(":65535")
_EMAIL = re.compile(rf"[^@{BLANK}]+@[^@{BLANK}]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@keywords(pattern=HOST_PORT, maxLength=MAX_HOST_PORT)
def check_registry_host(value: str) -> str:
    """A lowercase host name or IP address ([IPv6] in brackets) with an optional :port."""
    problem = (
        f"{value!r} is not a registry host: a lowercase host name or IP address with an "
        "optional :port, like 'registry.example.com' or '10.0.0.5:5000'"
    )
    host, port = value, ""
    if value.startswith("["):  # [IPv6] or [IPv6]:port
        inside, _, rest = value[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError(problem)
        port = rest[1:]
        try:
            ok = ipaddress.IPv6Address(inside).compressed == inside
        except ValueError:
            ok = False
        if not ok or (rest and not port):
            raise ValueError(problem)
    else:
        host, sep, port = value.partition(":")
        if sep and not port:
            raise ValueError(problem)
        try:
            check_hostname(host)
        except ValueError:
            raise ValueError(problem) from None
        if not re.fullmatch(_LAST_LABEL, host.rpartition(".")[2]) and not _IPV4.fullmatch(host):
            raise ValueError(
                f"{problem}; {host!r} is no IPv4 address, and a host name's last label "
                "starts with a letter"
            )
    if port and (not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535):
        raise ValueError(f"{value!r}: the port must be a number from 1 to 65535")
    return value


@keywords(minLength=1, maxLength=MAX_USERNAME, pattern=NO_CONTROL)
def check_username(value: str) -> str:
    """Not empty, at most 255 characters, no control characters."""
    if not value:
        raise ValueError("must not be empty")
    if len(value) > MAX_USERNAME:
        raise ValueError(f"must be at most {MAX_USERNAME} characters, got {len(value)}")
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


@keywords(minLength=1, maxLength=MAX_PASSWORD, writeOnly=True, **{"not": {"const": MASK}})
def check_password(value: str) -> str:
    """Not empty, at most 8192 characters, not the mask ``***``; stored encrypted."""
    # Never put the value itself in a message: it is a secret.
    if not value:
        raise ValueError("must not be empty")
    if value == MASK:
        raise ValueError(
            f"{MASK!r} is how responses hide the password; send the real one, "
            "or leave the field out of a PATCH to keep the stored one"
        )
    if len(value) > MAX_PASSWORD:
        raise ValueError(f"must be at most {MAX_PASSWORD} characters, got {len(value)}")
    return value


@keywords(pattern=anchored(f"(?:{_EMAIL.pattern})?"), maxLength=254)
def check_email(value: str) -> str:
    """An email address, or empty (Docker no longer needs one)."""
    if value and (len(value) > 254 or not _EMAIL.fullmatch(value)):
        raise ValueError(f"{value!r} is not an email address (or empty)")
    return value


CHECKS: dict[Any, tuple[type, Callable[[Any], Any]]] = {
    RegistryHost: (str, check_registry_host),
    Username: (str, check_username),
    Password: (str, check_password),
    Email: (str, check_email),
}
"""Each validated type: the JSON type it must arrive as, and its checker."""


@attrs.frozen
class RegistryAccount:
    """``registries/<host>``, in seed 001's field order; ``password`` is a Fernet token."""

    email: Email
    password: str = attrs.field(repr=False)
    username: Username
    host: RegistryHost
    created: datetime
    updated: datetime


@attrs.frozen
class RegistryCreate:
    """The body of POST and PUT: every field, the password in clear."""

    host: RegistryHost
    username: Username
    password: Password = attrs.field(repr=False)
    email: Email = Email("")


@attrs.frozen
class RegistryPatch:
    """A PATCH merged over the stored account; no password (or null) keeps the stored one."""

    host: RegistryHost
    username: Username
    password: Password | None = attrs.field(default=None, repr=False)
    email: Email = Email("")


def registry_host(image: str) -> str:
    """The registry an image reference is pulled from, as Docker reads it (lowercased).

    The first path component is a registry when it has a ``.`` or a ``:``, is ``localhost``,
    or has an uppercase letter; otherwise the image is on Docker Hub (``nginx``,
    ``library/nginx:1.27``).
    """
    first, slash, _ = image.partition("/")
    if not slash or (
        "." not in first and ":" not in first and first != "localhost" and first == first.lower()
    ):
        return DOCKER_HUB
    return first.lower()


@attrs.frozen(repr=False)
class RegistryAuth:
    """A login as the runtime takes it: a clear password, kept out of ``repr`` and so of logs.

    ``server`` is the registry's host (``127.0.0.1:5000``, ``docker.io``)."""

    username: str
    password: str
    server: str

    def __repr__(self) -> str:
        return f"RegistryAuth(username={self.username!r}, password='***', server={self.server!r})"
