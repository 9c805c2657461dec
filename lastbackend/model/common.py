"""Validated scalar types shared by every family, and the secret-field rule.

Each ``NewType`` below has a checker in :data:`CHECKS`; the converter in ``codec.py`` runs it
while decoding, so a bad value is reported with its field path (``config.ports["x"]``) before
anything reaches etcd. Checkers return the value unchanged or raise ``ValueError`` with a
sentence a person can act on.
"""

from __future__ import annotations

import os
import re
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NewType, TypeVar

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

C = TypeVar("C", bound=Callable[..., Any])

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
HOSTNAME = re.compile(
    r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?)*"
)
MAX_HOSTNAME = 253
"""DNS's limit, checked apart from the pattern: a look-ahead would make it one that schema
fuzzers cannot generate strings for."""
_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
PORT = r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
"""A TCP or UDP port, 1 to 65535, without leading zeros: one spelling per port."""
_PORT_SPEC = re.compile(PORT + r"/(?:TCP|UDP)")
_VOLUME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}")
_REPO_SEGMENT = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,99}")
# A docker reference: [host[:port]/]path[:tag][@digest], lowercase path components.
IMAGE_REPOSITORY = (
    r"(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
)
_IMAGE = re.compile(
    IMAGE_REPOSITORY + r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?"
)
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_CONTAINER_PATH = re.compile(r"(?!(?:[^\x00]*/)?\.\.(?:/|$))/[^\x00]{0,1023}")
_GIT_REF = re.compile(
    r"(?![-/])(?!.*(?:\.\.|//|@\{))(?!.*(?:/|\.lock|\.)$)[^ ~^:?*\[\\\x00-\x1f\x7f]{1,255}"
)
BLANK = r"\s\x00-\x1f\x7f-\x9f\ufeff"
"""For a character class: whitespace and control characters, spelled so that Python's ``re``
(whose ``\\s`` takes in \\x1c-\\x1f and \\x85) and ECMA 262 (whose ``\\s`` takes in \\ufeff) mean
the same set: a value a schema's ``pattern`` admits is one its checker admits, and the fuzzer
finds none that is not."""
MAX_TEXT = 1024
NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"
"""A JSON Schema ``pattern``: text on one line, without control characters."""


def anchored(rx: re.Pattern[str] | str) -> str:
    """A checker's expression as a JSON Schema ``pattern``: ECMA 262 searches, so the pattern
    carries its own anchors."""
    return f"^(?:{rx if isinstance(rx, str) else rx.pattern})$"


NOT_UUID = {"not": {"pattern": anchored(_UUID)}}


def keywords(**schema: Any) -> Callable[[C], C]:
    """Attach to a checker the JSON Schema keywords it enforces. ``/openapi.json`` reads them
    (``keywords_of``), so what the contract says and what the check does sit side by side,
    written once; a contract test (schemathesis) holds the two to each other."""

    def attach(check: C) -> C:
        check.schema = schema  # type: ignore[attr-defined]
        return check

    return attach


def keywords_of(check: Callable[..., Any]) -> dict[str, Any]:
    return dict(getattr(check, "schema", {}))


def is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


class _Entropy:
    """Random 128-bit numbers from the OS, read 4 KiB at a time.

    ``uuid4`` asks ``os.urandom`` for 16 bytes per id, and that system call gives up the GIL on
    every create: the API's loop then waits to take it back from the etcd watch thread (7% of a
    loaded API's samples). One read per 256 ids keeps ids as unpredictable as ``uuid4``'s (a
    pseudo-random generator would let whoever reads a few hundred ids predict the next), and a
    forked child starts a pool of its own, so no two processes hand out the same bytes.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool = b""
        self._at = 0

    def bits128(self) -> int:
        with self._lock:
            if self._at + 16 > len(self._pool):
                self._pool, self._at = os.urandom(4096), 0
            chunk = self._pool[self._at : self._at + 16]
            self._at += 16
        return int.from_bytes(chunk, "big")

    def forget(self) -> None:
        """In a forked child: a new lock (the parent's may be held) and an empty pool."""
        self._lock = threading.Lock()
        self._pool, self._at = b"", 0


ids = _Entropy()
os.register_at_fork(after_in_child=ids.forget)


def new_id() -> str:
    """A random (version 4) UUID, from :data:`ids`."""
    return str(uuid.UUID(int=ids.bits128(), version=4))


Instant = NewType("Instant", datetime)
"""A moment to the millisecond (``2026-12-02T10:00:00.250Z``), where every other time is to the
second: a container's ``ready_since`` decides when ``min_ready`` is over, and a second's
truncation would let a version that dies within it count, and be routed, as proven."""


def now() -> datetime:
    """The current time, UTC, to the second: what every ``created``/``updated`` holds."""
    return datetime.now(UTC).replace(microsecond=0)


@keywords(pattern=anchored(DNS_LABEL), minLength=1, maxLength=63, **NOT_UUID)
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


@keywords(pattern=anchored(_UUID), format="uuid")
def check_id(value: str) -> str:
    if not is_uuid(value):
        raise ValueError(f"{value!r} is not a UUID")
    return value


@keywords(pattern=anchored(_IMAGE), maxLength=512)
def check_image(value: str) -> str:
    if len(value) > 512 or not _IMAGE.fullmatch(value):
        raise ValueError(f"{value!r} is not a docker image reference like 'library/nginx:1.27'")
    return value


@keywords(pattern=anchored(HOSTNAME), maxLength=MAX_HOSTNAME)
def check_hostname(value: str) -> str:
    if len(value) > MAX_HOSTNAME or not HOSTNAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a lowercase host name like 'app.example.com'")
    return value


@keywords(pattern=anchored(_ENV))
def check_env_name(value: str) -> str:
    if not _ENV.fullmatch(value):
        raise ValueError(f"{value!r} is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)")
    return value


@keywords(pattern=anchored(_PORT_SPEC))
def check_port_spec(value: str) -> str:
    if not _PORT_SPEC.fullmatch(value):
        raise ValueError(f"{value!r} is not '<port 1-65535>/<TCP|UDP>', e.g. '8080/TCP'")
    return value


def _int_range(low: int, high: int, what: str) -> Callable[[int], int]:
    @keywords(minimum=low, maximum=high)
    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"{what} must be between {low} and {high}, got {value}")
        return value

    return check


@keywords(pattern=anchored(_VOLUME))
def check_volume(value: str) -> str:
    if not _VOLUME.fullmatch(value):
        raise ValueError(f"{value!r} is not a volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)")
    return value


@keywords(pattern=anchored(_CONTAINER_PATH), maxLength=1024)
def check_container_path(value: str) -> str:
    if not _CONTAINER_PATH.fullmatch(value):
        raise ValueError(f"{value!r} is not an absolute path inside the container")
    return value


@keywords(pattern=anchored(_REPO_SEGMENT), **{"not": {"enum": [".", ".."]}})
def check_repo_segment(value: str) -> str:
    if value in {".", ".."} or not _REPO_SEGMENT.fullmatch(value):
        raise ValueError(f"{value!r} is not a repository owner or name")
    return value


@keywords(pattern=anchored(_GIT_REF), minLength=1, maxLength=255)
def check_git_ref(value: str) -> str:
    if not _GIT_REF.fullmatch(value):
        raise ValueError(f"{value!r} is not a git branch name")
    return value


@keywords(maxLength=MAX_TEXT)
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
