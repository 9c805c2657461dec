"""Validated scalar types shared by every family, and the secret-field rule.

Each ``NewType`` below has a checker in :data:`CHECKS`; the converter in ``codec.py`` runs it
while decoding, so a bad value is reported with its field path (``config.ports["x"]``) before
anything reaches etcd. Checkers return the value unchanged or raise ``ValueError`` with a
sentence a person can act on.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NewType

Name = NewType("Name", str)
"""A DNS label: what projects and services are called and what their keys are made of."""
Id = NewType("Id", str)
ImageRef = NewType("ImageRef", str)
Hostname = NewType("Hostname", str)
EnvName = NewType("EnvName", str)
PortSpec = NewType("PortSpec", str)
"""``"<container port>/<TCP|UDP>"``, the shape of seed 001's container ``ports`` keys."""
HostPort = NewType("HostPort", int)
Replicas = NewType("Replicas", int)
MemoryMB = NewType("MemoryMB", int)
VolumeName = NewType("VolumeName", str)
ContainerPath = NewType("ContainerPath", str)
RepoSegment = NewType("RepoSegment", str)
GitRef = NewType("GitRef", str)
Text = NewType("Text", str)
"""Free text such as a description: any characters, bounded length."""

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*"
)
_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
_PORT_SPEC = re.compile(r"([0-9]{1,5})/(TCP|UDP)")
_VOLUME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}")
_REPO_SEGMENT = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,99}")
# A docker reference: [host[:port]/]path[:tag][@digest], lowercase path components.
_IMAGE = re.compile(
    r"(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@sha256:[a-f0-9]{64})?"
)
MAX_TEXT = 1024


def is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def new_id() -> str:
    return str(uuid.uuid4())


Instant = NewType("Instant", datetime)
"""A moment to the millisecond (``2026-12-02T10:00:00.250Z``), where every other time is to the
second: a container's ``ready_since`` decides when ``min_ready`` is over, and a second's
truncation would let a version that dies within it count, and be routed, as proven."""


def now() -> datetime:
    """The current time, UTC, to the second: what every ``created``/``updated`` holds."""
    return datetime.now(UTC).replace(microsecond=0)


def check_name(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    if len(value) > 63:
        raise ValueError(f"must be at most 63 characters, got {len(value)}")
    if not DNS_LABEL.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a DNS label: lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    if is_uuid(value):
        raise ValueError(f"{value!r} looks like an id; names must not be UUIDs")
    return value


def check_id(value: str) -> str:
    if not is_uuid(value):
        raise ValueError(f"{value!r} is not a UUID")
    return value


def check_image(value: str) -> str:
    if len(value) > 512 or not _IMAGE.fullmatch(value):
        raise ValueError(f"{value!r} is not a docker image reference like 'library/nginx:1.27'")
    return value


def check_hostname(value: str) -> str:
    if not _HOSTNAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a lowercase host name like 'app.example.com'")
    return value


def check_env_name(value: str) -> str:
    if not _ENV.fullmatch(value):
        raise ValueError(f"{value!r} is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)")
    return value


def check_port_spec(value: str) -> str:
    match = _PORT_SPEC.fullmatch(value)
    if not match or not 1 <= int(match.group(1)) <= 65535:
        raise ValueError(f"{value!r} is not '<port 1-65535>/<TCP|UDP>', e.g. '8080/TCP'")
    return value


def _int_range(low: int, high: int, what: str) -> Callable[[int], int]:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"{what} must be between {low} and {high}, got {value}")
        return value

    return check


def check_volume(value: str) -> str:
    if not _VOLUME.fullmatch(value):
        raise ValueError(f"{value!r} is not a volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)")
    return value


def check_container_path(value: str) -> str:
    if not value.startswith("/") or "\0" in value or ".." in value.split("/") or len(value) > 1024:
        raise ValueError(f"{value!r} is not an absolute path inside the container")
    return value


def check_repo_segment(value: str) -> str:
    if value in {".", ".."} or not _REPO_SEGMENT.fullmatch(value):
        raise ValueError(f"{value!r} is not a repository owner or name")
    return value


def check_git_ref(value: str) -> str:
    bad = (
        not value
        or len(value) > 255
        or value.startswith(("-", "/"))
        or value.endswith(("/", ".lock", "."))
        or ".." in value
        or "//" in value
        or "@{" in value
        or any(c in value for c in " ~^:?*[\\\x7f")
        or any(ord(c) < 32 for c in value)
    )
    if bad:
        raise ValueError(f"{value!r} is not a git branch name")
    return value


def check_text(value: str) -> str:
    if len(value) > MAX_TEXT:
        raise ValueError(f"must be at most {MAX_TEXT} characters, got {len(value)}")
    return value


CHECKS: dict[Any, tuple[type, Callable[[Any], Any]]] = {
    Name: (str, check_name),
    Id: (str, check_id),
    ImageRef: (str, check_image),
    Hostname: (str, check_hostname),
    EnvName: (str, check_env_name),
    PortSpec: (str, check_port_spec),
    HostPort: (int, _int_range(0, 65535, "a host port (0 = any free port)")),
    Replicas: (int, _int_range(0, 1000, "replicas")),
    MemoryMB: (int, _int_range(6, 1 << 20, "memory (MB)")),
    VolumeName: (str, check_volume),
    ContainerPath: (str, check_container_path),
    RepoSegment: (str, check_repo_segment),
    GitRef: (str, check_git_ref),
    Text: (str, check_text),
}
"""Each validated type: the JSON type it must arrive as, and its checker."""


SECRET_FIELDS = frozenset(
    {"password", "token", "api_key", "secret", "refresh_token", "webhook_secret", "private_key"}
)
"""Field names whose values are never shown: responses and ``lastbackend tree`` print ``***``.
Matched whatever their case: ``Password`` and ``PASSWORD`` are as secret as ``password``."""
MASK = "***"


def is_secret_field(name: object) -> bool:
    return isinstance(name, str) and name.lower() in SECRET_FIELDS


def mask_secrets(value: Any) -> Any:
    """A copy of a decoded JSON value with every secret field's value replaced by ``***``."""
    if isinstance(value, dict):
        return {
            k: (MASK if is_secret_field(k) and v not in (None, "") else mask_secrets(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [mask_secrets(v) for v in value]
    return value
