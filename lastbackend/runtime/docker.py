"""The Docker implementation of the runtime seam: the only module that imports ``docker``.

Concurrency: the Docker SDK is blocking (``requests`` over the engine's socket), so every one-shot
call runs through :func:`asyncio.to_thread`, keeping the agent's event loop free for etcd watches
and leases while Docker pulls or stops a container. Streams (events, followed logs) can last for
days, so each gets a daemon thread of its own instead of holding a slot of the shared executor; the
thread hands items to the loop with ``loop.call_soon_threadsafe`` and waits (a semaphore) when the
consumer falls ``STREAM_BUFFER`` items behind, so a chatty container cannot fill memory.
Cancelling the consuming task (or ``aclose``) shuts the stream's socket, which wakes the thread.

The SDK client is made on first use, not in ``__init__``: it asks the engine for its API version
when created, and an agent must be able to start (and retry) while dockerd is still coming up.
Streams use a second client without a read timeout, since an idle event stream is not an error.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import contextlib
import io
import itertools
import json
import math
import os
import re
import shutil
import tarfile
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import docker
import docker.errors
import docker.types
import docker.types.daemon
import docker.utils
import requests.exceptions
import structlog

from lastbackend.runtime.base import (
    BuildError,
    ContainerNotFound,
    ContainerRuntimeError,
    ContainerSpec,
    ContainerState,
    ContainerTimeout,
    ImageConfig,
    ImageError,
    ImageInfo,
    ImageInUse,
    Labels,
    NodeCapacity,
    RegistryAuth,
    RuntimeEvent,
    RuntimeUnavailable,
    has_labels,
    must_pull,
    split_image,
)
from lastbackend.runtime.dockerfile import (
    APT_CONF_TEXT,
    APT_SECRET,
    CA_SECRET,
    MOUNTS,
    Rewritten,
    variables,
    with_ca,
)

T = TypeVar("T")
LINE_MAX = 64 * 1024
"""Build output without a newline is passed on in pieces about this long (bounded memory)."""
log = structlog.get_logger("lastbackend.runtime")

MIB = 1024 * 1024
STREAM_BUFFER = 256
"""Items a stream's thread may hand the loop before it waits for the consumer."""
RECONNECT_MAX_S = 5.0
_ZERO_TIME = "0001-01-01T00:00:00Z"
_FRACTION = re.compile(r"\.(\d+)")
# Actor attributes Docker reports beside a container's labels in its events.
_EVENT_ATTRIBUTES = frozenset({"name", "image", "exitCode", "signal", "execID", "exec_id"})


class _Closable(Protocol):
    def close(self) -> None: ...


def _label_filter(labels: Labels) -> dict[str, list[str]]:
    return {"label": [f"{key}={value}" for key, value in labels.items()]}


def _parse_time(value: str | None) -> datetime | None:
    """Docker's RFC 3339 times carry nanoseconds, which ``fromisoformat`` cannot read."""
    if not value or value.startswith(_ZERO_TIME[:4]):
        return None
    value = _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), value, count=1)
    return datetime.fromisoformat(value).astimezone(UTC)


def _docker_port(spec: str) -> str:
    """``"8080/TCP"`` -> ``"8080/tcp"``, Docker's spelling."""
    port, _, proto = spec.partition("/")
    return f"{port}/{(proto or 'tcp').lower()}"


def _bound_ports(published: Mapping[str, Any] | None) -> dict[str, int]:
    """``NetworkSettings.Ports`` -> ``{"8080/TCP": 44536}``, preferring the IPv4 binding."""
    out: dict[str, int] = {}
    for key, bindings in (published or {}).items():
        if not bindings:  # exposed by the image, not published
            continue
        port, _, proto = key.partition("/")
        ipv4 = [b for b in bindings if ":" not in b.get("HostIp", "")]
        out[f"{port}/{proto.upper()}"] = int((ipv4 or bindings)[0]["HostPort"])
    return out


def _state(raw: Mapping[str, Any]) -> ContainerState:
    state = raw["State"]
    status = state["Status"]
    created = _parse_time(raw["Created"])
    assert created is not None
    return ContainerState(
        id=raw["Id"],
        name=raw["Name"].lstrip("/"),
        image=raw["Config"]["Image"],
        status=status,
        labels=dict(raw["Config"].get("Labels") or {}),
        ports=_bound_ports((raw.get("NetworkSettings") or {}).get("Ports")),
        created=created,
        started_at=_parse_time(state.get("StartedAt")),
        finished_at=_parse_time(state.get("FinishedAt")) if status in ("exited", "dead") else None,
        exit_code=int(state["ExitCode"]) if status in ("exited", "dead") else None,
        address=_address(raw.get("NetworkSettings") or {}),
        oom_killed=bool(state.get("OOMKilled")),
    )


