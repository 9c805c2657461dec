"""An in-memory :class:`~lastbackend.runtime.base.Runtime` for unit tests of controller logic.

It keeps the seam's rules (adoption by name, label selection, idempotent deletes, events from the
moment of subscription, no restart policy) and Docker's observable habits (the events a kill or a
stop emits, a stopped container's ports being empty, a volume in use refusing removal), so a
controller tested against it behaves the same on Docker; ``tests/unit/test_runtime_fake.py`` and
``tests/e2e/test_runtime_docker.py`` check the two against the same expectations.

Everything is deterministic: ids are hashes of a counter, free host ports count up from
``FIRST_PORT``, and the clock advances one second per change. Tests steer it with
:meth:`FakeRuntime.kill`, :meth:`FakeRuntime.write_log`, :meth:`FakeRuntime.fail_pull`,
:meth:`FakeRuntime.fail_push`, :meth:`FakeRuntime.require_auth`, ``build_gate`` and the
``capacity`` attribute, and observe ``pulls``, ``pushes`` and ``builds``.

Nothing is executed. Containers and images have an in-memory filesystem (what
:meth:`FakeRuntime.put_archive` unpacks, :meth:`FakeRuntime.get_archive` packs and
:meth:`FakeRuntime.commit` snapshots), and what a started container *does* is up to the test:
:meth:`FakeRuntime.on_start` registers programs, Python functions that see the container as a
:class:`FakeProcess` (its spec, its files, its log) and return its exit code, or ``None`` to keep
it running. A container no program claims runs until stopped, as a server would.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import json
import posixpath
import tarfile
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Literal

import attrs

from lastbackend.model.health import HealthCheck
from lastbackend.model.registries import registry_host
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
    has_labels,
    must_pull,
    split_image,
)

FIRST_PORT = 40000
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


@attrs.frozen
class _Node:
    """One filesystem entry; paths are absolute and normalised (``/workspace/index.html``)."""

    kind: Literal["dir", "file", "symlink"]
    data: bytes = b""
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    linkname: str = ""


Files = dict[str, _Node]


def _root() -> Files:
    return {"/": _Node("dir")}


def _norm(path: str) -> str:
    return posixpath.normpath("/" + path.lstrip("/")) if path.strip("/") else "/"


def _parents(files: Files, path: str) -> None:
    parent = posixpath.dirname(path)
    while parent not in files:
        files[parent] = _Node("dir")
        parent = posixpath.dirname(parent)


def _unpack(files: Files, at: str, data: bytes) -> None:
    """Docker's extraction: entries land under ``at``, owners and modes as the tar says."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        for member in tar.getmembers():
            path = _norm(posixpath.join(at, member.name))
            if not path.startswith(at.rstrip("/") + "/") and path != at:
                raise ContainerRuntimeError(f"{member.name}: escapes {at}")
            owner = {"mode": member.mode & 0o7777, "uid": member.uid, "gid": member.gid}
            if member.isdir():
                files[path] = _Node("dir", **owner)
            elif member.issym():
                files[path] = _Node("symlink", linkname=member.linkname, **owner)
            elif member.isfile():
                extracted = tar.extractfile(member)
                body = extracted.read() if extracted is not None else b""
                files[path] = _Node("file", data=body, **owner)
            else:
                continue
            _parents(files, path)


def _pack(files: Files, path: str) -> bytes:
    """A tar of ``path`` and what is under it, named from its last component, like Docker."""
    base = posixpath.dirname(path)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in sorted(files):
            if name != path and not name.startswith(path.rstrip("/") + "/"):
                continue
            node = files[name]
            info = tarfile.TarInfo(posixpath.relpath(name, base))
            info.mode, info.uid, info.gid = node.mode, node.uid, node.gid
            if node.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif node.kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, node.linkname
                tar.addfile(info)
            else:
                info.size = len(node.data)
                tar.addfile(info, io.BytesIO(node.data))
    return buf.getvalue()


@attrs.define
class _Image:
    id: str
    config: ImageConfig
    files: Files
    created: datetime = EPOCH


