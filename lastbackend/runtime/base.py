"""The container runtime seam: what the node agent needs from a container engine, and no more.

The agent reconciles pods into containers through :class:`Runtime` only, so its logic can be
tested against :class:`~tests.fakeruntime.FakeRuntime` and run against
:class:`~lastbackend.runtime.docker.DockerRuntime` (the one module that imports ``docker``),
the way httpx swaps its ``Transport``.

Rules every implementation keeps, because the agent's idempotence rests on them:

- **Names are the identity.** The caller names each container deterministically (``lb-<pod id>``);
  :meth:`Runtime.run` on a name that exists returns that container (starting it if it stopped)
  instead of making a second one, so an agent that crashed between "create" and "report" adopts
  what it made. ``run`` does not compare specs: a pod's spec never changes (a new spec is a new
  pod, so a new name).
- **Labels are the index.** ``io.lastbackend.*`` labels on containers and volumes are how
  :meth:`Runtime.list`, :meth:`Runtime.volumes` and :meth:`Runtime.events` select what belongs to
  lastbackend, to a service or to a pod; a label filter matches objects carrying *all* the pairs.
- **Deleting is idempotent.** ``stop``, ``remove``, ``remove_volume`` and ``remove_image`` of
  something that is already gone do nothing, so a retried reconcile never fails on its own earlier
  progress. A volume or image a container still uses is refused (:class:`ImageInUse` for an
  image), never forced: the caller leaves it for a later sweep.
- **No restart policy.** A dead container stays dead and is reported by an event; the agent
  decides what replaces it, so Docker and the controllers never fight over a container.
- **Commands are shell lines.** A non-empty :attr:`ContainerSpec.command` replaces the image's
  entrypoint and command and runs as ``/bin/sh -c <command>``, like a Procfile line (``$PORT``
  expands, ``&&`` and ``exec`` work); ``""`` runs the image's own entrypoint and command. An image
  without ``/bin/sh`` must use ``""``.
- **Secrets stay secret.** No error message contains a registry password.
- **Staging is done with the same seam.** :meth:`Runtime.create` (without starting), file copies
  in and out as tar archives (:meth:`Runtime.put_archive`, :meth:`Runtime.get_archive`),
  :meth:`Runtime.wait` and :meth:`Runtime.commit` are how the buildpack lifecycle runs detect and
  build in containers and exports an image, the way ``pack`` drives a daemon. Archives hold the
  owners and modes of their entries, and the engine keeps them, so a tar made with uid 1000
  gives files the stack's non-root user can write.
- **Image refs are Docker's.** ``repo[:tag][@digest]``, the tag defaulting to ``latest``;
  exposed ports are spelled like container ports (``"8080/TCP"``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from datetime import datetime
from typing import Protocol, runtime_checkable

import attrs

from lastbackend.model.registries import RegistryAuth

Labels = Mapping[str, str]

CA_VARIABLES = (
    "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
)  # fmt: skip
"""The variables that point tools at a CA bundle other than their own: OpenSSL's default file
(Python's ``ssl``, Go, Ruby), requests, pip (a virtualenv's pip trusts only its own certifi
otherwise), node and npm (added to node's built-in CAs), curl and git. Staging and Dockerfile
builds both set them wherever they put the bundle."""


class ContainerRuntimeError(RuntimeError):
    """The engine refused or failed an operation; the message says what and why."""


class RuntimeUnavailable(ContainerRuntimeError):
    """The engine cannot be reached (dockerd is not running, or the socket is wrong)."""


class ImageError(ContainerRuntimeError):
    """An image could not be pulled: missing, unauthorized, or the registry is unreachable."""


class ImageInUse(ContainerRuntimeError):
    """An image's last name cannot be removed while a container (running or not) uses it."""


class BuildError(ContainerRuntimeError):
    """``docker build`` failed: a step exited non-zero, the Dockerfile is missing or wrong, the
    base image could not be had. The message is the engine's reason, fit to show the user."""


class ContainerNotFound(ContainerRuntimeError):
    """No container has that id or name (raised only where "nothing" is not an answer)."""


class ContainerTimeout(ContainerRuntimeError):
    """A container did not exit within the time :meth:`Runtime.wait` was given."""


@attrs.frozen
class ContainerSpec:
    """One container to run.

    ``ports`` maps ``"<container port>/<TCP|UDP>"`` to a host port, ``0`` meaning any free one
    (the shape of the container object's ``ports``). ``volumes`` maps a named volume to a path in
    the container; a missing volume is created with ``labels``, so name volumes after what owns
    them (``lb-<service id>-<name>``) and select them by that owner's label. ``memory_mb`` of ``0``
    means no limit.
    """

    name: str
    image: str
    command: str = ""
    env: Mapping[str, str] = attrs.field(factory=dict, converter=dict)
    memory_mb: int = 0
    ports: Mapping[str, int] = attrs.field(factory=dict, converter=dict)
    volumes: Mapping[str, str] = attrs.field(factory=dict, converter=dict)
    labels: Mapping[str, str] = attrs.field(factory=dict, converter=dict)


@attrs.frozen
class ContainerState:
    """What the engine reports about one container.

    ``status`` is Docker's vocabulary: ``created``, ``running``, ``paused``, ``restarting``,
    ``removing``, ``exited`` or ``dead``. ``ports`` holds the host ports actually bound, as
    ``{"8080/TCP": 44536}``; it is empty unless the container runs. ``exit_code`` is ``None``
    until the container has exited.
    """

    id: str
    name: str
    image: str
    status: str
    labels: Mapping[str, str]
    ports: dict[str, int]
    created: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    """When it last stopped (``None`` while it runs, or if it never did)."""
    exit_code: int | None = None
    address: str = ""
    """The container's own IP on its network: where health checks reach the app itself (a
    published host port may answer through Docker's proxy while the app is not listening)."""
    oom_killed: bool = False

    @property
    def running(self) -> bool:
        return self.status == "running"


@attrs.frozen
class ImageConfig:
    """What an image runs and declares: the part of Docker's image config staging writes.

    Empty fields mean "not set": :meth:`Runtime.commit` then keeps the container's own value
    (Docker merges ``env`` and ``labels`` into the container's, key by key, and keeps its
    ``entrypoint`` unless one is given). ``exposed_ports`` are ``"8080/TCP"``.
    """

    cmd: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    entrypoint: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    env: Mapping[str, str] = attrs.field(factory=dict, converter=dict)
    labels: Mapping[str, str] = attrs.field(factory=dict, converter=dict)
    exposed_ports: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    workdir: str = ""
    user: str = ""


@attrs.frozen
class ImageInfo:
    """A local image as the engine reports it.

    ``repo_digests`` are ``repo@sha256:...`` pins, one per registry it was pulled from or pushed
    to (none for an image that never left this engine); ``exposed_ports`` are ``"8080/TCP"``.
    ``created`` is when the engine made it (``None`` where it did not say).
    """

    id: str
    repo_tags: tuple[str, ...] = ()
    repo_digests: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    env: Mapping[str, str] = attrs.field(factory=dict)
    labels: Mapping[str, str] = attrs.field(factory=dict)
    exposed_ports: tuple[str, ...] = ()
    workdir: str = ""
    user: str = ""
    created: datetime | None = None

    def digest_for(self, image: str) -> str | None:
        """``repo@sha256:...`` of this image in ``image``'s repository (its registry's pin)."""
        repository = split_image(image)[0]
        for pinned in self.repo_digests:
            if split_image(pinned)[0] == repository:
                return pinned
        return None


@attrs.frozen
class NodeCapacity:
    """What a node offers, read from the engine: total memory in MB, CPUs, host name, version."""

    memory_mb: int
    cpus: int
    hostname: str
    docker_version: str


@attrs.frozen
class RuntimeEvent:
    """A container event: ``action`` is Docker's (``create``, ``start``, ``die``, ``kill``,
    ``stop``, ``destroy``, ``oom``, ...); ``exit_code`` is set on ``die``."""

    action: str
    container_id: str
    name: str
    labels: Mapping[str, str]
    time: datetime
    exit_code: int | None = None


@runtime_checkable
class Runtime(Protocol):
    """A container engine on one node. Every method may raise :class:`ContainerRuntimeError`."""

    async def info(self) -> NodeCapacity:
        """The node's capacity, for its ``nodes/<name>`` object."""
        ...

    async def ensure_image(
        self, image: str, auth: RegistryAuth | None = None, *, always_pull: bool = False
    ) -> None:
        """Make ``image`` present locally.

        Pulls when it is missing, and every time for ``:latest`` (or no tag) or when
        ``always_pull`` is set, as Kubernetes' default pull policy does; a reference by digest is
        never pulled again. Raises :class:`ImageError` when the pull fails.
        """
        ...

    async def run(self, spec: ContainerSpec) -> ContainerState:
        """Create and start ``spec``, or adopt the container already named ``spec.name``."""
        ...

    async def list(self, labels: Labels) -> list[ContainerState]:
        """Every container carrying all of ``labels``, whatever its status."""
        ...

    async def inspect(self, id_or_name: str) -> ContainerState | None:
        """One container, or ``None`` when there is none by that id or name."""
        ...

    async def stop(self, id_or_name: str, timeout_s: float = 10) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``; nothing if it is gone or stopped."""
        ...

    async def remove(self, id_or_name: str) -> None:
        """Remove the container, running or not; nothing if it is gone."""
        ...

    async def remove_volume(self, name: str) -> None:
        """Remove a named volume; nothing if it is gone; an error while a container uses it."""
        ...

    async def volumes(self, labels: Labels) -> list[str]:
        """Names of the volumes carrying all of ``labels``."""
        ...

    def events(self, labels: Labels) -> AsyncIterator[RuntimeEvent]:
        """Container events from the moment of this call on, for containers with ``labels``.

        Not a coroutine: the subscription starts when this is called, so events that happen
        before the first ``async for`` step are still delivered. Runs until cancelled or closed,
        across engine restarts. Streams hold a connection (and, for Docker, a thread): stop one
        early by cancelling its task or with ``contextlib.aclosing``; a mere ``break`` leaves it
        open until garbage collection.
        """
        ...

    def logs(
        self, id_or_name: str, *, follow: bool = False, tail: int | None = None
    ) -> AsyncIterator[bytes]:
        """The container's output (stdout and stderr, in order), the last ``tail`` lines or all.

        With ``follow`` it goes on until the container stops or the iterator is cancelled.
        Raises :class:`ContainerNotFound` on the first step if there is no such container.
        """
        ...

    # -- staging: containers as build steps, and images

    async def create(self, spec: ContainerSpec) -> ContainerState:
        """Create ``spec`` without starting it, or return the container already named so.

        Files can then be copied in with :meth:`put_archive` before :meth:`start`.
        """
        ...

    async def start(self, id_or_name: str) -> ContainerState:
        """Start a created or exited container; nothing if it runs. :class:`ContainerNotFound`
        if there is none."""
        ...

    async def wait(self, id_or_name: str, timeout_s: float | None = None) -> int:
        """The exit code of a started container, once it has exited.

        Raises :class:`ContainerTimeout` when it still runs after ``timeout_s`` (``None``: no
        limit) and :class:`ContainerNotFound` when there is no such container.
        """
        ...

    async def put_archive(self, id_or_name: str, path: str, data: bytes) -> None:
        """Unpack the tar ``data`` into the directory ``path`` of the container (which must
        exist), keeping the entries' owners and modes; works on a container that is not running.
        """
        ...

    async def get_archive(self, id_or_name: str, path: str) -> bytes | None:
        """A tar of ``path`` in the container, its entries named from ``path``'s last component
        (``/workspace`` gives ``workspace/...``), or ``None`` when the path does not exist.

        Works on a stopped container. Raises :class:`ContainerNotFound` without the container.
        """
        ...

    async def commit(self, id_or_name: str, ref: str, config: ImageConfig) -> str:
        """Make an image of the container's filesystem tagged ``ref``; returns its id."""
        ...

    async def import_image(self, data: bytes, ref: str, config: ImageConfig) -> str:
        """Make an image from a rootfs tar (``docker import``), tagged ``ref``; returns its id.
        How a stack is built with nothing to pull."""
        ...

    async def inspect_image(self, ref: str) -> ImageInfo | None:
        """The local image ``ref`` (a tag, a ``repo@digest`` pin or an id), or ``None``."""
        ...

    async def tag(self, source: str, target: str) -> None:
        """Give the local image ``source`` the name ``target`` (``repo:tag``), moving that tag."""
        ...

    async def push(self, ref: str, auth: RegistryAuth | None = None) -> str:
        """Push the local ``ref`` to its registry; returns the manifest digest
        (``sha256:...``). Raises :class:`ImageError`, whose message never holds the password."""
        ...

    async def remove_image(self, ref: str) -> None:
        """Untag ``ref`` (removing the image with its last name); nothing if it is gone.

        Raises :class:`ImageInUse` when ``ref`` is the image's last name and a container uses it.
        """
        ...

    async def images(self, labels: Labels, *, keys: Iterable[str] = ()) -> list[ImageInfo]:
        """The local images carrying all of ``labels`` and a label of every name in ``keys``
        (whatever its value): one list call, so a sweep costs the same for any number of
        images. Only ``id``, ``repo_tags``, ``repo_digests``, ``labels`` and ``created`` are set.
        """
        ...

    async def build_image(
        self,
        context_tar: bytes,
        dockerfile: str,
        tag: str,
        *,
        labels: Labels,
        log: Callable[[str], None],
        build_args: Mapping[str, str] | None = None,
        ca_bundle: bytes | None = None,
    ) -> str:
        """``docker build`` of the context (an uncompressed tar) with the Dockerfile at
        ``dockerfile`` inside it, tagged ``tag`` and labelled ``labels``; returns the image id.
        ``build_args`` are ``--build-arg``s: Docker gives its proxy variables (``HTTPS_PROXY``
        and the like) to every ``RUN`` step without an ``ARG`` and keeps them out of the image.
        ``ca_bundle`` (PEM) is handed to every ``RUN`` step for that step only, with
        :data:`CA_VARIABLES` pointing at it; it is in no layer, nor in the image's history or
        config, and the image's own trust store is left as the Dockerfile makes it.

        Each line of the build's output is passed to ``log`` as it comes. Raises
        :class:`BuildError` with the engine's reason when the build fails. Cancelling the call
        stops the build on the engine, and the containers of its steps are removed (after a
        failure too), so nothing of an unfinished build keeps running.
        """
        ...

    async def close(self) -> None:
        """Release connections; call once, when the agent stops."""
        ...


def split_image(image: str) -> tuple[str, str, str]:
    """``(repository, tag, digest)`` of a reference; a missing tag is ``latest`` (Docker's rule)."""
    ref, _, digest = image.partition("@")
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        ref, tag = ref[:colon], ref[colon + 1 :]
    else:
        tag = "" if digest else "latest"
    return ref, tag, digest


def must_pull(image: str, *, present: bool, always_pull: bool) -> bool:
    """Kubernetes' default pull policy: pull what is missing, ``:latest`` always, digests never."""
    _, tag, digest = split_image(image)
    if not present:
        return True
    if digest:
        return False
    return always_pull or tag == "latest"


def has_labels(have: Mapping[str, str], want: Labels) -> bool:
    """Whether ``have`` carries every pair of ``want`` (the engines' label filter)."""
    return all(have.get(key) == value for key, value in want.items())