def _address(network: Mapping[str, Any]) -> str:
    """The container's IP: the default bridge's, else the first network's that has one."""
    if network.get("IPAddress"):
        return str(network["IPAddress"])
    for settings in (network.get("Networks") or {}).values():
        if (settings or {}).get("IPAddress"):
            return str(settings["IPAddress"])
    return ""


def _event(raw: Mapping[str, Any]) -> RuntimeEvent | None:
    if raw.get("Type") != "container":
        return None
    actor = raw.get("Actor") or {}
    attributes = dict(actor.get("Attributes") or {})
    exit_code = attributes.get("exitCode")
    ns = int(raw.get("timeNano") or int(raw.get("time", 0)) * 1_000_000_000)
    return RuntimeEvent(
        action=raw.get("Action") or raw.get("status") or "",
        container_id=actor.get("ID") or raw.get("id") or "",
        name=attributes.get("name", ""),
        labels={k: v for k, v in attributes.items() if k not in _EVENT_ATTRIBUTES},
        time=datetime.fromtimestamp(ns / 1e9, UTC),
        exit_code=int(exit_code) if exit_code not in (None, "") else None,
    )


def _image_info(raw: Mapping[str, Any]) -> ImageInfo:
    config = raw.get("Config") or {}
    env = dict(item.partition("=")[::2] for item in config.get("Env") or [])
    return ImageInfo(
        id=raw["Id"],
        repo_tags=tuple(raw.get("RepoTags") or ()),
        repo_digests=tuple(raw.get("RepoDigests") or ()),
        cmd=tuple(config.get("Cmd") or ()),
        entrypoint=tuple(config.get("Entrypoint") or ()),
        env=env,
        labels=dict(config.get("Labels") or {}),
        exposed_ports=tuple(
            sorted(_seam_port(port) for port in (config.get("ExposedPorts") or {}))
        ),
        workdir=config.get("WorkingDir") or "",
        user=config.get("User") or "",
        created=_parse_time(raw.get("Created")),
    )


def _listed_image(raw: Mapping[str, Any]) -> ImageInfo:
    """An entry of ``GET /images/json``, whose untagged names read ``<none>:<none>``."""
    created = raw.get("Created")
    return ImageInfo(
        id=raw["Id"],
        repo_tags=tuple(t for t in raw.get("RepoTags") or () if t != "<none>:<none>"),
        repo_digests=tuple(d for d in raw.get("RepoDigests") or () if d != "<none>@<none>"),
        labels=dict(raw.get("Labels") or {}),
        created=datetime.fromtimestamp(created, UTC) if isinstance(created, int) else None,
    )


def _seam_port(spec: str) -> str:
    """``"8080/tcp"`` -> ``"8080/TCP"``, the seam's spelling."""
    port, _, proto = spec.partition("/")
    return f"{port}/{(proto or 'tcp').upper()}"


def _container_config(config: ImageConfig) -> dict[str, Any]:
    """The engine's container config for a commit; unset fields are left out (inherited)."""
    out: dict[str, Any] = {}
    if config.cmd:
        out["Cmd"] = list(config.cmd)
    if config.entrypoint:
        out["Entrypoint"] = list(config.entrypoint)
    if config.env:
        out["Env"] = [f"{key}={value}" for key, value in config.env.items()]
    if config.labels:
        out["Labels"] = dict(config.labels)
    if config.exposed_ports:
        out["ExposedPorts"] = {_docker_port(port): {} for port in config.exposed_ports}
    if config.workdir:
        out["WorkingDir"] = config.workdir
    if config.user:
        out["User"] = config.user
    return out


def _quote(value: str) -> str:
    """A Dockerfile word in double quotes: backslash, quote and ``$`` (substitution) escaped."""
    if "\n" in value or "\r" in value:
        raise ValueError(f"{value!r}: an image config value cannot hold a line break")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


def _changes(config: ImageConfig) -> list[str]:
    """``docker import --change`` lines for ``config`` (import takes no config object)."""
    changes = []
    if config.cmd:
        changes.append(f"CMD {json.dumps(list(config.cmd))}")
    if config.entrypoint:
        changes.append(f"ENTRYPOINT {json.dumps(list(config.entrypoint))}")
    changes += [f"ENV {key}={_quote(value)}" for key, value in config.env.items()]
    changes += [f"LABEL {_quote(key)}={_quote(value)}" for key, value in config.labels.items()]
    changes += [f"EXPOSE {_docker_port(port)}" for port in config.exposed_ports]
    if config.workdir:
        changes.append(f"WORKDIR {config.workdir}")
    if config.user:
        changes.append(f"USER {config.user}")
    return changes


def _auth_config(auth: RegistryAuth | None) -> dict[str, str] | None:
    if auth is None:
        return None
    return {"username": auth.username, "password": auth.password, "serveraddress": auth.server}


def _explain(exc: BaseException) -> str:
    if isinstance(exc, docker.errors.APIError):
        return str(exc.explanation or exc)
    return str(exc)