@attrs.define
class _Container:
    spec: ContainerSpec
    state: ContainerState
    files: Files = attrs.Factory(_root)
    image: _Image | None = None
    lines: list[bytes] = attrs.Factory(list)
    changed: asyncio.Event = attrs.Factory(asyncio.Event)

    def touch(self) -> None:
        """Wake log followers; a fresh event for the next wait."""
        self.changed.set()
        self.changed = asyncio.Event()


class FakeProcess:
    """A started container as a program sees it: its spec and its files, and a log to write."""

    def __init__(self, box: _Container) -> None:
        self._box = box

    @property
    def spec(self) -> ContainerSpec:
        return self._box.spec

    @property
    def name(self) -> str:
        return self._box.spec.name

    @property
    def id(self) -> str:
        return self._box.state.id

    @property
    def env(self) -> dict[str, str]:
        """The environment: the image's, then the spec's."""
        image = self._box.image.config.env if self._box.image is not None else {}
        return {**image, **self._box.spec.env}

    def read(self, path: str) -> bytes | None:
        node = self._box.files.get(_norm(path))
        return node.data if node is not None and node.kind == "file" else None

    def exists(self, path: str) -> bool:
        return _norm(path) in self._box.files

    def listdir(self, path: str) -> list[str]:
        prefix = _norm(path).rstrip("/") + "/"
        return sorted(
            name[len(prefix) :]
            for name in self._box.files
            if name.startswith(prefix) and "/" not in name[len(prefix) :]
        )

    def write(self, path: str, data: bytes, *, mode: int = 0o644, uid: int = 0) -> None:
        path = _norm(path)
        self._box.files[path] = _Node("file", data=data, mode=mode, uid=uid, gid=uid)
        _parents(self._box.files, path)

    def print(self, text: str) -> None:
        """A line of output, as the process writing to stdout."""
        self._box.lines.append(text.encode() + b"\n")
        self._box.touch()


Program = Callable[[FakeProcess], "int | None"]
"""What a started container does: its exit code, or ``None`` to leave it running."""


