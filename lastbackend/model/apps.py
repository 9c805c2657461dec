"""Apps, packages and droplets: the ``/v3`` family of seed 000, as stored and as sent.

An app is a service (DESIGN.md section 1): its guid is the service id, its space the project, its
name the service's name and its ``environment_variables`` the service's ``config.env``. What the
app adds lives beside the service's seed-001 keys:

- ``services/<sid>/lifecycle``: :class:`Lifecycle`, the polymorphic ``{"type", "data"}`` object;
- ``services/<sid>/app``: :class:`AppState`, ``desired_state`` and ``current_droplet``, which
  DESIGN.md does not place (a departure the README records);
- ``services/<sid>/packages/<guid>``: a :data:`Package` (bits, docker or git);
- ``services/<sid>/droplets/<guid>``: a :class:`Droplet`.

Stored objects never hold their own guid (it is the key's last segment). Docker and git
credentials are stored with ``password``/``api_key`` as Fernet tokens; only the ``*Create``
bodies hold clear secrets, and the API shows ``"***"`` (DESIGN.md section 7).

Polymorphic objects (``lifecycle``, packages, staging responses) are attrs classes with a
``type`` field; ``codec`` decodes them by that field and names it when it is unknown.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal, NewType

import attrs

from lastbackend.model.common import BLANK, MASK, EnvName, Id, ImageRef, Name, anchored, keywords
from lastbackend.model.health import HealthCheck

BuildpackName = NewType("BuildpackName", str)
"""A buildpack's id as ``buildpack.toml`` names it (``static``, ``io.lastbackend.procfile``)."""
StackName = NewType("StackName", str)
"""A stack's name (``cflinuxfs2`` in seed 000): a pair of build and run images."""
GitUrl = NewType("GitUrl", str)
"""A clone URL, optionally with ``:<ref>`` after it as seed 000 writes ``http://host:master``."""
AppState_ = Literal["STOPPED", "STARTED"]
PackageState = Literal["AWAITING_UPLOAD", "PROCESSING_UPLOAD", "READY", "FAILED", "EXPIRED"]
PackageType = Literal["bits", "docker", "git"]
DropletState = Literal["PENDING", "STAGING", "STAGED", "FAILED", "EXPIRED"]

DESIRED_STATES = ("STOPPED", "STARTED")
PACKAGE_STATES = ("AWAITING_UPLOAD", "PROCESSING_UPLOAD", "READY", "FAILED", "EXPIRED")
DROPLET_STATES = ("PENDING", "STAGING", "STAGED", "FAILED", "EXPIRED")

_BUILDPACK = re.compile(r"[a-z0-9][a-z0-9._/-]{0,127}")
_STACK = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_GIT_SCHEMES = ("https://", "http://", "git://", "ssh://")
_SCP_LIKE = re.compile(rf"[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^{BLANK}]+")
_GIT_URL = re.compile(
    rf"(?=[^{BLANK}]{{1,2048}}$)"  # one line, bounded
    r"(?![\s\S]*:(?:-|[^/:]*\.\.)[^/:]*$)"  # a :<ref> never starts with '-' nor holds '..'
    rf"(?:(?:https?|git|ssh)://[^{BLANK}]+|" + _SCP_LIKE.pattern + ")"
)


@keywords(pattern=anchored(_BUILDPACK))
def check_buildpack(value: str) -> str:
    if not _BUILDPACK.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a buildpack name: lowercase letters, digits and ._/- "
            "(see GET /api/buildpacks)"
        )
    return value


@keywords(pattern=anchored(_STACK))
def check_stack(value: str) -> str:
    if not _STACK.fullmatch(value):
        raise ValueError(f"{value!r} is not a stack name: lowercase letters, digits and ._-")
    return value