class _Bridge(Generic[T]):
    """Carries items from one stream thread into the event loop that consumes them."""

    _END = object()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.stopped = threading.Event()
        self._queue: asyncio.Queue[tuple[object, Any]] = asyncio.Queue()
        self._slots = threading.Semaphore(STREAM_BUFFER)
        self._lock = threading.Lock()
        self._stream: _Closable | None = None

    # -- the thread's side
    def attach(self, stream: _Closable) -> bool:
        """Remember the open stream so ``stop`` can close it; ``False`` if already stopped."""
        with self._lock:
            if self.stopped.is_set():
                stream.close()
                return False
            self._stream = stream
            return True

    def emit(self, item: T) -> bool:
        """Hand one item to the loop; ``False`` when the consumer has gone."""
        while not self._slots.acquire(timeout=0.2):
            if self.stopped.is_set():
                return False
        return not self.stopped.is_set() and self._put(None, item)

    def finish(self, error: BaseException | None = None) -> None:
        self._put(self._END, error)

    def _put(self, kind: object, value: Any) -> bool:
        try:
            self.loop.call_soon_threadsafe(self._queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.stopped.set()
            return False
        return True

    # -- the loop's side
    async def get(self) -> tuple[bool, Any]:
        """``(True, item)``, or ``(False, None)`` at the end; re-raises the thread's error."""
        kind, value = await self._queue.get()
        if kind is self._END:
            if value is not None:
                raise value
            return False, None
        self._slots.release()
        return True, value

    def stop(self) -> None:
        self.stopped.set()
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close()
            except Exception as exc:  # a socket already gone is as good as closed
                log.debug("runtime.stream_close_failed", error=str(exc))


class DockerRuntime:
    """:class:`~lastbackend.runtime.base.Runtime` on a Docker engine.

    ``base_url`` is the engine's address (``unix:///var/run/docker.sock``,
    ``tcp://host:2376``); ``None`` reads ``DOCKER_HOST`` and its TLS variables like the docker
    CLI, falling back to the local socket.
    """

    def __init__(self, base_url: str | None = None, *, timeout_s: float = 60) -> None:
        self.base_url = base_url
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._clients: dict[bool, docker.APIClient] = {}
        self._threads = itertools.count(1)
        self._cli: str | None = None  # the BuildKit-capable docker CLI; "" once none was found

    # -- plumbing
    def _client(self, *, stream: bool = False) -> docker.APIClient:
        """The SDK client (made on first use); ``stream`` selects the one without read timeout."""
        with self._lock:
            client = self._clients.get(stream)
            if client is None:
                kwargs: dict[str, Any] = (
                    docker.utils.kwargs_from_env()
                    if self.base_url is None
                    else {"base_url": self.base_url}
                )
                timeout = None if stream else self.timeout_s
                client = docker.APIClient(version="auto", timeout=timeout, **kwargs)
                self._clients[stream] = client
            return client

    def _error(self, what: str, exc: BaseException) -> ContainerRuntimeError:
        if isinstance(exc, ContainerRuntimeError):
            return exc
        if isinstance(exc, docker.errors.NotFound):
            return ContainerNotFound(f"{what}: {_explain(exc)}")
        if isinstance(exc, docker.errors.APIError):
            return ContainerRuntimeError(f"{what}: {_explain(exc)}")
        if isinstance(exc, docker.errors.DockerException | OSError):
            where = self.base_url or "the default Docker socket"
            return RuntimeUnavailable(f"{what}: cannot reach Docker at {where}: {exc}")
        return ContainerRuntimeError(f"{what}: {exc!r}")

    async def _call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """Run one blocking SDK call in the default executor, translating its errors."""
        try:
            return await asyncio.to_thread(fn, *args)
        except (docker.errors.DockerException, OSError) as exc:
            raise self._error(what, exc) from exc

    async def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    # -- node
    async def info(self) -> NodeCapacity:
        raw = await self._call("docker info", lambda: self._client().info())
        return NodeCapacity(
            memory_mb=int(raw["MemTotal"]) // MIB,
            cpus=int(raw["NCPU"]),
            hostname=str(raw["Name"]),
            docker_version=str(raw["ServerVersion"]),
        )

    # -- images
    async def ensure_image(
        self, image: str, auth: RegistryAuth | None = None, *, always_pull: bool = False
    ) -> None:
        try:
            await asyncio.to_thread(self._ensure_image, image, auth, always_pull)
        except docker.errors.APIError as exc:
            # ``from None``: the SDK's exception is not shown, so nothing it held can leak.
            raise ImageError(_redact(f"pulling {image}: {_explain(exc)}", auth)) from None
        except (docker.errors.DockerException, OSError) as exc:
            raise self._error(f"pulling {image}", exc) from None

    def _ensure_image(self, image: str, auth: RegistryAuth | None, always_pull: bool) -> None:
        api = self._client()
        try:
            api.inspect_image(image)
            present = True
        except docker.errors.ImageNotFound:
            present = False
        if not must_pull(image, present=present, always_pull=always_pull):
            return
        repository, tag, digest = split_image(image)
        started = time.monotonic()
        for line in api.pull(
            repository, tag=digest or tag, stream=True, decode=True, auth_config=_auth_config(auth)
        ):
            if "error" in line:
                detail = line.get("errorDetail", {}).get("message") or line["error"]
                raise ImageError(_redact(f"pulling {image}: {detail}", auth))
        log.info("runtime.pulled", image=image, seconds=round(time.monotonic() - started, 3))

    # -- containers
    async def run(self, spec: ContainerSpec) -> ContainerState:
        return _state(await self._call(f"running {spec.name}", self._run, spec))

    def _run(self, spec: ContainerSpec) -> dict[str, Any]:
        raw = self._create(spec)
        if raw["State"]["Status"] in ("created", "exited"):
            self._client().start(raw["Id"])
            raw = self._inspect(raw["Id"]) or raw
        return raw

    def _create(self, spec: ContainerSpec) -> dict[str, Any]:
        """The container named ``spec.name``: the one there, or a new one (not started)."""
        api = self._client()
        raw = self._inspect(spec.name)
        if raw is None:
            for volume in spec.volumes:
                self._ensure_volume(volume, spec.labels)
            try:
                api.create_container(
                    image=spec.image,
                    name=spec.name,
                    entrypoint=["/bin/sh", "-c"] if spec.command else None,
                    command=[spec.command] if spec.command else None,
                    environment=[f"{key}={value}" for key, value in spec.env.items()],
                    labels=dict(spec.labels),
                    ports=[
                        (int(port), proto.lower())
                        for port, _, proto in (p.partition("/") for p in spec.ports)
                    ],
                    host_config=api.create_host_config(
                        port_bindings={
                            _docker_port(port): host or None for port, host in spec.ports.items()
                        },
                        mem_limit=spec.memory_mb * MIB if spec.memory_mb else None,
                        mounts=[
                            docker.types.Mount(target=path, source=volume, type="volume")
                            for volume, path in spec.volumes.items()
                        ],
                    ),
                )
            except docker.errors.ImageNotFound as exc:
                raise ImageError(
                    f"running {spec.name}: image {spec.image} is not present; ensure_image first"
                ) from exc
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: another call made it first; adopt it
                    raise
            raw = self._inspect(spec.name)
            if raw is None:
                raise ContainerRuntimeError(f"creating {spec.name}: it vanished after creation")
        return raw

    async def create(self, spec: ContainerSpec) -> ContainerState:
        return _state(await self._call(f"creating {spec.name}", self._create, spec))

    async def start(self, id_or_name: str) -> ContainerState:
        def start() -> dict[str, Any]:
            raw = self._inspect(id_or_name)
            if raw is None:
                raise ContainerNotFound(f"starting {id_or_name}: no such container")
            if raw["State"]["Status"] in ("created", "exited"):
                self._client().start(raw["Id"])
                raw = self._inspect(raw["Id"]) or raw
            return raw

        return _state(await self._call(f"starting {id_or_name}", start))

    async def wait(self, id_or_name: str, timeout_s: float | None = None) -> int:
        def wait() -> int:
            try:
                result = self._client().wait(id_or_name, timeout=timeout_s)
            except requests.exceptions.RequestException as exc:
                # over the unix socket a read timeout arrives as a ConnectionError
                if "timed out" not in str(exc).lower():
                    raise
                raise ContainerTimeout(
                    f"waiting for {id_or_name}: still running after {timeout_s:g}s"
                ) from None
            return int(result["StatusCode"])

        return await self._call(f"waiting for {id_or_name}", wait)

    async def put_archive(self, id_or_name: str, path: str, data: bytes) -> None:
        await self._call(
            f"copying into {id_or_name}:{path}",
            lambda: self._client().put_archive(id_or_name, path, data),
        )

    async def get_archive(self, id_or_name: str, path: str) -> bytes | None:
        def read() -> bytes | None:
            try:
                stream, _ = self._client().get_archive(id_or_name, path, chunk_size=None)
            except docker.errors.NotFound:
                if self._inspect(id_or_name) is None:
                    raise
                return None  # the container is there: the path is not
            return b"".join(stream)

        return await self._call(f"copying from {id_or_name}:{path}", read)

    async def commit(self, id_or_name: str, ref: str, config: ImageConfig) -> str:
        repository, tag, _ = split_image(ref)

        def commit() -> str:
            result = self._client().commit(
                id_or_name, repository=repository, tag=tag, conf=_container_config(config)
            )
            return str(result["Id"])

        return await self._call(f"committing {id_or_name} as {ref}", commit)

    async def import_image(self, data: bytes, ref: str, config: ImageConfig) -> str:
        repository, tag, _ = split_image(ref)

        def load() -> str:
            api = self._client()
            api.import_image_from_data(
                data, repository=repository, tag=tag, changes=_changes(config)
            )
            return str(api.inspect_image(ref)["Id"])

        return await self._call(f"importing {ref}", load)

    async def inspect_image(self, ref: str) -> ImageInfo | None:
        def read() -> dict[str, Any] | None:
            try:
                return dict(self._client().inspect_image(ref))
            except docker.errors.ImageNotFound:
                return None

        raw = await self._call(f"inspecting image {ref}", read)
        return None if raw is None else _image_info(raw)

    async def tag(self, source: str, target: str) -> None:
        repository, tag, _ = split_image(target)

        def tag_it() -> None:
            try:
                self._client().tag(source, repository, tag, force=True)
            except docker.errors.ImageNotFound:
                raise ImageError(f"tagging {source} as {target}: no image {source}") from None

        await self._call(f"tagging {source} as {target}", tag_it)

    async def push(self, ref: str, auth: RegistryAuth | None = None) -> str:
        try:
            return await asyncio.to_thread(self._push, ref, auth)
        except docker.errors.APIError as exc:
            raise ImageError(_redact(f"pushing {ref}: {_explain(exc)}", auth)) from None
        except (docker.errors.DockerException, OSError) as exc:
            raise self._error(f"pushing {ref}", exc) from None

    def _push(self, ref: str, auth: RegistryAuth | None) -> str:
        api = self._client()
        repository, tag, _ = split_image(ref)
        digest = ""
        started = time.monotonic()
        for line in api.push(
            repository, tag=tag, stream=True, decode=True, auth_config=_auth_config(auth)
        ):
            if "error" in line:
                detail = line.get("errorDetail", {}).get("message") or line["error"]
                raise ImageError(_redact(f"pushing {ref}: {detail}", auth))
            digest = (line.get("aux") or {}).get("Digest") or digest
        if not digest:  # old engines say it only in the pushed image's RepoDigests
            pinned = _image_info(api.inspect_image(ref)).digest_for(ref) or ""
            digest = pinned.partition("@")[2]
        if not digest:
            raise ImageError(f"pushing {ref}: the engine reported no digest")
        log.info("runtime.pushed", image=ref, seconds=round(time.monotonic() - started, 3))
        return str(digest)

    async def remove_image(self, ref: str) -> None:
        def remove() -> None:
            try:
                self._client().remove_image(ref)
            except docker.errors.ImageNotFound:
                pass
            except docker.errors.APIError as exc:  # 409 "... container <id> is using ..."
                if exc.status_code == 409 and "container" in _explain(exc):
                    raise ImageInUse(f"removing image {ref}: {_explain(exc)}") from None
                raise

        await self._call(f"removing image {ref}", remove)

    async def images(self, labels: Labels, *, keys: Iterable[str] = ()) -> list[ImageInfo]:
        wanted = [*_label_filter(labels)["label"], *keys]

        def read() -> list[dict[str, Any]]:
            return list(self._client().images(filters={"label": wanted} if wanted else None))

        found = await self._call("listing images", read)
        return [_listed_image(raw) for raw in found]

    # -- builds
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
        args = dict(build_args or {})
        if ca_bundle is not None:
            cli = await self._buildkit_cli()
            if cli is not None:
                return await self._buildkit(
                    cli, context_tar, dockerfile, tag, dict(labels), log, args, ca_bundle
                )
            log(
                "       RUN steps do not get the CA bundle: no docker CLI with BuildKit here "
                "(Debian's docker.io has one built in; a newer CLI needs its buildx plugin)"
            )
        image_id = ""
        build = self._stream(
            f"building {tag}",
            lambda bridge: self._build(bridge, context_tar, dockerfile, tag, dict(labels), args),
        )
        async for kind, value in build:
            if kind == "id":
                image_id = value
            else:
                log(value)
        if not image_id:  # engines that send no aux ID: the tag names the result
            info = await self.inspect_image(tag)
            if info is None:
                raise BuildError(f"building {tag}: the engine reported no image")
            image_id = info.id
        return image_id

    def _build(
        self,
        bridge: _Bridge[tuple[str, str]],
        context_tar: bytes,
        dockerfile: str,
        tag: str,
        labels: dict[str, str],
        build_args: dict[str, str],
    ) -> None:
        """The engine's ``POST /build`` (the classic builder), read as it streams.

        Not ``APIClient.build``: its generator hides the response, and closing the response's
        socket is how a cancelled build is stopped: the engine sees its client gone, kills the
        step's container and removes it (``forcerm``).
        """
        api = self._client(stream=True)
        params = {
            "t": tag,
            "dockerfile": dockerfile,
            "rm": True,
            "forcerm": True,
            "pull": False,
            "labels": json.dumps(labels),
        }
        if build_args:
            params["buildargs"] = json.dumps(build_args)
        try:
            response = api._post(
                api._url("/build"),
                data=context_tar,
                params=params,
                headers={"Content-Type": "application/tar"},
                stream=True,
                timeout=None,
            )
            api._raise_for_status(response)
        except docker.errors.APIError as exc:
            raise BuildError(f"docker build failed: {_explain(exc)}") from None
        stream = docker.types.daemon.CancellableStream(
            api._stream_helper(response, decode=True), response
        )
        if not bridge.attach(stream):
            return
        pending = ""
        for item in stream:
            if "error" in item:
                detail = (item.get("errorDetail") or {}).get("message") or item["error"]
                raise BuildError(f"docker build failed: {str(detail).strip()}")
            aux = item.get("aux")
            if isinstance(aux, dict) and aux.get("ID") and not bridge.emit(("id", str(aux["ID"]))):
                return
            text = item.get("stream")
            if text is None and item.get("status") and not item.get("progress"):
                text = f"{item['status']}\n"  # pulling the base image: one line per step
            if not text:
                continue
            *lines, pending = (pending + str(text)).split("\n")
            if len(pending) >= LINE_MAX:  # output without newlines: passed on in pieces
                lines.append(pending)
                pending = ""
            for line in lines:
                if line.strip() and not bridge.emit(("line", line.rstrip())):
                    return
        if pending.strip():
            bridge.emit(("line", pending.rstrip()))

    async def _buildkit_cli(self) -> str | None:
        """A docker CLI that builds with BuildKit: Debian's 20.10 has a client built in; a CLI of
        23 or later builds with BuildKit only through its buildx plugin. Looked up once."""
        if self._cli is None:
            found = ""
            for candidate in dict.fromkeys(c for c in (shutil.which("docker"), SYSTEM_CLI) if c):
                if await _builds_with_buildkit(candidate):
                    found = candidate
                    break
            self._cli = found
        return self._cli or None

    async def _buildkit(
        self,
        cli: str,
        context_tar: bytes,
        dockerfile: str,
        tag: str,
        labels: dict[str, str],
        log: Callable[[str], None],
        build_args: dict[str, str],
        ca_bundle: bytes,
    ) -> str:
        """``DOCKER_BUILDKIT=1 docker build`` of a copy of the Dockerfile that mounts the CA
        bundle as a secret in every ``RUN`` (:mod:`~lastbackend.runtime.dockerfile` says why).

        The docker CLI, not the SDK: BuildKit hands a step a secret through a session the client
        serves, which only the CLI implements. The proxies' values reach it through its
        environment (``--build-arg NAME`` takes the value from there), so ``ps`` shows their
        names only. Cancelling kills the CLI, and the engine stops the build when its client
        goes; ``setpriv --pdeathsig`` kills it too if this process dies first.
        """
        with tempfile.TemporaryDirectory(prefix="lb-build-") as tmp:
            work = Path(tmp)
            rewritten = await asyncio.to_thread(
                _prepare, work, context_tar, dockerfile, ca_bundle, tag
            )
            argv = [cli, "build", "--progress=plain", "-f", str(work / "Dockerfile"), "-t", tag]
            argv += ["--iidfile", str(work / "iid")]
            for key, value in labels.items():
                argv += ["--label", f"{key}={value}"]
            for name in build_args:
                argv += ["--build-arg", name]  # the value from the environment, not argv
            for name, value in variables().items():
                argv += ["--build-arg", f"{name}={value}"]
            argv += ["--secret", f"id={CA_SECRET},src={work / 'ca.pem'}"]
            argv += ["--secret", f"id={APT_SECRET},src={work / 'apt.conf'}"]
            argv.append(str(work / "context"))
            setpriv = shutil.which("setpriv")
            if setpriv:
                argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
            env = {**os.environ, **build_args, "DOCKER_BUILDKIT": "1"}
            if self.base_url:
                env["DOCKER_HOST"] = self.base_url
            tail: collections.deque[str] = collections.deque(maxlen=40)

            def emit(line: str) -> None:
                line = line.replace(_OUR_MOUNTS, "").rstrip()
                if line.strip() and not _DIGEST_LINE.match(line):
                    tail.append(line)
                    log(line)

            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    env=env,
                )
            except OSError as exc:
                raise BuildError(f"docker build failed: cannot run {cli}: {exc}") from None
            try:
                assert proc.stdout is not None
                pending = ""
                text = codecs.getincrementaldecoder("utf-8")(errors="replace")
                while chunk := await proc.stdout.read(LINE_MAX):
                    *lines, pending = (pending + text.decode(chunk)).split("\n")
                    if len(pending) >= LINE_MAX:
                        lines.append(pending)
                        pending = ""
                    for line in lines:
                        emit(line)
                emit(pending)
                code = await proc.wait()
            finally:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await asyncio.shield(proc.wait())
            if code != 0:
                raise BuildError(f"docker build failed: {_buildkit_error(tail, rewritten, code)}")
            iid = work / "iid"
            image_id = iid.read_text().strip() if iid.is_file() else ""
        if not image_id:
            info = await self.inspect_image(tag)
            if info is None:
                raise BuildError(f"building {tag}: the engine reported no image")
            image_id = info.id
        return image_id

    def _inspect(self, id_or_name: str) -> dict[str, Any] | None:
        try:
            return dict(self._client().inspect_container(id_or_name))
        except docker.errors.NotFound:
            return None

    def _ensure_volume(self, name: str, labels: Labels) -> None:
        api = self._client()
        try:
            api.inspect_volume(name)
        except docker.errors.NotFound:
            api.create_volume(name, labels=dict(labels))

    async def list(self, labels: Labels) -> list[ContainerState]:
        def read() -> list[dict[str, Any]]:
            found = self._client().containers(all=True, filters=_label_filter(labels))
            raws = (self._inspect(c["Id"]) for c in found)
            return [raw for raw in raws if raw is not None]  # None: removed meanwhile

        states = [_state(raw) for raw in await self._call("listing containers", read)]
        return sorted(
            (s for s in states if has_labels(s.labels, labels)), key=lambda s: (s.created, s.name)
        )

    async def inspect(self, id_or_name: str) -> ContainerState | None:
        raw = await self._call(f"inspecting {id_or_name}", self._inspect, id_or_name)
        return None if raw is None else _state(raw)

    async def stop(self, id_or_name: str, timeout_s: float = 10) -> None:
        def stop() -> None:
            with contextlib.suppress(docker.errors.NotFound):
                self._client().stop(id_or_name, timeout=math.ceil(timeout_s))

        await self._call(f"stopping {id_or_name}", stop)

    async def remove(self, id_or_name: str) -> None:
        def remove() -> None:
            try:
                self._client().remove_container(id_or_name, force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if "already in progress" not in _explain(exc):
                    raise

        await self._call(f"removing {id_or_name}", remove)

    # -- volumes
    async def remove_volume(self, name: str) -> None:
        def remove() -> None:
            with contextlib.suppress(docker.errors.NotFound):
                self._client().remove_volume(name)

        await self._call(f"removing volume {name}", remove)

    async def volumes(self, labels: Labels) -> list[str]:
        def read() -> list[dict[str, Any]]:
            return list(self._client().volumes(filters=_label_filter(labels))["Volumes"] or [])

        found = await self._call("listing volumes", read)
        return sorted(v["Name"] for v in found if has_labels(v.get("Labels") or {}, labels))

    # -- streams
    def events(self, labels: Labels) -> AsyncIterator[RuntimeEvent]:
        since_ns = time.time_ns()  # now, not at the first step: see Runtime.events
        return self._stream(
            "events", lambda bridge: self._follow_events(bridge, dict(labels), since_ns)
        )

    def _follow_events(self, bridge: _Bridge[RuntimeEvent], labels: Labels, since_ns: int) -> None:
        """Read events until stopped, reconnecting (from the last event seen) when the stream
        breaks, e.g. because dockerd restarted; Docker replays what happened since then."""
        filters = {"type": ["container"], **_label_filter(labels)}
        delay = 0.1
        while not bridge.stopped.is_set():
            try:
                since = f"{since_ns // 1_000_000_000}.{since_ns % 1_000_000_000:09d}"
                stream = self._client(stream=True).events(since=since, filters=filters, decode=True)
                if not bridge.attach(stream):
                    return
                delay = 0.1
                for raw in stream:
                    event = _event(raw)
                    if event is None or not has_labels(event.labels, labels):
                        continue
                    # The engine's clock from now on: a resume asks for what followed this one.
                    since_ns = int(raw.get("timeNano") or since_ns) + 1
                    if not bridge.emit(event):
                        return
            except (docker.errors.DockerException, OSError) as exc:
                if not bridge.stopped.is_set():
                    log.warning("runtime.events_broken", error=str(exc), retry_s=delay)
            if bridge.stopped.wait(delay):
                return
            delay = min(delay * 2, RECONNECT_MAX_S)

    def logs(
        self, id_or_name: str, *, follow: bool = False, tail: int | None = None
    ) -> AsyncIterator[bytes]:
        def read(bridge: _Bridge[bytes]) -> None:
            stream = self._client(stream=True).logs(
                id_or_name, stream=True, follow=follow, tail="all" if tail is None else tail
            )
            if not bridge.attach(stream):
                return
            for chunk in stream:
                if not bridge.emit(chunk):
                    return

        return self._stream(f"logs of {id_or_name}", read)

    async def _stream(self, what: str, target: Callable[[_Bridge[T]], None]) -> AsyncIterator[T]:
        """Run ``target`` in a daemon thread and yield what it emits, until it ends or the
        consumer stops; the ``finally`` runs on cancellation and ``aclose`` alike."""
        bridge: _Bridge[T] = _Bridge(asyncio.get_running_loop())

        def main() -> None:
            try:
                target(bridge)
            except BaseException as exc:
                bridge.finish(None if bridge.stopped.is_set() else self._error(what, exc))
            else:
                bridge.finish()

        name = f"lastbackend-docker-{what.split()[0]}-{next(self._threads)}"
        threading.Thread(target=main, name=name, daemon=True).start()
        try:
            while True:
                more, item = await bridge.get()
                if not more:
                    return
                yield item
        finally:
            bridge.stop()


SYSTEM_CLI = "/usr/bin/docker"
"""Debian's docker.io CLI, tried when the one on ``PATH`` cannot build with BuildKit."""
_OUR_MOUNTS = " " + " ".join(MOUNTS)
_DIGEST_LINE = re.compile(r"^#\d+ sha256:[0-9a-f]{64}$")
_STEP_FAILED = re.compile(
    r"executor failed running \[(?P<a>.*)\]: exit code: (?P<ac>\d+)"
    r"|process \"(?P<b>.*)\" did not complete successfully: exit code: (?P<bc>\d+)"
)
_NOISE = (
    "failed to solve with frontend dockerfile.v0: ",
    "failed to solve: ",
    "failed to create LLB definition: ",
    "rpc error: code = Unknown desc = ",
)
_PARSE_LINE = re.compile(r"(dockerfile parse error (?:on )?line )(\d+)")


async def _builds_with_buildkit(cli: str) -> bool:
    """Whether ``DOCKER_BUILDKIT=1 cli build`` builds with BuildKit: a 20.x CLI (a client
    built in), or any CLI with the buildx plugin."""

    async def run(*args: str) -> tuple[int, str]:
        try:
            proc = await asyncio.create_subprocess_exec(
                cli,
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
        except OSError:
            return -1, ""
        out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode(errors="replace")

    code, out = await run("--version")  # "Docker version 20.10.24+dfsg1, build 297e128"
    version = re.search(r"version (\d+)\.", out)
    if code != 0 or version is None:
        return False
    if int(version.group(1)) < 23:
        return True
    return (await run("buildx", "version"))[0] == 0


def _prepare(
    work: Path, context_tar: bytes, dockerfile: str, ca_bundle: bytes, tag: str
) -> Rewritten:
    """Unpack the context into ``work/context``; write the rewritten Dockerfile, the bundle and
    apt's line beside it (outside the context, so ``COPY .`` copies the repository's own)."""
    context = work / "context"
    context.mkdir()
    with tarfile.open(fileobj=io.BytesIO(context_tar)) as tar:
        if hasattr(tarfile, "tar_filter"):
            tar.extractall(context, filter="tar")
        else:  # Python before 3.11.4: the names are checked here instead
            for member in tar.getmembers():
                if member.name.startswith("/") or ".." in Path(member.name).parts:
                    raise BuildError(f"building {tag}: the context holds {member.name!r}")
            tar.extractall(context)
    source = (context / dockerfile.lstrip("/")).resolve()
    if not source.is_relative_to(context.resolve()) or not source.is_file():
        raise BuildError(f"docker build failed: Cannot locate specified Dockerfile: {dockerfile}")
    rewritten = with_ca(source.read_text(errors="replace"))
    (work / "Dockerfile").write_text(rewritten.text)
    (work / "ca.pem").write_bytes(ca_bundle)
    (work / "apt.conf").write_text(APT_CONF_TEXT)
    return rewritten


def _buildkit_error(tail: Iterable[str], rewritten: Rewritten, code: int) -> str:
    """The CLI's closing error, in the words the classic builder uses for a failed step (so a
    failed ``RUN`` reads the same whichever builder ran it), with the Dockerfile's own lines."""
    lines = list(tail)
    message = ""
    for line in reversed(lines):
        if line.startswith(("#", "------", " > ", "ERROR: ")) or not line.strip():
            continue
        message = line.strip()
        break
    if not message:
        errors = [line for line in lines if " ERROR: " in line or line.startswith("ERROR: ")]
        message = errors[-1].partition("ERROR: ")[2] if errors else f"exit code {code}"
    for noise in _NOISE:
        message = message.replace(noise, "")
    step = _STEP_FAILED.search(message)
    if step is not None:
        command = step.group("a") or step.group("b")
        exit_code = step.group("ac") or step.group("bc")
        return f"The command '{command}' returned a non-zero code: {exit_code}"
    return _PARSE_LINE.sub(
        lambda m: f"{m.group(1)}{rewritten.original_line(int(m.group(2)))}", message
    )


def _redact(message: str, auth: RegistryAuth | None) -> str:
    if auth is not None and auth.password:
        message = message.replace(auth.password, "***")
    return message
