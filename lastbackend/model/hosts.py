"""Host names that route to a service: a service's ``domains`` and a user's certificates.

A host is stored as browsers send it in ``Host`` and SNI: lowercase ASCII, internationalized
labels in their ``xn--`` form. Input is converted, not merely checked: ``Bücher.Example`` and
``EXAMPLE.com.`` arrive as ``xn--bcher-kva.example`` and ``example.com``, through IDNA 2008 with
UTS 46 mapping (the ``idna`` package, as browsers do), so the same host can never be claimed
twice under two spellings. What IDNA refuses is a 422 that says which label and why.

A wildcard, ``*.example.com``, covers exactly one label (``a.example.com``, not
``a.b.example.com`` nor ``example.com``), as in TLS certificates; it needs at least two labels
after it, so nobody claims ``*.com``. IP addresses are not hosts here: a router routes by name.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any, NewType
from urllib.parse import urlsplit

import idna

from lastbackend.model.common import anchored, keywords

RouteHost = NewType("RouteHost", str)
"""A lowercase ASCII DNS name, or ``*.`` and one: what a service's ``domains`` map holds."""

MAX_HOSTS = 100
"""Hosts one service may hold (``true`` and ``false`` ones alike)."""
WILDCARD = "*."

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_CANONICAL = re.compile(
    r"(?=.{1,255}$)(?![\s\S]*\.[0-9]+$)(?![0-9]+$)"  # bounded; the last label not all digits
    rf"(?:\*\.(?={_LABEL.pattern}\.)|(?!\*))"  # a wildcard has two labels or more after it
    rf"{_LABEL.pattern}(?:\.{_LABEL.pattern})*"
)
"""A host as stored: what the schema shows. Input may also be spelled in upper case, with a
trailing dot or in Unicode: the check converts it to this form."""


@keywords(pattern=anchored(_CANONICAL), maxLength=255)
def check_route_host(value: str) -> str:
    """``value`` as stored (see the module docstring); ``ValueError`` saying why it is none."""
    text = value.strip()
    wildcard = text.startswith(WILDCARD)
    name = text[len(WILDCARD) :] if wildcard else text
    name = name.removesuffix(".")
    if not name:
        raise ValueError("is not a host name like 'app.example.com'")
    if "*" in name:
        raise ValueError("a wildcard is '*.' followed by a host name, and covers one label")
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        pass
    else:
        raise ValueError("is an IP address; routes are by host name")
    ascii_name = name.lower() if name.isascii() else _from_idna(value, name)
    labels = ascii_name.split(".")
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise ValueError(f"label {label!r} is not 1-63 of a-z, 0-9 and '-' (not at either end)")
    if len(ascii_name) > 253:
        raise ValueError("is longer than 253 characters")
    if labels[-1].isdigit():
        raise ValueError("the last label cannot be all digits")
    if wildcard and len(labels) < 2:
        raise ValueError("a wildcard needs at least two labels after '*.'")
    if name.isascii() and any(label.startswith("xn--") for label in labels):
        _from_idna(value, ascii_name)  # an xn-- label must be valid punycode
    return WILDCARD + ascii_name if wildcard else ascii_name


def _from_idna(value: str, name: str) -> str:
    try:
        return idna.encode(name, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise ValueError(f"is not a valid internationalized host name: {exc}") from None


def covers(pattern: str, host: str) -> bool:
    """Whether ``pattern`` (a host or a one-label wildcard) matches ``host``."""
    if pattern.startswith(WILDCARD):
        first, _, rest = host.partition(".")
        return bool(first) and first != "*" and rest == pattern[len(WILDCARD) :]
    return pattern == host


def web_port(ports: Iterable[str]) -> str | None:
    """The routed port of a ``config.ports`` map: its lowest-numbered TCP port, or ``None``."""
    tcp = [p for p in ports if p.upper().endswith("/TCP")]
    return min(tcp, key=lambda p: int(p.split("/", 1)[0])) if tcp else None


def default_host(service: str, project: str, domain: str) -> str:
    return f"{service}.{project}.{domain}"


def urls(
    service: str,
    project: str,
    config_ports: Iterable[str],
    domains: Mapping[str, bool],
    *,
    domain: str,
    http: int,
    https: int,
) -> list[str]:
    """Every URL that reaches a service through the routers (none without a web port).

    Wildcard hosts are left out: they name many URLs, not one.
    """
    if web_port(config_ports) is None:
        return []
    hosts = [default_host(service, project, domain)]
    hosts += [h for h, on in sorted(domains.items()) if on and not h.startswith(WILDCARD)]
    out: list[str] = []
    for host in hosts:
        out.append(f"http://{host}{'' if http == 80 else f':{http}'}/")
        out.append(f"https://{host}{'' if https == 443 else f':{https}'}/")
    return out


def dial_host(address: str) -> str:
    """Where a node's published ports are reached, from its advertised URL: the URL's host, or
    loopback when it names none or a wildcard (one host: API, agent and router together)."""
    try:
        host = urlsplit(address).hostname or ""
    except ValueError:
        host = ""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def check_domains(value: Mapping[str, bool]) -> dict[str, bool]:
    """The rules across a service's ``domains`` entries (each entry is a :data:`RouteHost` and
    a boolean, checked one by one by the converter): at most :data:`MAX_HOSTS`, and no two
    spellings of one host. The map as stored: converted hosts -> active."""
    if len(value) > MAX_HOSTS:
        raise ValueError(f"a service holds at most {MAX_HOSTS} hosts, got {len(value)}")
    out: dict[str, bool] = {}
    spelled: dict[str, str] = {}
    for key, active in value.items():
        host = check_route_host(key)
        if host in out:
            raise ValueError(f"{key!r} and {spelled[host]!r} are the same host, {host!r}")
        out[host], spelled[host] = active, key
    return out


def under(host: str, domain: str) -> bool:
    """Whether ``host`` is ``domain`` or a name (or wildcard) below it."""
    bare = host[len(WILDCARD) :] if host.startswith(WILDCARD) else host
    return bare == domain or bare.endswith("." + domain)


Domains = NewType("Domains", dict[str, bool])
"""``services/<sid>/domains`` (seed 001): host -> ``true`` routed, ``false`` held but not routed.
The converter checks each entry as ``dict[RouteHost, bool]``, then :func:`check_domains`."""

CHECKS: dict[Any, tuple[type, Any]] = {RouteHost: (str, check_route_host)}
"""The shape of ``model.common.CHECKS``, registered with the converter."""