def split_git_url(value: str) -> tuple[str, str | None]:
    """``(clone url, ref or None)``: seed 000 puts a ref after the URL's last ``:``.

    A ``:`` followed by digits and a path is a port (``http://host:8080/repo.git``), and one
    whose tail holds a ``/`` is part of the path, so only a final ``:<ref>`` is taken as a ref.
    """
    scheme_end = value.find("://")
    head = scheme_end + 3 if scheme_end >= 0 else 0
    colon = value.rfind(":")
    if colon < head:
        return value, None
    tail = value[colon + 1 :]
    if not tail or "/" in tail or tail.isdigit():
        return value, None
    if scheme_end < 0 and "@" in value[:colon] and value.find(":") == colon:
        return value, None  # scp-like user@host:path with no ref
    return value[:colon], tail


@keywords(pattern=anchored(_GIT_URL), maxLength=2048)
def check_git_url(value: str) -> str:
    if not _GIT_URL.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a git URL: https://, http://, git:// or ssh:// (or user@host:path),"
            " optionally followed by :<branch or tag>"
        )
    return value


CHECKS: dict[Any, tuple[type, Callable[[Any], Any]]] = {
    BuildpackName: (str, check_buildpack),
    StackName: (str, check_stack),
    GitUrl: (str, check_git_url),
}
"""This family's validated types, registered with the converter like ``common.CHECKS``."""


# lifecycles ------------------------------------------------------------------------------------


@attrs.frozen
class BuildpackData:
    """``buildpack: null`` asks for auto-detection; ``stack: null`` for the default stack."""

    buildpack: BuildpackName | None = None
    stack: StackName | None = None


@attrs.frozen
class DockerData:
    use_caching: bool = False


@attrs.frozen
class BuildpackLifecycle:
    type: Literal["buildpack"] = "buildpack"
    data: BuildpackData = attrs.Factory(BuildpackData)


@attrs.frozen
class DockerLifecycle:
    type: Literal["docker"] = "docker"
    data: DockerData = attrs.Factory(DockerData)


Lifecycle = BuildpackLifecycle | DockerLifecycle
"""``services/<sid>/lifecycle`` and a droplet's ``lifecycle``; decoded by ``type``."""
LIFECYCLES: dict[str, type] = {"buildpack": BuildpackLifecycle, "docker": DockerLifecycle}


# apps ------------------------------------------------------------------------------------------


@attrs.frozen
class AppState:
    """``services/<sid>/app``. A service without this key was made by ``/api`` and runs as
    ``STARTED``; ``STOPPED`` means no containers while ``config.replicas`` is kept."""

    desired_state: AppState_ = "STOPPED"
    current_droplet: Id | None = None


@attrs.frozen
class SpaceRef:
    guid: Id


@attrs.frozen
class AppRelationships:
    space: SpaceRef


@attrs.frozen
class AppCreate:
    """``POST /v3/apps``: the document's body. The lifecycle defaults to buildpack auto-detect."""

    name: Name
    relationships: AppRelationships
    lifecycle: Lifecycle | None = None
    environment_variables: dict[EnvName, str] = attrs.Factory(dict)


@attrs.frozen
class AppUpdate:
    """``PATCH /v3/apps/:guid``: any subset; the lifecycle ``type`` cannot change (422)."""

    name: Name | None = None
    lifecycle: Lifecycle | None = None
    environment_variables: dict[EnvName, str] | None = None
    health_check: HealthCheck | None = None
    """Cloud Foundry's process health check, kept in the service's config (``model.health``)."""


@attrs.frozen
class DropletRef:
    guid: Id


@attrs.frozen
class CurrentDropletBody:
    """``PATCH /v3/apps/:guid/relationships/current_droplet``: ``{"data": {"guid": ...}}``."""

    data: DropletRef


# packages --------------------------------------------------------------------------------------


@attrs.frozen
class Hash:
    type: Literal["sha1"] = "sha1"
    value: str | None = None


@attrs.frozen(repr=False)
class DockerCredentials:
    """As sent: a clear password. Stored with ``password`` encrypted; shown as ``***``."""

    user: str = ""
    password: str = ""
    email: str = ""
    login_server: str = ""

    def __repr__(self) -> str:
        return f"DockerCredentials(user={self.user!r}, password={MASK!r})"