class FakeRuntime:
    """Containers, images and volumes in dictionaries; see the module docstring."""

    async def probe(self, check: HealthCheck, address: str, port: int) -> bool:
        """A node agent's health check against a fake container: nothing listens anywhere, so
        a test says which containers fail (:attr:`unhealthy`, by address = container id)."""
        return address not in self.unhealthy

    def __init__(self, *, images: Iterable[str] = (), capacity: NodeCapacity | None = None) -> None:
        self.capacity = capacity or NodeCapacity(
            memory_mb=4096, cpus=2, hostname="fake-node", docker_version="fake"
        )
        self.refs: set[str] = set(images)
        """The tags and pins present locally (``images`` seeds it with empty images)."""
        self.pulls: list[tuple[str, RegistryAuth | None]] = []
        """Every pull attempted, with the credentials it was given, in order."""
        self.pushes: list[tuple[str, RegistryAuth | None]] = []
        """Every push attempted, with the credentials it was given, in order."""
        self.builds: list[str] = []
        """The tag of every build started, in order."""
        self.build_ca_bundles: list[bytes | None] = []
        """The ``ca_bundle`` of each build, in the order of :attr:`builds`."""
        self.build_gate: asyncio.Event | None = None
        """When set to an event, every build waits for it after its last step (a long build)."""
        self.closed = False
        self.stops: list[tuple[str, float]] = []
        """Every stop asked for: (id or name, seconds from SIGTERM to SIGKILL)."""
        self.unhealthy: set[str] = set()
        """Container ids whose health checks fail (:meth:`probe`); every other one passes."""
        self._programs: list[Program] = []
        self._image_ids: dict[str, str] = {}
        """Reference (tag or ``repo@digest`` pin) -> image id, for images with a history here."""
        self._image_store: dict[str, _Image] = {}
        self._push_failures: dict[str, str] = {}
        self._pull_failures: dict[str, str] = {}
        self._registry_auth: dict[str, RegistryAuth] = {}
        self._containers: dict[str, _Container] = {}
        self._volumes: dict[str, dict[str, str]] = {}
        self._subscribers: list[tuple[dict[str, str], asyncio.Queue[RuntimeEvent]]] = []
        self._ids = itertools.count(1)
        self._ports = itertools.count(FIRST_PORT)
        self._ticks = itertools.count(1)

    # -- steering
    def fail_pull(self, image: str, message: str = "manifest unknown") -> None:
        """Make every pull of ``image`` fail with ``message``."""
        self._pull_failures[image] = message

    def fail_push(self, ref: str, message: str = "denied: requested access is refused") -> None:
        """Make every push of ``ref`` fail with ``message``."""
        self._push_failures[ref] = message

    def require_auth(self, auth: RegistryAuth) -> None:
        """Make pulls from and pushes to ``auth.server`` fail unless given exactly these
        credentials."""
        self._registry_auth[auth.server] = auth

    def add_image(
        self, ref: str, config: ImageConfig | None = None, files: Mapping[str, bytes] = {}
    ) -> str:
        """Make ``ref`` present with ``config`` and these regular files; returns its id."""
        tree = _root()
        for path, data in files.items():
            tree[_norm(path)] = _Node("file", data=data, mode=0o755)
            _parents(tree, _norm(path))
        return self._store(ref, config or ImageConfig(), tree, f"added {ref}")

    def on_start(self, program: Program) -> None:
        """Run ``program`` whenever a container starts (the first program to return an exit
        code ends the container with it; programs registered earlier are asked first)."""
        self._programs.append(program)

    def files(self, id_or_name: str) -> dict[str, bytes]:
        """The regular files of a container, path -> content (a copy)."""
        box = self._box(id_or_name)
        if box is None:
            raise ContainerNotFound(f"no container {id_or_name}")
        return {path: n.data for path, n in box.files.items() if n.kind == "file"}

    def image_files(self, ref: str) -> dict[str, bytes]:
        """The regular files of an image, path -> content (a copy)."""
        image = self._image(ref)
        if image is None:
            raise ImageError(f"no image {ref}")
        return {path: n.data for path, n in image.files.items() if n.kind == "file"}

    def kill(self, id_or_name: str, exit_code: int = 137, *, oom: bool = False) -> None:
        """The container's process dies, as ``docker kill`` or the OOM killer would make it."""
        box = self._box(id_or_name)
        if box is None or not box.state.running:
            raise ContainerNotFound(f"no running container {id_or_name}")
        self._emit(box, "oom" if oom else "kill")
        self._exit(box, exit_code)

    def write_log(self, id_or_name: str, data: bytes) -> None:
        """Append to the container's output, as its process writing would."""
        box = self._box(id_or_name)
        if box is None:
            raise ContainerNotFound(f"no container {id_or_name}")
        box.lines.extend(data.splitlines(keepends=True))
        box.touch()

    # -- Runtime
    async def info(self) -> NodeCapacity:
        return self.capacity

    async def ensure_image(
        self, image: str, auth: RegistryAuth | None = None, *, always_pull: bool = False
    ) -> None:
        if not must_pull(image, present=image in self.refs, always_pull=always_pull):
            return
        self.pulls.append((image, auth))
        if image in self._pull_failures:
            raise ImageError(f"pulling {image}: {self._pull_failures[image]}")
        required = self._registry_auth.get(registry_host(image))
        if required is not None and auth != required:
            raise ImageError(f"pulling {image}: unauthorized: authentication required")
        self.refs.add(image)
        pulled = self._image(image)
        repository, _, digest = split_image(image)
        if pulled is not None and not digest:  # what the registry knows it by, as Docker notes
            pin = hashlib.sha256(f"{repository} {pulled.id}".encode()).hexdigest()
            self._image_ids[f"{repository}@sha256:{pin}"] = pulled.id
            self.refs.add(f"{repository}@sha256:{pin}")

    async def run(self, spec: ContainerSpec) -> ContainerState:
        box = self._create(spec, "running")
        if box.state.status in ("created", "exited"):
            self._start(box)
        return box.state

    async def create(self, spec: ContainerSpec) -> ContainerState:
        return self._create(spec, "creating").state

    async def start(self, id_or_name: str) -> ContainerState:
        box = self._box(id_or_name)
        if box is None:
            raise ContainerNotFound(f"starting {id_or_name}: no such container")
        if box.state.status in ("created", "exited"):
            self._start(box)
        return box.state

    async def wait(self, id_or_name: str, timeout_s: float | None = None) -> int:
        box = self._box(id_or_name)
        if box is None:
            raise ContainerNotFound(f"waiting for {id_or_name}: no such container")
        try:
            async with asyncio.timeout(timeout_s):
                while box.state.status not in ("exited", "dead"):
                    await box.changed.wait()
        except TimeoutError:
            raise ContainerTimeout(
                f"waiting for {id_or_name}: still running after {timeout_s:g}s"
            ) from None
        return box.state.exit_code if box.state.exit_code is not None else 0

    async def put_archive(self, id_or_name: str, path: str, data: bytes) -> None:
        box = self._box(id_or_name)
        if box is None:
            raise ContainerNotFound(f"copying into {id_or_name}: no such container")
        at = _norm(path)
        if box.files.get(at, _Node("file")).kind != "dir":
            raise ContainerNotFound(f"copying into {id_or_name}: no directory {path}")
        _unpack(box.files, at, data)

    async def get_archive(self, id_or_name: str, path: str) -> bytes | None:
        box = self._box(id_or_name)
        if box is None:
            raise ContainerNotFound(f"copying from {id_or_name}: no such container")
        at = _norm(path)
        return _pack(box.files, at) if at in box.files else None

    async def commit(self, id_or_name: str, ref: str, config: ImageConfig) -> str:
        box = self._box(id_or_name)
        if box is None:
            raise ContainerNotFound(f"committing {id_or_name}: no such container")
        base = box.image.config if box.image is not None else ImageConfig()
        if box.spec.command:
            cmd, entrypoint = (box.spec.command,), ("/bin/sh", "-c")
        else:
            cmd, entrypoint = base.cmd, base.entrypoint
        merged = ImageConfig(  # Docker's merge: unset fields inherited, env and labels by key
            cmd=config.cmd or (() if config.entrypoint else cmd),
            entrypoint=config.entrypoint or entrypoint,
            env={**base.env, **box.spec.env, **config.env},
            labels={**base.labels, **box.spec.labels, **config.labels},
            exposed_ports=sorted({*base.exposed_ports, *config.exposed_ports}),
            workdir=config.workdir or base.workdir,
            user=config.user or base.user,
        )
        return self._store(ref, merged, dict(box.files), f"commit {box.state.id}")

    async def import_image(self, data: bytes, ref: str, config: ImageConfig) -> str:
        files = _root()
        _unpack(files, "/", data)
        return self._store(ref, config, files, hashlib.sha256(data).hexdigest())

    async def inspect_image(self, ref: str) -> ImageInfo | None:
        image = self._image(ref)
        if image is None:
            return None
        names = self._names(image.id)
        c = image.config
        return ImageInfo(
            id=image.id,
            repo_tags=tuple(sorted(r for r in names if "@" not in r)),
            repo_digests=tuple(sorted(r for r in names if "@" in r)),
            cmd=c.cmd,
            entrypoint=c.entrypoint,
            env=dict(c.env),
            labels=dict(c.labels),
            exposed_ports=tuple(sorted(p.upper() for p in c.exposed_ports)),
            workdir=c.workdir,
            user=c.user,
            created=image.created,
        )

    async def tag(self, source: str, target: str) -> None:
        image = self._image(source)
        if image is None:
            raise ImageError(f"tagging {source} as {target}: no image {source}")
        self._image_ids[target] = image.id
        self.refs.add(target)

    async def push(self, ref: str, auth: RegistryAuth | None = None) -> str:
        self.pushes.append((ref, auth))
        image = self._image(ref)
        if image is None:
            raise ImageError(f"pushing {ref}: An image does not exist locally with the tag")
        if ref in self._push_failures:
            raise ImageError(f"pushing {ref}: {self._push_failures[ref]}")
        required = self._registry_auth.get(registry_host(ref))
        if required is not None and auth != required:
            raise ImageError(f"pushing {ref}: unauthorized: authentication required")
        repository = split_image(ref)[0]
        digest = "sha256:" + hashlib.sha256(f"{repository} {image.id}".encode()).hexdigest()
        self._image_ids[f"{repository}@{digest}"] = image.id
        self.refs.add(f"{repository}@{digest}")
        return digest

    async def remove_image(self, ref: str) -> None:
        image = self._image(ref)
        if image is None:
            self.refs.discard(ref)
            self._image_ids.pop(ref, None)
            return
        names = self._names(image.id)
        last = ref == image.id or not [n for n in names if n != ref and "@" not in n]
        if not last:
            self.refs.discard(ref)
            self._image_ids.pop(ref, None)
            return
        users = [b.state.name for b in self._containers.values() if b.image is image]
        if users:  # Docker's 409 conflict
            raise ImageInUse(
                f"removing image {ref}: conflict: unable to remove repository reference"
                f" (must force) - container {users[0]} is using its referenced image"
            )
        for name in [*names, ref]:  # its last tag: the image goes, pins and all
            self.refs.discard(name)
            self._image_ids.pop(name, None)

    async def images(self, labels: Labels, *, keys: Iterable[str] = ()) -> list[ImageInfo]:
        found = []
        for image_id in sorted({self._image_ids[r] for r in self.refs if r in self._image_ids}):
            labelled = self._image_store[image_id].config.labels
            if has_labels(labelled, labels) and all(key in labelled for key in keys):
                found.append(await self.inspect_image(image_id))
        return [info for info in found if info is not None]

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
        """A small Dockerfile interpreter: ``FROM`` (a local image), ``COPY``, ``CMD``, ``ENV``,
        ``EXPOSE``; ``RUN exit <n>`` fails with Docker's message, other ``RUN`` lines do nothing.
        ``ca_bundle`` is only recorded (:attr:`build_ca_bundles`)."""
        self.builds.append(tag)
        self.build_ca_bundles.append(ca_bundle)
        context = _root()
        _unpack(context, "/", context_tar)
        source = context.get(_norm(dockerfile))
        if source is None or source.kind != "file":
            raise BuildError(
                f"docker build failed: Cannot locate specified Dockerfile: {dockerfile}"
            )
        steps = [
            line.strip()
            for line in source.data.decode().splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
        files: Files | None = None
        config = ImageConfig()
        for number, step in enumerate(steps, 1):
            log(f"Step {number}/{len(steps)} : {step}")
            instruction, _, args = step.partition(" ")
            instruction, args = instruction.upper(), args.strip()
            if instruction == "FROM":
                base = self._image(args)
                if base is None:
                    raise BuildError(
                        f"docker build failed: pull access denied for {split_image(args)[0]}, "
                        "repository does not exist or may require 'docker login'"
                    )
                files, config = dict(base.files), base.config
                continue
            if files is None:
                raise BuildError("docker build failed: no build stage in current context")
            if instruction == "COPY":
                src, dst = args.split()
                for path, node in _copied(context, _norm(src), _norm(dst)).items():
                    files[path] = node
                    _parents(files, path)
            elif instruction == "CMD":
                cmd = json.loads(args) if args.startswith("[") else ["/bin/sh", "-c", args]
                config = attrs.evolve(config, cmd=cmd)
            elif instruction == "ENV":
                key, _, value = args.partition("=")
                config = attrs.evolve(config, env={**config.env, key: value})
            elif instruction == "EXPOSE":
                ports = {*config.exposed_ports, args.upper() if "/" in args else f"{args}/TCP"}
                config = attrs.evolve(config, exposed_ports=sorted(ports))
            elif instruction == "RUN" and args.startswith("exit ") and args[5:] != "0":
                raise BuildError(
                    f"docker build failed: The command '/bin/sh -c {args}' returned a non-zero "
                    f"code: {args[5:]}"
                )
            await asyncio.sleep(0)
        if files is None:
            raise BuildError("docker build failed: the Dockerfile has no FROM")
        if self.build_gate is not None:
            await self.build_gate.wait()
        config = attrs.evolve(config, labels={**config.labels, **labels})
        image_id = self._store(tag, config, files, f"build {tag} {len(self.builds)}")
        log(f"Successfully built {image_id[7:19]}")
        log(f"Successfully tagged {tag}")
        return image_id

    async def list(self, labels: Labels) -> list[ContainerState]:
        states = [b.state for b in self._containers.values() if has_labels(b.state.labels, labels)]
        return sorted(states, key=lambda s: (s.created, s.name))

    async def inspect(self, id_or_name: str) -> ContainerState | None:
        box = self._box(id_or_name)
        return None if box is None else box.state

    async def stop(self, id_or_name: str, timeout_s: float = 10) -> None:
        self.stops.append((id_or_name, timeout_s))
        box = self._box(id_or_name)
        if box is None or not box.state.running:
            return
        self._emit(box, "kill")
        self._exit(box, 0)
        self._emit(box, "stop")

    async def remove(self, id_or_name: str) -> None:
        box = self._box(id_or_name)
        if box is None:
            return
        if box.state.running:
            self._emit(box, "kill")
            self._exit(box, 137)
        del self._containers[box.state.id]
        self._emit(box, "destroy")
        box.touch()

    async def remove_volume(self, name: str) -> None:
        users = [b.state.name for b in self._containers.values() if name in b.spec.volumes]
        if users:
            raise ContainerRuntimeError(f"removing volume {name}: volume is in use - {users}")
        self._volumes.pop(name, None)

    async def volumes(self, labels: Labels) -> list[str]:
        return sorted(name for name, have in self._volumes.items() if has_labels(have, labels))

    def events(self, labels: Labels) -> AsyncIterator[RuntimeEvent]:
        queue: asyncio.Queue[RuntimeEvent] = asyncio.Queue()
        subscriber = (dict(labels), queue)
        self._subscribers.append(subscriber)  # now, not at the first step: see Runtime.events
        return self._drain(subscriber)

    def logs(
        self, id_or_name: str, *, follow: bool = False, tail: int | None = None
    ) -> AsyncIterator[bytes]:
        return self._logs(id_or_name, follow, tail)

    async def close(self) -> None:
        self.closed = True

    # -- internals
    def _create(self, spec: ContainerSpec, doing: str) -> _Container:
        box = self._box(spec.name)
        if box is not None:
            return box
        if spec.image not in self.refs:
            raise ImageError(f"{doing} {spec.name}: image {spec.image} is not present")
        for volume in spec.volumes:
            self._volumes.setdefault(volume, dict(spec.labels))
        digest = hashlib.sha256(f"fake-container-{next(self._ids)}".encode()).hexdigest()
        image = self._image(spec.image)
        labels = {**(image.config.labels if image is not None else {}), **spec.labels}
        state = ContainerState(
            id=digest,
            name=spec.name,
            image=spec.image,
            status="created",
            labels=labels,
            ports={},
            created=self._now(),
            address=digest,  # no network: the id stands in for the address probes are given
        )
        files = dict(image.files) if image is not None else _root()
        box = self._containers[digest] = _Container(spec, state, files, image)
        self._emit(box, "create")
        return box

    def _image(self, ref: str) -> _Image | None:
        """The image a tag, pin or id names; refs only listed in ``refs`` are empty images."""
        if ref in self._image_store:
            return self._image_store[ref]
        for candidate in (ref, _with_tag(ref)):
            image_id = self._image_ids.get(candidate)
            if image_id is not None and candidate in self.refs:
                return self._image_store[image_id]
        for candidate in (ref, _with_tag(ref)):
            if candidate in self.refs:  # put there by a test or a pull: make it concrete
                image_id = "sha256:" + hashlib.sha256(candidate.encode()).hexdigest()
                self._image_store.setdefault(image_id, _Image(image_id, ImageConfig(), _root()))
                self._image_ids[candidate] = image_id
                return self._image_store[image_id]
        return None

    def _store(self, ref: str, config: ImageConfig, files: Files, seed: str) -> str:
        image_id = "sha256:" + hashlib.sha256(f"{seed} {config!r}".encode()).hexdigest()
        self._image_store[image_id] = _Image(image_id, config, files, self._now())
        self._image_ids[ref] = image_id
        self.refs.add(ref)
        return image_id

    def _names(self, image_id: str) -> list[str]:
        """The tags and pins an image is present under."""
        return sorted(r for r, i in self._image_ids.items() if i == image_id and r in self.refs)

    def _box(self, id_or_name: str) -> _Container | None:
        box = self._containers.get(id_or_name)
        if box is None:
            box = next((b for b in self._containers.values() if b.state.name == id_or_name), None)
        return box

    def _now(self) -> datetime:
        return EPOCH + timedelta(seconds=next(self._ticks))

    def _start(self, box: _Container) -> None:
        taken = {
            port
            for b in self._containers.values()
            if b.state.running
            for port in b.state.ports.values()
        }
        ports: dict[str, int] = {}
        for spec_port, host in box.spec.ports.items():
            if host in taken:
                raise ContainerRuntimeError(
                    f"running {box.spec.name}: Bind for 0.0.0.0:{host} failed: "
                    "port is already allocated"
                )
            while not host or host in taken:
                host = next(self._ports)
            ports[spec_port.upper()] = host
            taken.add(host)
        box.state = attrs.evolve(
            box.state,
            status="running",
            ports=ports,
            started_at=self._now(),
            finished_at=None,
            exit_code=None,
        )
        self._emit(box, "start")
        box.touch()
        process = FakeProcess(box)
        for program in self._programs:
            exit_code = program(process)
            if exit_code is not None:
                self._exit(box, exit_code)
                return

    def _exit(self, box: _Container, exit_code: int) -> None:
        box.state = attrs.evolve(
            box.state, status="exited", ports={}, exit_code=exit_code, finished_at=self._now()
        )
        self._emit(box, "die", exit_code)
        box.touch()

    def _emit(self, box: _Container, action: str, exit_code: int | None = None) -> None:
        event = RuntimeEvent(
            action=action,
            container_id=box.state.id,
            name=box.state.name,
            labels=dict(box.state.labels),
            time=self._now(),
            exit_code=exit_code,
        )
        for labels, queue in self._subscribers:
            if has_labels(event.labels, labels):
                queue.put_nowait(event)

    async def _drain(
        self, subscriber: tuple[dict[str, str], asyncio.Queue[RuntimeEvent]]
    ) -> AsyncIterator[RuntimeEvent]:
        try:
            while True:
                yield await subscriber[1].get()
        finally:
            self._subscribers.remove(subscriber)

    async def _logs(self, id_or_name: str, follow: bool, tail: int | None) -> AsyncIterator[bytes]:
        box = self._box(id_or_name)
        if box is None:
            raise ContainerNotFound(f"logs of {id_or_name}: no such container")
        sent = 0 if tail is None else max(len(box.lines) - tail, 0)
        while True:
            while sent < len(box.lines):
                sent += 1
                yield box.lines[sent - 1]
            if not follow or not box.state.running or self._box(box.state.id) is None:
                return
            await box.changed.wait()


def _copied(context: Files, src: str, dst: str) -> Files:
    """What ``COPY src dst`` adds: a file as ``dst``, or a directory's contents under ``dst``."""
    node = context.get(src)
    if node is None:
        raise BuildError(f"docker build failed: COPY failed: no {src} in the build context")
    if node.kind != "dir":
        return {dst: node}
    prefix = src.rstrip("/") + "/"
    return {
        posixpath.join(dst, path[len(prefix) :]): n
        for path, n in context.items()
        if path.startswith(prefix)
    }


def _with_tag(ref: str) -> str:
    """``busybox`` -> ``busybox:latest``: the name Docker files an untagged reference under."""
    repository, tag, digest = split_image(ref)
    return f"{repository}@{digest}" if digest else f"{repository}:{tag}"