@attrs.frozen(repr=False)
class GitCredentials:
    user: str = ""
    password: str = ""
    api_key: str = ""

    def __repr__(self) -> str:
        return f"GitCredentials(user={self.user!r}, password={MASK!r}, api_key={MASK!r})"


@attrs.frozen
class BitsPackage:
    """``packages/<guid>`` of type bits; the bits themselves are in the blob store."""

    created: datetime
    updated: datetime
    type: Literal["bits"] = "bits"
    state: PackageState = "AWAITING_UPLOAD"
    error: str | None = None
    hash: Hash = attrs.Factory(Hash)


@attrs.frozen
class DockerPackage:
    created: datetime
    updated: datetime
    image: ImageRef
    type: Literal["docker"] = "docker"
    state: PackageState = "READY"
    credentials: DockerCredentials | None = None


@attrs.frozen
class GitPackage:
    created: datetime
    updated: datetime
    url: GitUrl
    type: Literal["git"] = "git"
    state: PackageState = "READY"
    credentials: GitCredentials | None = None


Package = BitsPackage | DockerPackage | GitPackage
PACKAGES: dict[str, type] = {"bits": BitsPackage, "docker": DockerPackage, "git": GitPackage}


@attrs.frozen
class AppRef:
    guid: Id


@attrs.frozen
class PackageRelationships:
    app: AppRef


@attrs.frozen
class BitsPackageCreate:
    type: Literal["bits"] = "bits"
    relationships: PackageRelationships | None = None


@attrs.frozen
class DockerPackageCreate:
    image: ImageRef
    type: Literal["docker"] = "docker"
    credentials: DockerCredentials | None = None
    relationships: PackageRelationships | None = None


@attrs.frozen
class GitPackageCreate:
    url: GitUrl
    type: Literal["git"] = "git"
    credentials: GitCredentials | None = None
    relationships: PackageRelationships | None = None


PackageCreate = BitsPackageCreate | DockerPackageCreate | GitPackageCreate
PACKAGE_CREATES: dict[str, type] = {
    "bits": BitsPackageCreate,
    "docker": DockerPackageCreate,
    "git": GitPackageCreate,
}
LIFECYCLE_OF_PACKAGE = {"bits": "buildpack", "git": "buildpack", "docker": "docker"}
"""Which lifecycle can stage each package type; any other pair is a 422."""


# droplets --------------------------------------------------------------------------------------


@attrs.frozen
class BuildpackStagingResponse:
    """Seed 000's buildpack ``staging_response``; ``commit`` only for a git package."""

    hash: Hash
    buildpack: str
    stack: str
    process_types: dict[str, str]
    commit: str | None = None


@attrs.frozen
class DockerStagingResponse:
    start_command: str
    image_path: str
    cached: bool


StagingResponse = BuildpackStagingResponse | DockerStagingResponse


@attrs.frozen
class Droplet:
    """``droplets/<guid>``: one staging of one package, and what it produced.

    ``package`` is the staged package's guid. ``image`` is the runnable image the staging made
    (what starting the app points the service's ``image`` key at) and ``ports`` the container
    ports that image listens on (``["8080/TCP"]``); both are set once ``STAGED``.
    """

    created: datetime
    updated: datetime
    package: Id
    lifecycle: Lifecycle
    state: DropletState = "PENDING"
    error: str | None = None
    environment_variables: dict[EnvName, str] = attrs.Factory(dict)
    staging_response: StagingResponse | None = None
    image: str | None = None
    ports: list[str] = attrs.Factory(list)


@attrs.frozen
class DropletCreate:
    """``POST /v3/packages/:guid/droplets``; ``lifecycle`` overrides the app's."""

    environment_variables: dict[EnvName, str] = attrs.Factory(dict)
    lifecycle: Lifecycle | None = None


UNIONS: dict[Any, tuple[str, dict[str, type]]] = {
    Lifecycle: ("type", LIFECYCLES),
    Package: ("type", PACKAGES),
    PackageCreate: ("type", PACKAGE_CREATES),
}
"""Tagged unions the converter decodes by a field; staging responses are told apart by shape."""
